"""The node's parameters: declared once with descriptions, read once, checked once.

Every parameter the node reads is in PARAMETERS (name, default, description,
allowed values), so `ros2 param describe` and docs/NODE.md show the same
text and a bad value fails at configure with the parameter's name. Cameras are
a list of names; each name gets its own ``camera.<name>.*`` parameters,
declared after the list is read.
"""

from __future__ import annotations

import re
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

from ttt_kd_ros.adapt import OPTIMIZERS, PARAM_SETS, STRATEGIES, AdaptConfig
from ttt_kd_ros.losses import KD_LOSS_KINDS
from ttt_kd_ros.segmenter import SegmenterConfig
from ttt_kd_ros.transforms import cam_from_cloud_from_parameter

NODE_NAME = "ttt_kd_segmenter"


class ParameterError(ValueError):
    """A parameter has a value the node cannot run with; the message names it."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    pattern: str = ""  # full-match regular expression for strings


MODES = ("adapt", "cloud_only")
_ADAPT = AdaptConfig()  # the engine's defaults are the node's defaults: one source of truth

PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("cloud_topic", "points", "PointCloud2 input (sensor-data QoS)."),
    ParamSpec("output_topic", "~/labeled_points", "Labeled PointCloud2 output (RELIABLE), same header as the input."),
    ParamSpec("output_min_confidence", 0.0, "Points whose confidence is below this get the ignore label (65535, "
              "black) in the output; 0 keeps every label.", minimum=0.0),
    ParamSpec("mode", "adapt", "adapt: pair clouds with the cameras and adapt; cloud_only: ignore cameras, no "
              "adaptation. With no cameras listed the node runs cloud_only.", choices=MODES),
    ParamSpec("sync_queue_size", 10, "Messages kept per input by the approximate-time synchroniser.", minimum=1),
    ParamSpec("sync_slop_s", 0.05, "Largest stamp difference (s) between a cloud and its images.", minimum=0.0),
    ParamSpec("camera_timeout_s", 2.0, "After this long (s) without a message from a listed camera, clouds are "
              "segmented alone (no adaptation) until it is back; 0 waits for ever.", minimum=0.0),
    ParamSpec("max_cloud_age_s", 0.0, "Refuse clouds whose stamp is older than now minus this (s); 0 accepts any.",
              minimum=0.0),
    ParamSpec("max_future_s", 0.0, "Refuse clouds stamped more than this (s) after now; 0 accepts any.", minimum=0.0),
    ParamSpec("diagnostics_period_s", 1.0, "Period (s) of the /diagnostics message.", minimum=0.01),
    ParamSpec("checkpoint", "builtin", "Model checkpoint (.safetensors); 'builtin': the model shipped with the "
              "package; empty: an untrained network (plumbing tests only)."),
    ParamSpec("teacher", "builtin", "2D teacher: 'builtin' (the shipped stand-in the builtin model was trained "
              "with), a Hugging Face DINOv2 folder, a cached hub id, a dinov2_vit*14_pretrain.pth file, or 'tiny' "
              "(random weights, tests)."),
    ParamSpec("teacher_resolution", 0, "Shorter image side (px) fed to the teacher; 0: the checkpoint's.",
              minimum=0),
    ParamSpec("device", "auto", "Torch device: auto (cuda when available), cpu, cuda or cuda:<index>.",
              pattern=r"auto|cpu|cuda(:\d+)?"),
    ParamSpec("amp", False, "Mixed precision on CUDA."),
    ParamSpec("max_points", 150000, "Points the network sees per scan (a random subset beyond it); every input "
              "point is still labelled from its voxel. 0: no cap.", minimum=0),
    ParamSpec("max_input_points", 1000000, "Clouds larger than this are randomly thinned on arrival (memory, "
              "latency and output size stay bounded); the output then has this many points. 0: no cap.",
              minimum=0),
    ParamSpec("seed", 0, "Seed for point sampling and the tiny models."),
    ParamSpec("adapt.strategy", _ADAPT.strategy, "Adaptation per scan (TTT-KD resets the weights every scan, "
              "ttt_kd_online keeps them).", choices=tuple(STRATEGIES)),
    ParamSpec("adapt.steps", _ADAPT.steps, "Gradient steps per scan.", minimum=0),
    ParamSpec("adapt.optimizer", _ADAPT.optimizer, "Optimizer of the test-time steps.", choices=OPTIMIZERS),
    ParamSpec("adapt.lr", _ADAPT.lr, "Learning rate of the test-time steps.", minimum=0.0),
    ParamSpec("adapt.params", _ADAPT.params, "Backbone parameters updated at test time.", choices=PARAM_SETS),
    ParamSpec("adapt.kd_points_per_step", _ADAPT.kd_points_per_step, "Visible points sampled per KD step; 0: all.",
              minimum=0),
    ParamSpec("adapt.loss", _ADAPT.loss, "KD loss form.", choices=KD_LOSS_KINDS),
    ParamSpec("adapt.time_budget_s", 0.0, "Stop adapting before a step that would end later than this (s) after "
              "adaptation started; 0: no limit.", minimum=0.0),
)

CAMERA_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("image_topic", "{name}/image_raw", "Image topic (rgb8, bgr8, rgba8, bgra8, mono8)."),
    ParamSpec("info_topic", "{name}/camera_info", "CameraInfo topic of the same camera."),
    ParamSpec("frame_id", "", "Camera frame looked up in tf (cloud frame -> this frame, at the cloud stamp) when "
              "cam_from_cloud is not given."),
)
CAMERA_EXTRINSICS = "cam_from_cloud"
CAMERA_EXTRINSICS_DESCRIPTION = (
    "Cloud frame -> camera optical frame: 16 numbers (4x4, row-major, X_cam = T X_cloud) or 7 (x y z qx qy qz qw)."
)


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


def _check(spec: ParamSpec, value: Any) -> Any:
    if spec.choices and value not in spec.choices:
        raise ParameterError(f"parameter {spec.name}: expected one of {list(spec.choices)}, got {value!r}")
    if spec.pattern and not re.fullmatch(spec.pattern, str(value)):
        raise ParameterError(f"parameter {spec.name}: expected {spec.pattern!r}, got {value!r}")
    if spec.minimum is not None and value < spec.minimum:
        raise ParameterError(f"parameter {spec.name}: expected >= {spec.minimum}, got {value!r}")
    return value


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
    values = {spec.name: _check(spec, _declare(node, spec.name, spec.default, _descriptor(spec)))
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


def engine_error_text(exc: Exception) -> str:
    """An engine ValueError in the node's parameter names (AdaptConfig.lr -> adapt.lr)."""
    return str(exc).replace("AdaptConfig.", "parameter adapt.").replace("SegmenterConfig.", "parameter ")


def segmenter_config(params: NodeParams) -> SegmenterConfig:
    """The engine's SegmenterConfig from the node parameters; its ValueErrors are renamed to the parameter."""
    budget = params["adapt.time_budget_s"]
    try:
        adapt = AdaptConfig(
            strategy=params["adapt.strategy"],
            steps=params["adapt.steps"],
            optimizer=params["adapt.optimizer"],
            lr=params["adapt.lr"],
            params=params["adapt.params"],
            kd_points_per_step=params["adapt.kd_points_per_step"],
            loss=params["adapt.loss"],
            time_budget_s=budget if budget > 0 else None,
            seed=params["seed"],
        )
        return SegmenterConfig(
            checkpoint=params["checkpoint"] or None,
            teacher=params["teacher"],
            teacher_resolution=params["teacher_resolution"] or None,
            device=params["device"],
            amp=params["amp"],
            adapt=adapt,
            max_points=params["max_points"],
            seed=params["seed"],
        )
    except ValueError as exc:
        raise ParameterError(engine_error_text(exc)) from exc
