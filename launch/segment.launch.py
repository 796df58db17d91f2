"""ros2 launch ttt_kd_ros segment.launch.py [params_file:=...] [checkpoint:=...] [device:=...]
[namespace:=...] [use_rviz:=true] [use_sim_time:=true] [log_level:=debug] [autostart:=false]

Starts the ttt_kd_segmenter lifecycle node with config/segment.yaml (or your
own file) and the FastDDS large-data profile, plus rviz2 showing the labeled
cloud in the same namespace. With autostart (default) the node configures and
activates itself; autostart:=false leaves it unconfigured for a lifecycle
manager or `ros2 lifecycle set`. `ttt_kd_segment` (ttt_kd_ros/ros/segment_command.py)
does the same without `launch`; keep the two in step. launch / launch_ros are
imported inside generate_launch_description so this file parses anywhere.
"""

from __future__ import annotations

import os

PACKAGE = "ttt_kd_ros"
NODE_NAME = "ttt_kd_segmenter"
FASTDDS_PROFILE_ENV = "FASTRTPS_DEFAULT_PROFILES_FILE"

LAUNCH_ARGUMENTS = {
    "params_file": "Node parameters (ros__parameters under ttt_kd_segmenter); default: the shipped segment.yaml.",
    "checkpoint": "Model checkpoint overriding the params file; empty keeps the file's value.",
    "device": "auto | cpu | cuda | cuda:<index>, overriding the params file; empty keeps the file's value.",
    "namespace": "Namespace of the node and rviz2 (their topics follow).",
    "use_rviz": "Also start rviz2 with config/segment.rviz.",
    "use_sim_time": "Use /clock (bag replay with --clock) for stamps checks and diagnostics.",
    "log_level": "Log level of the node.",
    "autostart": "Configure and activate at start-up; false waits for a lifecycle manager.",
}
CHOICES = {
    "use_rviz": ["true", "false"],
    "use_sim_time": ["true", "false"],
    "log_level": ["debug", "info", "warn", "error", "fatal"],
    "autostart": ["true", "false"],
}
DEFAULTS = {
    "checkpoint": "",
    "device": "",
    "namespace": "",
    "use_rviz": "false",
    "use_sim_time": "false",
    "log_level": "info",
    "autostart": "true",
}


def generate_launch_description():
    from ament_index_python.packages import get_package_share_directory
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
    from launch_ros.actions import LifecycleNode, Node

    from launch import LaunchDescription

    share = get_package_share_directory(PACKAGE)
    config_dir = os.path.join(share, "config")
    defaults = {"params_file": os.path.join(config_dir, "segment.yaml"), **DEFAULTS}

    def nodes(context, *args, **kwargs):
        # Built at launch time so empty overrides are left out instead of blanking the file's values.
        def value(name: str) -> str:
            return context.launch_configurations[name]

        overrides = {name: value(name) for name in ("checkpoint", "device") if value(name)}
        overrides["use_sim_time"] = value("use_sim_time") == "true"
        overrides["autostart"] = value("autostart") == "true"
        namespace = value("namespace")
        actions = [LifecycleNode(
            package=PACKAGE,
            executable="segment_node",
            name=NODE_NAME,
            namespace=namespace,
            parameters=[value("params_file"), overrides],
            ros_arguments=["--log-level", value("log_level")],
            output="screen",
            emulate_tty=True,
        )]
        if value("use_rviz") == "true":
            # segment.rviz names the output relative to rviz2's namespace, so it follows the node's.
            actions.append(Node(
                package="rviz2",
                executable="rviz2",
                name="ttt_kd_rviz",
                namespace=namespace,
                arguments=["-d", os.path.join(config_dir, "segment.rviz")],
                parameters=[{"use_sim_time": overrides["use_sim_time"]}],
                output="screen",
            ))
        return actions

    actions = [
        DeclareLaunchArgument(name, default_value=defaults[name], description=text, choices=CHOICES.get(name))
        for name, text in LAUNCH_ARGUMENTS.items()
    ]
    if not os.environ.get(FASTDDS_PROFILE_ENV):
        actions.append(SetEnvironmentVariable(FASTDDS_PROFILE_ENV, os.path.join(config_dir, "fastdds_large_data.xml")))
    actions.append(OpaqueFunction(function=nodes))
    return LaunchDescription(actions)
