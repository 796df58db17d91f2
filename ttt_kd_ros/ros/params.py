"""The node's parameters on the node: declared once with descriptors, read at configure, some changed at run time.

Every parameter the node reads is in parameters.table.PARAMETERS (name,
default, description, allowed values, whether it may change at run time; no
rclpy there), so `ros2 param describe`, docs/NODE.md and the tools show the
same text and defaults, and a bad value fails at configure with the
parameter's name. Descriptors carry the ranges (``FloatingPointRange`` /
``IntegerRange``) and choices, and ``read_only`` for everything that is not a
runtime knob; ``check_update`` is what the node's set-parameters callback
asks before it accepts a ``ros2 param set``. The mapping to the engine's
SegmenterConfig is parameters.segmenter_config.segmenter_config_from_parameters. Cameras are a
list of names; each name gets its own ``camera.<name>.*`` parameters,
declared after the list is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import (
    InvalidParameterTypeException,
    InvalidParameterValueException,
    ParameterUninitializedException,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

from ttt_kd_ros.labels import LabelSet
from ttt_kd_ros.msgs.transforms import cam_from_cloud_from_parameter, invert_transform, matrix_to_pose
from ttt_kd_ros.parameters.segmenter_config import segmenter_config_from_parameters
from ttt_kd_ros.parameters.table import (
    CAMERA_EXTRINSICS,
    CAMERA_EXTRINSICS_DESCRIPTION,
    CAMERA_PARAMETERS,
    OLD_CAMERA_EXTRINSICS,
    PARAMETERS,
    RUNTIME_PARAMETERS,
    ParameterError,
    ParamSpec,
    check_value,
    parameter_spec,
)
from ttt_kd_ros.ros.extrinsics import extrinsics_from_numbers
from ttt_kd_ros.segmenter import SegmenterConfig

INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class CameraParams:
    name: str
    image_topic: str
    info_topic: str
    frame_id: str  # tf frame of the camera; "" = the Image header's frame_id
    parent_frame: str  # the frame the extrinsics parameter is given in (the cloud frame it applies to)
    cam_from_cloud: np.ndarray | None  # (4, 4) from the extrinsics parameter; None: tf at each cloud's stamp


@dataclass(frozen=True)
class NodeParams:
    values: dict[str, Any]
    cameras: tuple[CameraParams, ...] = field(default_factory=tuple)
    given: tuple[str, ...] = ()  # parameters set by a params file or -p (the rest are the declared defaults)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    @property
    def cloud_only(self) -> bool:
        return self.values["mode"] == "cloud_only" or not self.cameras


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """The ParameterDescriptor `ros2 param describe` shows: text, choices, range, read-only unless a runtime knob."""
    text = spec.description
    constraints = []
    if spec.choices:
        text += f" One of {list(spec.choices)}."
        constraints.append(f"one of {list(spec.choices)}")
    if spec.pattern:
        constraints.append(f"matches {spec.pattern}")
    if spec.runtime:
        text += " Settable at run time (applied between scans)."
    desc = ParameterDescriptor(description=text, read_only=not spec.runtime,
                               additional_constraints="; ".join(constraints))
    numeric = isinstance(spec.default, int | float) and not isinstance(spec.default, bool)
    if numeric and (spec.minimum is not None or spec.maximum is not None):
        if isinstance(spec.default, float):
            desc.floating_point_range = [FloatingPointRange(
                from_value=float(spec.minimum if spec.minimum is not None else -np.inf),
                to_value=float(spec.maximum if spec.maximum is not None else np.inf), step=0.0)]
        else:
            desc.integer_range = [IntegerRange(
                from_value=int(spec.minimum if spec.minimum is not None else -INT64_MAX),
                to_value=int(spec.maximum if spec.maximum is not None else INT64_MAX), step=1)]
    return desc


DOUBLE_TYPES = {Parameter.Type.DOUBLE: Parameter.Type.INTEGER,
                Parameter.Type.DOUBLE_ARRAY: Parameter.Type.INTEGER_ARRAY}
"""A double (array) parameter -> the integer type a user may write it in (``3`` for ``3.0``)."""


def integers_as_doubles(parameter: Parameter, declared: Parameter.Type) -> Parameter:
    """``parameter`` with an integer (array) value turned into the double (array) ``declared``; else unchanged.

    WHY: ``ros2 param set ... max_future_s 3`` and ``-p adapt.time_budget_s:=0``
    arrive as integers, and rclpy refuses a value whose type differs from the
    declared one; every double parameter takes an integer for its value.
    """
    if DOUBLE_TYPES.get(declared) != parameter.type_:
        return parameter
    value = parameter.value
    return Parameter(parameter.name, declared, float(value) if declared == Parameter.Type.DOUBLE
                     else [float(v) for v in value])


def _declared_type(node: Node, name: str) -> Parameter.Type:
    if not node.has_parameter(name):
        return Parameter.Type.NOT_SET
    return Parameter.Type(node.describe_parameter(name).type)


def accept_integers_for_doubles(node: Node) -> None:
    """Widen integers given for double parameters in every later ``ros2 param set`` (a pre-set callback)."""
    node.add_pre_set_parameters_callback(
        lambda parameters: [integers_as_doubles(p, _declared_type(node, p.name)) for p in parameters])


def _widen_override(node: Node, name: str, default: Any) -> None:
    """An integer override (params file, ``-p``) of a double parameter, made the double it stands for.

    rclpy reads overrides inside ``declare_parameter`` and offers no hook
    before that, so the node's own override table is edited here.
    """
    declared = default if isinstance(default, Parameter.Type) else Parameter.Type.from_parameter_value(default)
    overrides = getattr(node, "_parameter_overrides", {})
    if name in overrides and declared in DOUBLE_TYPES:
        overrides[name] = integers_as_doubles(overrides[name], declared)


def _declare(node: Node, name: str, default: Any, desc: ParameterDescriptor) -> Any:
    try:
        if not node.has_parameter(name):
            _widen_override(node, name, default)
            node.declare_parameter(name, default, desc)
        return node.get_parameter(name).value
    except ParameterUninitializedException:
        return None
    except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
        raise ParameterError(f"parameter {name}: {exc}") from exc


def _read_only(description: str) -> ParameterDescriptor:
    return ParameterDescriptor(description=description, read_only=True)


def old_extrinsics_refusal(camera: str, numbers: list[float]) -> str:
    """Why ``camera.<name>.cam_from_cloud`` is refused, with the extrinsics numbers that replace it.

    WHY: cam_from_cloud (X_cam = T X_cloud) is the inverse of what
    static_transform_publisher and tf take, so pasting numbers between the
    two silently put the camera in the wrong place. The node now takes only
    the tf convention; the message does the conversion for the user.
    """
    prefix = f"camera.{camera}"
    try:
        cam_from_cloud = cam_from_cloud_from_parameter(numbers, camera=camera)
    except ValueError as exc:
        converted = f"(cannot convert: {exc})"
    else:
        converted = "[" + ", ".join(f"{v:.9g}" for v in matrix_to_pose(invert_transform(cam_from_cloud))) + "]"
    return (f"parameter {prefix}.{OLD_CAMERA_EXTRINSICS} is no longer accepted: it is the inverse of tf's "
            f"convention. Give {prefix}.{CAMERA_EXTRINSICS}: {converted} (x y z qx qy qz qw, the camera's pose in "
            f"the cloud frame, as static_transform_publisher takes it) and {prefix}.parent_frame: <the cloud's "
            f"header.frame_id>, or drop both and let the node look the camera up in tf")


def _read_camera(node: Node, cam: str) -> CameraParams:
    got = {spec.name: _declare(node, f"camera.{cam}.{spec.name}", spec.default.format(name=cam), descriptor(spec))
           for spec in CAMERA_PARAMETERS}
    old = _declare(node, f"camera.{cam}.{OLD_CAMERA_EXTRINSICS}", Parameter.Type.DOUBLE_ARRAY,
                   _read_only("Refused (the inverse of tf's convention); use extrinsics + parent_frame."))
    if old is not None and len(old) > 0:
        raise ParameterError(old_extrinsics_refusal(cam, list(old)))
    numbers = _declare(node, f"camera.{cam}.{CAMERA_EXTRINSICS}", Parameter.Type.DOUBLE_ARRAY,
                       _read_only(CAMERA_EXTRINSICS_DESCRIPTION))
    cam_from_cloud = None
    if numbers is not None and len(numbers) > 0:
        cam_from_cloud = extrinsics_from_numbers(cam, numbers, got["parent_frame"])
    for key in ("image_topic", "info_topic"):
        if not got[key]:
            raise ParameterError(f"parameter camera.{cam}.{key}: expected a topic name, got ''")
    return CameraParams(cam, got["image_topic"], got["info_topic"], got["frame_id"], got["parent_frame"],
                        cam_from_cloud)


def read_parameters(node: Node) -> NodeParams:
    """Declare (if needed) and read every parameter; ParameterError names the first bad one."""
    values = {spec.name: check_value(spec, _declare(node, spec.name, spec.default, descriptor(spec)))
              for spec in PARAMETERS}
    names = _declare(node, "cameras", Parameter.Type.STRING_ARRAY, _read_only(
        "Camera names; each has camera.<name>.image_topic/info_topic/frame_id/parent_frame/extrinsics. "
        "Leave unset for cloud_only.")) or []
    if len(set(names)) != len(names) or any(not n or "." in n or "/" in n for n in names):
        raise ParameterError(f"parameter cameras: expected distinct names without '.' or '/', got {list(names)}")
    cameras = [_read_camera(node, cam) for cam in names]
    for key in ("cloud_topic", "output_topic"):
        if not values[key]:
            raise ParameterError(f"parameter {key}: expected a topic name, got ''")
    overrides = getattr(node, "_parameter_overrides", {})  # rclpy keeps the params file and -p values here
    return NodeParams(values=values, cameras=tuple(cameras), given=tuple(n for n in values if n in overrides))


def segmenter_config(params: NodeParams) -> SegmenterConfig:
    """The engine's SegmenterConfig from the node's parameters (the one mapping, parameters/segmenter_config.py):
    the checkpoint's validated settings for every adapt.* / fusion.* parameter the user did not give."""
    return segmenter_config_from_parameters(params.values, given=params.given)


def check_update(current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """The checked runtime changes, or ParameterError naming the first refused one.

    Only RUNTIME_PARAMETERS may change (rclpy already refuses read-only ones;
    this is the second line for a caller that bypasses descriptors). Values
    pass the spec's check and then the engine's (``adapt.lr`` must be > 0),
    with every other parameter at its current value.
    """
    checked = {}
    for name, value in changes.items():
        if name not in RUNTIME_PARAMETERS:
            raise ParameterError(f"parameter {name}: read-only on a running node (set it in the params file)")
        checked[name] = check_value(parameter_spec(name), value)
    segmenter_config_from_parameters({**current, **checked})
    return checked


def declare_label_parameters(node: Node, label_set: LabelSet) -> None:
    """The checkpoint's classes as read-only parameters: ``labels.set``, ``labels.names``, ``labels.colors``.

    Colours are "#rrggbb" strings in class order, the palette of the output's
    ``rgb`` field. Declared once per node: a later configure with another
    checkpoint keeps the first values (a node restarts to change models).
    """
    values = {
        "labels.set": (label_set.name, "Label set of the loaded checkpoint."),
        "labels.names": (list(label_set.class_names), "Class names in label order (the label field indexes it)."),
        "labels.colors": (["#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb)) for rgb in label_set.colors_rgb],
                          "Class colours (#rrggbb) in label order: the palette of the output's rgb field."),
    }
    for name, (value, text) in values.items():
        if not node.has_parameter(name):
            node.declare_parameter(name, value, _read_only(text))
