"""ttt_kd_replay: replay a rosbag (rosbag2 mcap/sqlite3, ROS 1 .bag or .mcap) and report latency, rate, drops, mIoU.

    ttt_kd_replay BAG [--mode node|inprocess] [--strategies none,ttt_kd] [--rate 1.0 | --as-fast-as-possible]
                  [--out DIR] [--cloud-topic T] [--camera IMAGE_TOPIC ...] [--checkpoint C] [--teacher T]
                  [--steps K] [--max-frames N] [-p NAME:=VALUE ...]

--mode node (default) starts the live segmenter node in its own process and
talks to it over DDS (what a robot sees); --mode inprocess calls the
Segmenter directly (the model's own cost). Each strategy gets a fresh node or
Segmenter. Writes report.json, report.md and PNG plots into --out and prints
the summary table. A bag without cameras is replayed without adaptation.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from ttt_kd_ros.adapt import STRATEGIES
from ttt_kd_ros.parameters.segmenter_config import default_model, segmenter_config_from_parameters
from ttt_kd_ros.replay.bag_messages import BagPlan, plan_bag
from ttt_kd_ros.replay.report import ReplayReport

MODES = ("node", "inprocess")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttt_kd_replay", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bag", type=Path, help="rosbag2 folder, ROS 1 .bag or .mcap file")
    parser.add_argument("--mode", choices=MODES, default="node", help="live node over DDS, or the Segmenter in-process")
    parser.add_argument("--strategies", default="none,ttt_kd",
                        help=f"comma-separated adaptation strategies, each run separately ({', '.join(STRATEGIES)})")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=1.0, help="node mode: playback speed, 1.0 = recorded pace")
    pace.add_argument("--as-fast-as-possible", action="store_true",
                      help="node mode: send the next frame as soon as the previous one's labels are back")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: replay_out/<bag name>)")
    parser.add_argument("--cloud-topic", default=None, help="PointCloud2 topic (default: the bag's only one)")
    parser.add_argument("--camera", action="append", default=None, metavar="IMAGE_TOPIC",
                        help="camera image topic, CameraInfo beside it (repeatable; default: auto-detect)")
    parser.add_argument("--no-cameras", action="store_true", help="ignore the cameras: clouds only, no adaptation")
    parser.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped one if present)")
    parser.add_argument("--teacher", default=None, help="2D teacher spec (default: the shipped one, else 'tiny')")
    parser.add_argument("--steps", type=int, default=None, help="TTT steps per scan (default: the params file's)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, auto")
    parser.add_argument("--max-frames", type=int, default=None, help="replay only the first N clouds")
    parser.add_argument("--params-file", type=Path, default=None,
                        help="node params YAML to start from (default: the shipped config/segment.yaml)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="node parameter override, YAML value (repeatable), e.g. -p adapt.lr:=0.01")
    parser.add_argument("--frame-timeout-s", type=float, default=60.0,
                        help="as fast as possible: longest wait for one frame's labels")
    parser.add_argument("--drain-timeout-s", type=float, default=10.0,
                        help="after the last frame: longest wait with no new output before the rest count as lost")
    parser.add_argument("--startup-timeout-s", type=float, default=180.0, help="longest wait for the node to start")
    parser.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID of the replay (default: random)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return parser


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """["adapt.lr:=0.01", ...] -> {"adapt.lr": 0.01}; values are YAML (numbers, lists, strings)."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise ValueError(f"-p {item!r}: expected NAME:=VALUE")
        out[name] = yaml.safe_load(value)
    return out


def base_parameters(params_file: Path | None) -> dict[str, Any]:
    """Flat node parameters of the params file (the shipped segment.yaml by default)."""
    from ttt_kd_ros.package_files import share_file
    from ttt_kd_ros.ros.replay_live import flatten_params, load_params_file

    return flatten_params(load_params_file(params_file or share_file("config", "segment.yaml")))


def _progress_factory(enabled: bool) -> Callable[[int, str], Any] | None:
    if not enabled:
        return None
    from tqdm import tqdm

    def make(total: int, description: str) -> Any:
        return tqdm(total=total, desc=description, unit="frame", leave=False)

    return make


def run_replay(bag: Path, mode: str = "node", strategies: Sequence[str] = ("none", "ttt_kd"), rate: float | None = 1.0,
               out: Path | None = None, cloud_topic: str | None = None, cameras: Sequence[str] | None = None,
               overrides: dict[str, Any] | None = None, params_file: Path | None = None,
               max_frames: int | None = None, plots: bool = True, progress: bool = False,
               node_options: dict[str, Any] | None = None) -> tuple[ReplayReport, list[Path]]:
    """Replay ``bag`` once per strategy and write the report; returns it and the files written.

    ``overrides``: flat node parameters over the params file (checkpoint,
    teacher, adapt.steps, ...). ValueError for a bad bag, topic, strategy or
    parameter.
    """
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ValueError(f"--strategies: expected names from {list(STRATEGIES)}, got {list(strategies)}")
    if mode not in MODES:
        raise ValueError(f"--mode: expected one of {MODES}, got {mode!r}")
    plan: BagPlan = plan_bag(bag, cloud_topic=cloud_topic, camera_topics=cameras, max_frames=max_frames)
    if plan.num_clouds == 0:
        raise ValueError(f"{bag}: no message on {plan.cloud_topic}")
    notes = list(plan.notes)
    if mode == "node" and plan.moving_cameras:
        notes.append(f"camera(s) {', '.join(plan.moving_cameras)}: tf changes within the bag, but the live node "
                     "takes fixed extrinsics here (no tf2): it was given the first value; use --mode inprocess")
    strategies = list(strategies)
    if not plan.cameras and strategies != ["none"]:
        notes.append(f"no camera in the bag: clouds predicted without adaptation (strategy none instead of "
                     f"{','.join(strategies)})")
        strategies = ["none"]
    params = base_parameters(params_file)
    params.update(overrides or {})
    out = out or Path("replay_out") / bag.name.split(".")[0]
    out.mkdir(parents=True, exist_ok=True)
    config = segmenter_config_from_parameters(params)  # the node's mapping: same defaults, same checks
    report = ReplayReport(bag=str(bag), mode=mode, pacing="", cloud_topic=plan.cloud_topic,
                          cameras=[c.name for c in plan.cameras], sensor_rate_hz=plan.sensor_rate_hz, label_set="",
                          notes=notes, config={"checkpoint": params.get("checkpoint") or "untrained default net",
                                               "teacher": params.get("teacher"),
                                               "adapt.steps": params.get("adapt.steps"),
                                               "adapt.lr": params.get("adapt.lr"),
                                               "device": params.get("device")})
    report.bag_labelled = _cloud_has_labels(plan)
    bar = _progress_factory(progress)
    if mode == "inprocess":
        from ttt_kd_ros.replay.inprocess import run_inprocess

        report.pacing = "back to back"
        report.runs, report.label_set = run_inprocess(plan, strategies, params, max_frames, bar)
    else:
        from ttt_kd_ros.replay.inprocess import scoring_label_set
        from ttt_kd_ros.replay.report import num_classes_of
        from ttt_kd_ros.ros.replay_live import NodeReplayOptions, run_node

        model_label_set, model_classes = _model_label_set(config)
        label_set, note = scoring_label_set(plan.label_set, model_label_set)
        if note:
            notes.append(note)
        report.label_set = label_set if report.bag_labelled else ""
        options = NodeReplayOptions(rate=rate, max_frames=max_frames, base_params_file=params_file,
                                    params=dict(overrides or {}), **(node_options or {}))
        report.pacing = "as fast as possible" if rate is None else f"rate x{rate:g}"
        report.runs = run_node(plan, strategies, options, out,
                               num_classes_of(label_set, model_classes) if report.label_set else None, bar)
    written = []
    if plots:
        from ttt_kd_ros.replay.plots import write_plots

        written = write_plots(report, out)
    json_path, md_path = report.write(out, [str(p) for p in written])
    return report, [json_path, md_path, *written]


def _model_label_set(config: Any) -> tuple[str, int]:
    """(label set, classes) the model predicts, read from the checkpoint's metadata without building the model."""
    if config.checkpoint:
        from ttt_kd_ros.checkpoint_format import load_checkpoint

        net = load_checkpoint(config.checkpoint, "cpu")
        return net.config.label_set, net.config.num_classes
    from ttt_kd_ros.model import NetConfig

    default = NetConfig()
    return default.label_set, default.num_classes


def _cloud_has_labels(plan: BagPlan) -> bool:
    from ttt_kd_ros.data.rosbag import read_bag_messages

    for item in read_bag_messages(plan.path, [plan.cloud_topic]):
        return any(str(f.name) == "label" for f in item.msg.fields)
    return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    try:
        overrides = parse_overrides(args.param)
        model = default_model()
        overrides.setdefault("checkpoint", args.checkpoint if args.checkpoint is not None else model.checkpoint)
        overrides.setdefault("teacher", args.teacher if args.teacher is not None else model.teacher)
        overrides.setdefault("device", args.device)
        if args.steps is not None:
            overrides["adapt.steps"] = args.steps
        cameras = [] if args.no_cameras else args.camera
        node_options = {"frame_timeout_s": args.frame_timeout_s, "drain_timeout_s": args.drain_timeout_s,
                        "startup_timeout_s": args.startup_timeout_s, "domain_id": args.domain_id}
        report, files = run_replay(
            args.bag, mode=args.mode, strategies=[s.strip() for s in args.strategies.split(",") if s.strip()],
            rate=None if args.as_fast_as_possible else args.rate, out=args.out, cloud_topic=args.cloud_topic,
            cameras=cameras, overrides=overrides, params_file=args.params_file, max_frames=args.max_frames,
            plots=not args.no_plots, progress=sys.stderr.isatty(), node_options=node_options)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"ttt_kd_replay: {exc}", file=sys.stderr)
        return 2
    print(f"{report.mode} replay of {report.bag} ({report.pacing}), {time.monotonic() - started:.0f} s")
    for note in report.notes:
        print(f"note: {note}")
    print(report.table())
    print(report.ground_truth())
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
