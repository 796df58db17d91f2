"""ttt_kd_make_bag: write a real rosbag2 (mcap or sqlite3) from the synthetic world or a data-set folder.

The bag holds what a robot would record (see replay.bag_writer): a labelled
PointCloud2, rgb8 Images with their CameraInfo, and /tf_static from the cloud
frame to each camera's optical frame, stamped at ``--rate-hz``. It is the
input of ``ttt_kd_replay`` and of the demo, and plays with ``ros2 bag play``.

    ttt_kd_make_bag OUT [--storage mcap|sqlite3] [--source synthetic] [--domain lidar] [--count 10] [--seed 0]
                    [--rate-hz 10] [--max-points N]
    ttt_kd_make_bag OUT --source semantic_kitti --root /data/sequences/08 --count 20
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from ttt_kd_ros.replay.bag_writer import STORAGES, ScanBagWriter
from ttt_kd_ros.scan import Scan


def _synthetic(args: argparse.Namespace) -> Iterable[Scan]:
    from ttt_kd_ros.data.synthetic import SyntheticDataset

    return SyntheticDataset(args.domain, args.count, seed=args.seed)


def _folder(loader: Callable[[Path], Iterable[Scan]]) -> Callable[[argparse.Namespace], Iterable[Scan]]:
    def open_root(args: argparse.Namespace) -> Iterable[Scan]:
        if args.root is None:
            raise ValueError(f"--root: --source {args.source} reads a data-set folder; give its path")
        if not Path(args.root).is_dir():
            raise ValueError(f"--root: {args.root} is not a folder")
        return loader(Path(args.root))

    return open_root


def _semantic_kitti(root: Path) -> Iterable[Scan]:
    from ttt_kd_ros.data.semantic_kitti import SemanticKittiScans

    return SemanticKittiScans(root)


def _kitti_object(root: Path) -> Iterable[Scan]:
    from ttt_kd_ros.data.kitti_object import KittiObjectFrames

    return KittiObjectFrames(root)


def _scannet(root: Path) -> Iterable[Scan]:
    from ttt_kd_ros.data.scannet import ScanNetFrames

    return ScanNetFrames(root)


SOURCES: dict[str, Callable[[argparse.Namespace], Iterable[Scan]]] = {
    "synthetic": _synthetic,
    "semantic_kitti": _folder(_semantic_kitti),
    "kitti_object": _folder(_kitti_object),
    "scannet": _folder(_scannet),
}
"""--source name -> Scans; data-set folders come from --root."""


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
    parser.add_argument("--source", choices=sorted(SOURCES), default="synthetic", help="where the scans come from")
    parser.add_argument("--domain", default="lidar", help="synthetic domain (see data.synthetic.DOMAINS)")
    parser.add_argument("--count", type=int, default=10, help="scans to write (at most; a folder may have fewer)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data set seed")
    parser.add_argument("--root", default=None, help="data-set folder for --source semantic_kitti/kitti_object/scannet")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.count <= 0:
            raise ValueError(f"--count: expected > 0, got {args.count}")
        scans = SOURCES[args.source](args)
        if args.source != "synthetic":
            scans = islice(scans, args.count)
        described = (f"synthetic domain={args.domain} seed={args.seed}" if args.source == "synthetic"
                     else f"{args.source} {args.root}")
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
