"""ttt_kd_segment: start the segmenter node the way launch/segment.launch.py does, without `launch`.

`ros2 launch` is not available everywhere this package runs (pip-only ROS
installs, CI). This command resolves the same default params file, applies the
same overrides, sets the same FastDDS profile and runs the node in this
process. Keep it in step with the launch file (test_ros_params checks both
accept the same arguments).

    ttt_kd_segment [--params-file F] [--checkpoint C] [--device D] [--namespace NS]
                   [--use-sim-time] [--no-autostart] [-p name:=value ...] [--log-level LEVEL]

rviz2 (the launch file's use_rviz) is the one thing it does not start.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ttt_kd_ros.package_files import share_file

NODE_NAME = "ttt_kd_segmenter"
FASTDDS_PROFILE_ENV = "FASTRTPS_DEFAULT_PROFILES_FILE"
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ttt_kd_segment",
        description="Run the TTT-KD segmenter node (what segment.launch.py does, without ROS launch).",
    )
    parser.add_argument("--params-file", type=Path, default=None,
                        help="ros__parameters YAML (default: the shipped config/segment.yaml)")
    parser.add_argument("--checkpoint", default="", help="model checkpoint; empty keeps the params file's value")
    parser.add_argument("--device", default="", help="auto | cpu | cuda; empty keeps the params file's value")
    parser.add_argument("--namespace", default="", help="namespace of the node and its topics")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="parameter override, as `--ros-args -p` takes it (repeatable)")
    parser.add_argument("--use-sim-time", action="store_true", help="use /clock (use_sim_time:=true)")
    parser.add_argument("--no-autostart", dest="autostart", action="store_false",
                        help="do not configure and activate at start-up (wait for a lifecycle manager)")
    parser.add_argument("--log-level", default="", choices=("", *LOG_LEVELS), help="rclpy log level")
    return parser


def ros_arguments(args: argparse.Namespace) -> list[str]:
    """The `--ros-args ...` list the node is started with; ValueError names a malformed override."""
    params_file = args.params_file if args.params_file is not None else share_file("config", "segment.yaml")
    params_file = Path(params_file)
    if not params_file.is_file():
        raise ValueError(f"--params-file: {params_file} does not exist")
    ros_args = ["--ros-args", "-r", f"__node:={NODE_NAME}", "--params-file", str(params_file)]
    if args.namespace:
        namespace = args.namespace if args.namespace.startswith("/") else f"/{args.namespace}"
        ros_args += ["-r", f"__ns:={namespace}"]
    for name in ("checkpoint", "device"):
        value = getattr(args, name)
        if value:
            ros_args += ["-p", f"{name}:={value}"]
    if getattr(args, "use_sim_time", False):
        ros_args += ["-p", "use_sim_time:=true"]
    if not getattr(args, "autostart", True):
        ros_args += ["-p", "autostart:=false"]
    for override in args.param:
        if ":=" not in override or not override.split(":=", 1)[0]:
            raise ValueError(f"-p {override!r}: expected NAME:=VALUE")
        ros_args += ["-p", override]
    if args.log_level:
        ros_args += ["--log-level", args.log_level]
    return ros_args


def set_fastdds_profile(environ: dict[str, str] | None = None) -> str:
    """Point FastDDS at the shipped large-data profile unless the user chose one; returns the path in use."""
    environ = os.environ if environ is None else environ
    if not environ.get(FASTDDS_PROFILE_ENV):
        environ[FASTDDS_PROFILE_ENV] = str(share_file("config", "fastdds_large_data.xml"))
    return environ[FASTDDS_PROFILE_ENV]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        ros_args = ros_arguments(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"ttt_kd_segment: {exc}", file=sys.stderr)
        return 2
    set_fastdds_profile()
    # Imported here so `ttt_kd_segment --help` and argument errors need no ROS libraries.
    from ttt_kd_ros.ros.node import main as node_main

    return node_main(["ttt_kd_segment", *ros_args])


if __name__ == "__main__":
    sys.exit(main())
