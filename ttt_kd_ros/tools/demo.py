"""ttt_kd_demo (`make demo`): both shipped models on a domain shift, through the live node and in pictures.

    ttt_kd_demo [--out demo_out] [--frames 6] [--points 4000] [--steps 2] [--pictures 3] [--picture-points 6000]
                [--picture-steps 10] [--strategies none,ttt_kd] [--rate R | --as-fast-as-possible]
                [--mode node|inprocess] [--bag BAG] [--domain SPEC] [--checkpoint C] [--teacher T]

1. writes a rosbag2 (mcap) of the LiDAR case's shifted domain (a 16-beam
   LiDAR on a taller mount; the LiDAR model was trained on a 32-beam one) and
   replays it through the segmenter node in its own process over DDS, once
   per strategy, with the shipped LiDAR model (``checkpoint: builtin:lidar``):
   latency, rate, drops, mIoU;
2. for each shipped model (LiDAR, and RGB-D on the office under warm light;
   it was trained on homes in white light) takes a few shifted scans through
   the Segmenter, unadapted and adapted step by step, and writes pictures:
   per scan, the labelled cloud from above and on the camera image for ground
   truth, unadapted and adapted (per-scan mIoU in the titles), and mIoU over
   the steps; it prints the table of that run and where the pictures are.

Every number comes from the run. Without shipped checkpoints an untrained
network shows the plumbing only, and the demo says so.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ttt_kd_ros.adapt import AdaptConfig
from ttt_kd_ros.demo.scans import DemoCase
from ttt_kd_ros.replay.bag_messages import plan_bag

CASES = (
    DemoCase("lidar", "builtin:lidar", "range_noise=lidar:sensor.range_noise_m=0.05",
             "LiDAR with 5 cm range noise", top_max_z_m=0.8),
    DemoCase("rgbd", "builtin:rgbd", "office_dim=office:style.ambient=[0.15,0.25],style.light_intensity=[0.25,0.35]",
             "RGB-D home -> dim office", top_max_z_m=2.0),
)
"""One case per shipped model: the shift it is shown on. The first one is also the live node's bag. Both are shifts
of the models' validation suites on which the shipped guard keeps adaptation on some scans (session 9: on a
16-beam LiDAR and an office in warm light it kept none, so the adapted column repeated the unadapted one)."""
MOVING_CAMERA_KINDS = ("rgbd",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttt_kd_demo", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for the bag, reports, pictures")
    parser.add_argument("--domain", default=CASES[0].split.partition("=")[2],
                        help="synthetic domain spec of the live bag (DOMAIN[:sensor.f=v,style.f=v])")
    parser.add_argument("--frames", type=int, default=6, help="scans in the bag")
    parser.add_argument("--points", type=int, default=4000, help="points per scan (random subset)")
    parser.add_argument("--rate-hz", type=float, default=2.0, help="sensor rate the bag is stamped at")
    parser.add_argument("--seed", type=int, default=7, help="synthetic data set seed (scenes unseen in training)")
    parser.add_argument("--steps", type=int, default=2, help="TTT-KD steps per scan in the live replay")
    parser.add_argument("--strategies", default="none,ttt_kd", help="strategies the live replay compares")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=None, help="replay at this multiple of the recorded pace")
    pace.add_argument("--as-fast-as-possible", action="store_true", default=True,
                      help="next frame as soon as the previous one's labels are back (default)")
    parser.add_argument("--mode", choices=("node", "inprocess"), default=None,
                        help="default: node, or inprocess for a domain whose cameras move")
    parser.add_argument("--bag", type=Path, default=None, help="replay this bag instead of writing one")
    parser.add_argument("--pictures", type=int, default=3, help="scans per shipped model in the pictures (0: none)")
    parser.add_argument("--picture-points", type=int, default=16000,
                        help="points per picture scan (a crop, as the models were trained and evaluated on)")
    parser.add_argument("--picture-steps", type=int, default=AdaptConfig().steps,
                        help="TTT-KD steps of the pictures' adapted column (default: the shipped setting)")
    parser.add_argument("--checkpoint", default=None,
                        help="live replay's checkpoint (default: the shipped LiDAR model if present)")
    parser.add_argument("--teacher", default=None, help="2D teacher spec (default: the shipped one, else 'tiny')")
    return parser


def _model(sensor: str, checkpoint: str | None, teacher: str | None):
    """The shipped model for ``sensor`` (or the given checkpoint / teacher), and whether it is trained."""
    from ttt_kd_ros.parameters import segmenter_config

    model = segmenter_config.default_model(sensor)
    if checkpoint is not None or teacher is not None:
        model = segmenter_config.ModelChoice(checkpoint if checkpoint is not None else model.checkpoint,
                                    teacher if teacher is not None else model.teacher,
                                    trained=bool(checkpoint or model.trained))
    if not model.trained:
        print(f"note: no trained {sensor} checkpoint shipped in this tree: an UNTRAINED network runs (plumbing "
              "only; mIoU is meaningless)")
    return model


def _write(domain_spec: str, out: Path, args: argparse.Namespace, started: float) -> tuple[Path, bool]:
    """A synthetic bag of ``domain_spec`` in ``out``; also whether its cameras move from scan to scan."""
    from ttt_kd_ros.data.synthetic import SyntheticDataset
    from ttt_kd_ros.data.synthetic.domains import parse_domain
    from ttt_kd_ros.tools import make_bag

    domain = parse_domain(domain_spec)
    summary = make_bag.write_bag(out, SyntheticDataset(domain, args.frames, seed=args.seed), storage="mcap",
                                 rate_hz=args.rate_hz, max_points=args.points, overwrite=True,
                                 source=f"synthetic domain={domain_spec} seed={args.seed}")
    print(f"[{time.monotonic() - started:5.1f} s] wrote {summary.scans} {domain_spec} scans ({args.points} points, "
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


def _pictures(args: argparse.Namespace, models: list, started: float) -> None:
    """Each shipped model on its shift: unadapted and adapted pictures, the curve, the table of this run."""
    from ttt_kd_ros.demo.scans import case_scans, run_case, table, write_case_figures
    from ttt_kd_ros.parameters import segmenter_config

    results = []
    steps = sorted({1, 2, 5, 10, args.picture_steps} & set(range(1, args.picture_steps + 1)))
    for case, model in zip(CASES, models, strict=True):
        # every step count is shown, so no time budget here; the live replay keeps the node's
        segmenter = segmenter_config.segmenter_from_parameters(model.checkpoint, model.teacher, "cpu",
                                            {**dict(case.adapt), "adapt.strategy": "ttt_kd",
                                             "adapt.time_budget_s": 0.0})
        scans = case_scans(case, args.pictures, args.seed, args.picture_points)
        result = run_case(case, segmenter, scans, steps)
        write_case_figures(result, args.out / "pictures" / case.sensor)
        results.append(result)
        print(f"[{time.monotonic() - started:5.1f} s] {case.sensor}: {case.description}, {len(scans)} scans, "
              f"mIoU {100 * result.unadapted:.1f} -> {100 * result.adapted:.1f} % after {steps[-1]} TTT-KD steps")
    print()
    print(f"TTT-KD on a shift, {args.picture_points}-point crops, shipped adaptation settings, "
          f"{steps[-1]} steps (this run):")
    print(table(results))
    print()
    for result in results:
        for path in result.figures:
            print(f"  {path}")
    print()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    try:
        # --checkpoint names the live (first) case's model only; --teacher applies to every case
        models = [_model(case.sensor, args.checkpoint if case is CASES[0] else None, args.teacher)
                  for case in CASES]
        live, model = CASES[0], models[0]
        overrides = {**dict(live.adapt), "checkpoint": model.checkpoint, "teacher": model.teacher, "device": "cpu",
                     "adapt.steps": args.steps}
        if args.bag is not None:
            bag, moving = args.bag, bool(plan_bag(args.bag).moving_cameras)
        else:
            bag, moving = _write(args.domain, args.out / "bag", args, started)
        _replay(bag, args.mode or ("inprocess" if moving else "node"), args.out / "report", overrides, args, started)
        if args.pictures > 0:
            _pictures(args, models, started)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"ttt_kd_demo: {exc}", file=sys.stderr)
        return 2
    print("latency = end to end (node: publish cloud -> labeled cloud back; inprocess: Segmenter.segment); "
          "rate = labeled clouds per second; mIoU (%) over the answered frames")
    print(f"demo finished in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
