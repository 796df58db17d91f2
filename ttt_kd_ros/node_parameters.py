"""The node's parameters as data: names, defaults, descriptions, allowed values, and their check.

No rclpy here: ros/params.py declares these on the node, compose.py maps
them to a SegmenterConfig, and tools (replay, demo) read the same defaults,
so the node, its params file and the tools cannot disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ttt_kd_ros.adapt import OPTIMIZERS, PARAM_SETS, STRATEGIES, AdaptConfig
from ttt_kd_ros.losses import KD_LOSS_KINDS

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


def check_value(spec: ParamSpec, value: Any) -> Any:
    """``value`` when it fits the spec (choices, pattern, minimum); ParameterError naming the parameter otherwise."""
    if spec.choices and value not in spec.choices:
        raise ParameterError(f"parameter {spec.name}: expected one of {list(spec.choices)}, got {value!r}")
    if spec.pattern and not re.fullmatch(spec.pattern, str(value)):
        raise ParameterError(f"parameter {spec.name}: expected {spec.pattern!r}, got {value!r}")
    if spec.minimum is not None and value < spec.minimum:
        raise ParameterError(f"parameter {spec.name}: expected >= {spec.minimum}, got {value!r}")
    return value


def parameter_defaults() -> dict[str, Any]:
    """Flat name -> default of every node parameter (``adapt.steps`` style names)."""
    return {spec.name: spec.default for spec in PARAMETERS}
