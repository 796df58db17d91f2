"""ros2 launch ttt_kd_ros segment.launch.py [params_file:=...] [checkpoint:=...] [device:=...]
[namespace:=...] [use_rviz:=true]

Starts the ttt_kd_segmenter node with config/segment.yaml (or your own file)
and the FastDDS large-data profile, plus rviz2 showing the labeled cloud.
`ttt_kd_segment` (ttt_kd_ros/ros/runner.py) does the same without `launch`;
keep the two in step. launch / launch_ros are imported inside
generate_launch_description so this file parses anywhere.
"""

from __future__ import annotations

import os

PACKAGE = "ttt_kd_ros"
NODE_NAME = "ttt_kd_segmenter"
FASTDDS_PROFILE_ENV = "FASTRTPS_DEFAULT_PROFILES_FILE"

LAUNCH_ARGUMENTS = {
    "params_file": "Node parameters (ros__parameters under ttt_kd_segmenter); default: the shipped segment.yaml.",
    "checkpoint": "Model checkpoint overriding the params file; empty keeps the file's value.",
    "device": "auto | cpu | cuda, overriding the params file; empty keeps the file's value.",
    "namespace": "Namespace of the node (its topics follow).",
    "use_rviz": "Also start rviz2 with config/segment.rviz.",
}


def generate_launch_description():
    from ament_index_python.packages import get_package_share_directory
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
    from launch.conditions import IfCondition
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    from launch import LaunchDescription

    share = get_package_share_directory(PACKAGE)
    config_dir = os.path.join(share, "config")
    defaults = {
        "params_file": os.path.join(config_dir, "segment.yaml"),
        "checkpoint": "",
        "device": "",
        "namespace": "",
        "use_rviz": "false",
    }

    def segmenter_node(context, *args, **kwargs):
        # Built at launch time so empty overrides are left out instead of blanking the file's values.
        overrides = {}
        for name in ("checkpoint", "device"):
            value = LaunchConfiguration(name).perform(context)
            if value:
                overrides[name] = value
        parameters = [LaunchConfiguration("params_file").perform(context)]
        if overrides:
            parameters.append(overrides)
        return [Node(
            package=PACKAGE,
            executable="segment_node",
            name=NODE_NAME,
            namespace=LaunchConfiguration("namespace").perform(context),
            parameters=parameters,
            output="screen",
            emulate_tty=True,
        )]

    actions = [
        DeclareLaunchArgument(name, default_value=defaults[name], description=text)
        for name, text in LAUNCH_ARGUMENTS.items()
    ]
    if not os.environ.get(FASTDDS_PROFILE_ENV):
        actions.append(SetEnvironmentVariable(FASTDDS_PROFILE_ENV, os.path.join(config_dir, "fastdds_large_data.xml")))
    actions.append(OpaqueFunction(function=segmenter_node))
    actions.append(Node(
        package="rviz2",
        executable="rviz2",
        name="ttt_kd_rviz",
        arguments=["-d", os.path.join(config_dir, "segment.rviz")],
        condition=IfCondition(LaunchConfiguration("use_rviz")),
        output="screen",
    ))
    return LaunchDescription(actions)
