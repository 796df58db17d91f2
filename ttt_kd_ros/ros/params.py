"""The node's parameters on the node: declared once with descriptions, read once, checked once.

Every parameter the node reads is in node_parameters.PARAMETERS (name,
default, description, allowed values; no rclpy there), so `ros2 param
describe`, docs/NODE.md and the tools show the same text and defaults, and a
bad value fails at configure with the parameter's name. The mapping to the
engine's SegmenterConfig is compose.segmenter_config_from_parameters. Cameras are
a list of names; each name gets its own ``camera.<name>.*`` parameters,
declared after the list is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import (
    InvalidParameterTypeException,
    InvalidParameterValueException,
    ParameterUninitializedException,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

from ttt_kd_ros.compose import segmenter_config_from_parameters
from ttt_kd_ros.node_parameters import (
    CAMERA_EXTRINSICS,
    CAMERA_EXTRINSICS_DESCRIPTION,
    CAMERA_PARAMETERS,
    PARAMETERS,
    ParameterError,
    ParamSpec,
    check_value,
)
from ttt_kd_ros.segmenter import SegmenterConfig
from ttt_kd_ros.transforms import cam_from_cloud_from_parameter


@dataclass(frozen=True)
class CameraParams:
    name: str
    image_topic: str
    info_topic: str
    frame_id: str
    cam_from_cloud: np.ndarray | None  # (4, 4) float64, None: look frame_id up in tf


@dataclass(frozen=True)
class NodeParams:
    values: dict[str, Any]
    cameras: tuple[CameraParams, ...] = field(default_factory=tuple)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    @property
    def cloud_only(self) -> bool:
        return self.values["mode"] == "cloud_only" or not self.cameras


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    text = spec.description
    if spec.choices:
        text += f" One of {list(spec.choices)}."
    return ParameterDescriptor(description=text, read_only=True)


def _declare(node: Node, name: str, default: Any, descriptor: ParameterDescriptor) -> Any:
    try:
        if not node.has_parameter(name):
            node.declare_parameter(name, default, descriptor)
        return node.get_parameter(name).value
    except ParameterUninitializedException:
        return None
    except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
        raise ParameterError(f"parameter {name}: {exc}") from exc


def extrinsics_from_numbers(name: str, numbers: list[float] | None) -> np.ndarray | None:
    """16 numbers (4x4 row-major) or 7 (x y z qx qy qz qw) -> (4, 4); None/empty -> None (look it up in tf2)."""
    if numbers is None or len(numbers) == 0:
        return None
    try:
        return cam_from_cloud_from_parameter(numbers, camera=name)
    except ValueError as exc:
        raise ParameterError(f"parameter {name}: {exc}") from exc


def read_parameters(node: Node) -> NodeParams:
    """Declare (if needed) and read every parameter; ParameterError names the first bad one."""
    values = {spec.name: check_value(spec, _declare(node, spec.name, spec.default, _descriptor(spec)))
              for spec in PARAMETERS}
    names = _declare(node, "cameras", Parameter.Type.STRING_ARRAY, ParameterDescriptor(
        description="Camera names; each has camera.<name>.image_topic/info_topic/frame_id/cam_from_cloud. "
                    "Leave unset for cloud_only.", read_only=True)) or []
    if len(set(names)) != len(names) or any(not n or "." in n or "/" in n for n in names):
        raise ParameterError(f"parameter cameras: expected distinct names without '.' or '/', got {list(names)}")
    cameras = []
    for cam in names:
        got = {spec.name: _declare(node, f"camera.{cam}.{spec.name}", spec.default.format(name=cam),
                                   _descriptor(spec)) for spec in CAMERA_PARAMETERS}
        ext_name = f"camera.{cam}.{CAMERA_EXTRINSICS}"
        numbers = _declare(node, ext_name, Parameter.Type.DOUBLE_ARRAY,
                           ParameterDescriptor(description=CAMERA_EXTRINSICS_DESCRIPTION, read_only=True))
        extrinsics = extrinsics_from_numbers(ext_name, numbers)
        if extrinsics is None and not got["frame_id"]:
            raise ParameterError(f"parameter {ext_name}: camera {cam} needs cam_from_cloud or camera.{cam}.frame_id")
        for key in ("image_topic", "info_topic"):
            if not got[key]:
                raise ParameterError(f"parameter camera.{cam}.{key}: expected a topic name, got ''")
        cameras.append(CameraParams(cam, got["image_topic"], got["info_topic"], got["frame_id"], extrinsics))
    for key in ("cloud_topic", "output_topic"):
        if not values[key]:
            raise ParameterError(f"parameter {key}: expected a topic name, got ''")
    return NodeParams(values=values, cameras=tuple(cameras))


def segmenter_config(params: NodeParams) -> SegmenterConfig:
    """The engine's SegmenterConfig from the node's parameters (the one mapping, in compose.py)."""
    return segmenter_config_from_parameters(params.values)
