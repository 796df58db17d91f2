"""ttt_kd_demo (`make demo`): a small synthetic bag through the live node, without and with TTT-KD.

    ttt_kd_demo [--out demo_out] [--domain lidar] [--accuracy-domain noisy] [--frames 6] [--points 4000] [--steps 2]
                [--strategies none,ttt_kd] [--rate R | --as-fast-as-possible] [--mode node|inprocess]

1. writes a rosbag2 (mcap) from the synthetic world (ttt_kd_make_bag),
2. replays it through the segmenter node in its own process over DDS, once
   per strategy (ttt_kd_replay --mode node),
3. prints the summary (latency, rate, dropped frames, mIoU per strategy) and
   where report.json, report.md and the PNG plots are;
4. then does the same for a bag of ``--accuracy-domain`` (default "noisy":
   the training rooms through a worse RGB-D sensor, the domain shift
   TTT-KD is for) in-process, because that camera moves every scan.

Scans are small and steps few so the whole run takes a few minutes on a
2-core CPU. The shipped trained checkpoint and teacher are used when present;
without them an untrained network shows the plumbing only (and says so).
The live part uses a robot's LiDAR with rigidly mounted cameras: the node
takes each camera's extrinsics as a fixed parameter (no tf2 here), so the
hand-held RGB-D domains, whose camera moves every scan, replay in-process.
The shipped model was trained on RGB-D scans, so its LiDAR mIoU is low: the
live part is about latency, rate and drops, the second about accuracy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ttt_kd_ros.replay.bag_source import plan_bag

DEFAULT_DOMAIN = "lidar"
DEFAULT_ACCURACY_DOMAIN = "noisy"
"""The shipped model is trained on the RGB-D "source" domain; "noisy" is the same rooms through a worse sensor."""
MOVING_CAMERA_KINDS = ("rgbd",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttt_kd_demo", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for the bag and the report")
    parser.add_argument("--domain", default=DEFAULT_DOMAIN, help="synthetic domain of the bag")
    parser.add_argument("--frames", type=int, default=6, help="scans in the bag")
    parser.add_argument("--points", type=int, default=4000, help="points per scan (random subset)")
    parser.add_argument("--rate-hz", type=float, default=2.0, help="sensor rate the bag is stamped at")
    parser.add_argument("--seed", type=int, default=7, help="synthetic data set seed (scenes unseen in training)")
    parser.add_argument("--steps", type=int, default=2, help="TTT-KD steps per scan")
    parser.add_argument("--strategies", default="none,ttt_kd", help="strategies to compare")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=None, help="replay at this multiple of the recorded pace")
    pace.add_argument("--as-fast-as-possible", action="store_true", default=True,
                      help="next frame as soon as the previous one's labels are back (default)")
    parser.add_argument("--mode", choices=("node", "inprocess"), default=None,
                        help="default: node, or inprocess for a domain whose cameras move")
    parser.add_argument("--bag", type=Path, default=None, help="replay this bag instead of writing one")
    parser.add_argument("--accuracy-domain", default=DEFAULT_ACCURACY_DOMAIN,
                        help="then replay a bag of this RGB-D domain in-process for mIoU ('' to skip)")
    parser.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped one if present)")
    parser.add_argument("--teacher", default=None, help="2D teacher spec (default: the shipped one, else 'tiny')")
    return parser


def _write(domain_name: str, out: Path, args: argparse.Namespace, started: float) -> tuple[Path, bool]:
    """A synthetic bag of ``domain_name`` in ``out``; also whether its cameras move from scan to scan."""
    from ttt_kd_ros.data.synthetic import SyntheticDataset, get_domain
    from ttt_kd_ros.tools import make_bag

    domain = get_domain(domain_name)
    summary = make_bag.write_bag(out, SyntheticDataset(domain, args.frames, seed=args.seed), storage="mcap",
                                 rate_hz=args.rate_hz, max_points=args.points, overwrite=True,
                                 source=f"synthetic domain={domain.name} seed={args.seed}")
    print(f"[{time.monotonic() - started:5.1f} s] wrote {summary.scans} {domain.name} scans ({args.points} points, "
          f"{(len(summary.counts) - 2) // 2} cameras) at {args.rate_hz:g} Hz to {out}")
    return out, domain.sensor.kind in MOVING_CAMERA_KINDS


def _replay(bag: Path, mode: str, out: Path, overrides: dict, args: argparse.Namespace, started: float) -> None:
    """Replay ``bag`` once per strategy and print the table and the files."""
    from ttt_kd_ros.tools import replay

    print(f"[{time.monotonic() - started:5.1f} s] replaying {bag.name} through the "
          f"{'live node (one process per strategy, DDS)' if mode == 'node' else 'Segmenter in this process'}"
          f": {args.strategies}")
    report, files = replay.run_replay(
        bag, mode=mode, strategies=[s.strip() for s in args.strategies.split(",") if s.strip()],
        rate=args.rate if mode == "node" else None, out=out, overrides=overrides, progress=sys.stderr.isatty())
    print(f"[{time.monotonic() - started:5.1f} s] {report.mode} replay, {report.pacing}, model: "
          f"{report.config['checkpoint']}, teacher: {report.config['teacher']}, {args.steps} TTT steps per scan")
    for note in report.notes:
        print(f"note: {note}")
    print()
    print(report.table())
    print()
    for path in files:
        print(f"  {path}")
    print()


def main(argv: list[str] | None = None) -> int:
    from ttt_kd_ros import compose

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    try:
        model = compose.default_model()
        if args.checkpoint is not None or args.teacher is not None:
            model = compose.ModelChoice(args.checkpoint if args.checkpoint is not None else model.checkpoint,
                                        args.teacher if args.teacher is not None else model.teacher,
                                        trained=bool(args.checkpoint or model.trained))
        if not model.trained:
            print("note: no trained checkpoint shipped in this tree: an UNTRAINED network runs (plumbing only; "
                  "mIoU is meaningless)")
        overrides = {"checkpoint": model.checkpoint, "teacher": model.teacher, "device": "cpu",
                     "adapt.steps": args.steps}
        if args.bag is not None:
            bag, moving = args.bag, bool(plan_bag(args.bag).moving_cameras)
        else:
            bag, moving = _write(args.domain, args.out / "bag", args, started)
        _replay(bag, args.mode or ("inprocess" if moving else "node"), args.out / "report", overrides, args, started)
        if args.accuracy_domain and args.bag is None:
            bag, _ = _write(args.accuracy_domain, args.out / "bag_accuracy", args, started)
            _replay(bag, "inprocess", args.out / "report_accuracy", overrides, args, started)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"ttt_kd_demo: {exc}", file=sys.stderr)
        return 2
    print("latency = end to end (node: publish cloud -> labeled cloud back; inprocess: Segmenter.segment); "
          "rate = labeled clouds per second; mIoU (%) over the answered frames")
    print(f"demo finished in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
