"""ttt_kd_make_bag: write a real rosbag2 (mcap or sqlite3) from any data source (synthetic by default).

The bag holds what a robot would record (see replay.bag_writer): a labelled
PointCloud2, rgb8 Images with their CameraInfo, and /tf_static from the cloud
frame to each camera's optical frame, stamped at ``--rate-hz``. It is the
input of ``ttt_kd_replay`` and of the demo, and plays with ``ros2 bag play``.
The scans come from a data spec, as every other tool takes it (``--data
KIND:ROOT?opt=v``, docs/DATA.md); ``--domain D`` is short for ``--data
synthetic:D``.

    ttt_kd_make_bag OUT [--storage mcap|sqlite3] [--domain lidar | --data SPEC] [--count 10] [--seed 0]
                    [--rate-hz 10] [--max-points N]
    ttt_kd_make_bag OUT --data semantickitti:/data/semantickitti?sequences=08 --count 20
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ttt_kd_ros.data.sources import DataSource, SubsetSource, open_source
from ttt_kd_ros.replay.bag_writer import STORAGES, ScanBagWriter
from ttt_kd_ros.scan import Scan

DEFAULT_DOMAIN = "lidar"


@dataclass
class BagSummary:
    path: Path
    storage: str
    scans: int
    counts: dict[str, int]  # topic -> messages
    cloud_topic: str
    label_set: str
    first_stamp_ns: int
    period_ns: int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttt_kd_make_bag", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="bag folder to create")
    parser.add_argument("--storage", choices=STORAGES, default="mcap", help="rosbag2 storage plugin (default mcap)")
    parser.add_argument("--data", default=None, metavar="SPEC",
                        help=f"where the scans come from: a data spec KIND:ROOT?opt=v (docs/DATA.md), e.g. "
                             f"semantickitti:/data/sk?sequences=08 or synthetic:office (default synthetic:"
                             f"{DEFAULT_DOMAIN})")
    parser.add_argument("--domain", default=None,
                        help=f"synthetic domain, short for --data synthetic:DOMAIN (default {DEFAULT_DOMAIN})")
    parser.add_argument("--count", type=int, default=10,
                        help="scans to write: the source's first ones (a synthetic spec without scans= makes "
                             "this many)")
    parser.add_argument("--seed", type=int, default=0, help="seed of a synthetic spec that gives no seed=")
    parser.add_argument("--rate-hz", type=float, default=10.0, help="sensor rate: scan k is stamped start + k / rate")
    parser.add_argument("--start-s", type=float, default=1_700_000_000.0, help="stamp of the first scan (s)")
    parser.add_argument("--max-points", type=int, default=0, help="random subset of points per scan (0: all)")
    parser.add_argument("--namespace", default="/sensor", help="topic prefix: NS/points, NS/<camera>/image_raw ...")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT when it is an earlier bag")
    return parser


def subsample(scan: Scan, max_points: int, rng: np.random.Generator) -> Scan:
    """A random subset of ``max_points`` points (input order kept); the scan itself when it is small enough."""
    if max_points <= 0 or scan.num_points <= max_points:
        return scan
    return scan.select(np.sort(rng.choice(scan.num_points, size=max_points, replace=False)))


def write_bag(out: Path, scans: Iterable[Scan], storage: str = "mcap", rate_hz: float = 10.0,
              start_ns: int = 1_700_000_000_000_000_000, max_points: int = 0, namespace: str = "/sensor",
              overwrite: bool = False, source: str = "", progress: bool = False) -> BagSummary:
    """Write ``scans`` as a bag at ``rate_hz``; the Scans' own stamps are replaced by the sensor clock."""
    if not rate_hz > 0:
        raise ValueError(f"rate_hz: expected > 0, got {rate_hz}")
    period_ns = round(1e9 / rate_hz)
    rng = np.random.default_rng(0)
    written = 0
    items: Iterator[Scan] = iter(scans)
    if progress:
        from tqdm import tqdm

        items = iter(tqdm(items, desc="scans", unit="scan", total=_length(scans)))
    with ScanBagWriter(out, storage=storage, namespace=namespace, overwrite=overwrite) as writer:
        if source:
            writer.set_source(source)
        for scan in items:
            writer.write_scan(subsample(scan, max_points, rng), start_ns + written * period_ns)
            written += 1
    return BagSummary(out, storage, written, dict(writer.counts), writer.cloud_topic, writer.label_set, start_ns,
                      period_ns)


def _length(scans: Iterable[Scan]) -> int | None:
    try:
        return len(scans)  # type: ignore[arg-type]
    except TypeError:
        return None


def open_scans(args: argparse.Namespace) -> DataSource:
    """The source's first ``--count`` scans (``--data``, or ``--domain``'s synthetic world); ValueError /
    FileNotFoundError naming the flag or the spec."""
    if args.count <= 0:
        raise ValueError(f"--count: expected > 0, got {args.count}")
    if args.data is not None and args.domain is not None:
        raise ValueError(f"--domain {args.domain} and --data {args.data}: give one (--data synthetic:{args.domain} "
                         "is the same as --domain)")
    spec = args.data if args.data is not None else f"synthetic:{args.domain or DEFAULT_DOMAIN}"
    # keep=0: a synthetic scan is written once, never revisited, so none is kept in memory
    source = open_source(spec, scans=args.count, seed=args.seed, keep=0)
    return source if len(source) <= args.count else SubsetSource(source, range(args.count), source.spec)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        scans = open_scans(args)
        described = f"{scans.spec} (--seed {args.seed})" if scans.kind == "synthetic" else scans.spec
        summary = write_bag(args.out, scans, storage=args.storage, rate_hz=args.rate_hz,
                            start_ns=round(args.start_s * 1e9), max_points=args.max_points,
                            namespace=args.namespace, overwrite=args.overwrite, source=described,
                            progress=sys.stderr.isatty())
    except (ValueError, FileNotFoundError) as exc:
        print(f"ttt_kd_make_bag: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {summary.scans} scans to {summary.path} ({summary.storage}, {1e9 / summary.period_ns:g} Hz, "
          f"label set {summary.label_set or 'none'})")
    for topic, count in sorted(summary.counts.items()):
        print(f"  {topic}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
