"""The node's parameters as data: names, defaults, descriptions, allowed values, and their check.

No rclpy here: ros/params.py declares these on the node, parameters/segmenter_config.py maps
them to a SegmenterConfig, and tools (replay, demo) read the same defaults,
so the node, its params file and the tools cannot disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ttt_kd_ros.adapt import OPTIMIZERS, PARAM_SETS, STRATEGIES, AdaptConfig
from ttt_kd_ros.fusion import FUSION_MODES
from ttt_kd_ros.losses import KD_LOSS_KINDS

NODE_NAME = "ttt_kd_segmenter"


class ParameterError(ValueError):
    """A parameter has a value the node cannot run with; the message names it."""


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: default, description, allowed values, and whether ``ros2 param set`` may change it."""

    name: str
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    pattern: str = ""  # full-match regular expression for strings
    maximum: float | None = None
    runtime: bool = False  # settable on a running node (applied between scans); False: read once at configure


MODES = ("adapt", "cloud_only")
OUTPUT_LAYOUTS = ("dense", "organized")
_ADAPT = AdaptConfig()  # the engine's defaults are the node's defaults: one source of truth
NODE_TIME_BUDGET_S = 1.0
"""The node's adaptation budget per scan (s): bounds a scan's cost on a robot. Offline tools keep AdaptConfig's
own default (no budget), so their step counts do not depend on the machine's load."""

PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("cloud_topic", "points", "PointCloud2 input (sensor-data QoS)."),
    ParamSpec("output_topic", "~/labeled_points", "Labeled PointCloud2 output (RELIABLE), same header as the input."),
    ParamSpec("output_layout", "dense", "dense: one output point per valid input point (height 1); organized: the "
              "input's height x width, invalid or thinned points with NaN x/y/z and label 65535.",
              choices=OUTPUT_LAYOUTS),
    ParamSpec("output_min_confidence", 0.0, "Points whose confidence is below this get the ignore label (65535, "
              "black) in the output; 0 keeps every label.", minimum=0.0, maximum=1.0, runtime=True),
    ParamSpec("skip_without_subscriber", True, "While nothing subscribes to the output, clouds are refused on "
              "arrival (skipped.no_subscriber) when the strategy keeps nothing between scans (per-scan ttt_kd, tent, "
              "bn_stats, none); an online strategy (ttt_kd_online) segments on, since every scan moves its weights."),
    ParamSpec("mode", "adapt", "adapt: pair clouds with the cameras and adapt; cloud_only: ignore cameras, no "
              "adaptation. With no cameras listed the node runs cloud_only.", choices=MODES),
    ParamSpec("sync_queue_size", 10, "Messages kept per input by the approximate-time synchroniser; a cloud "
              "pushed out unmatched is segmented alone.", minimum=1),
    ParamSpec("sync_slop_s", 0.05, "Largest stamp difference (s) between a cloud and its images.", minimum=0.0),
    ParamSpec("camera_timeout_s", 2.0, "A cloud its images have not matched within this long (s), while a listed "
              "camera has been silent this long, is segmented alone (no adaptation); 0 waits for ever.",
              minimum=0.0, runtime=True),
    ParamSpec("max_cloud_age_s", 0.0, "Refuse clouds whose stamp is older than now minus this (s); 0 accepts any.",
              minimum=0.0, runtime=True),
    ParamSpec("max_future_s", 0.0, "Refuse clouds stamped more than this (s) after now; 0 accepts any.", minimum=0.0,
              runtime=True),
    ParamSpec("tf_tolerance_s", 0.1, "When tf has no transform at the cloud's stamp, the latest one is used if it is "
              "stamped within this (s) of the cloud; 0: exact stamps only.", minimum=0.0),
    ParamSpec("diagnostics_period_s", 1.0, "Period (s) of the /diagnostics message.", minimum=0.01),
    ParamSpec("late_scan_s", 0.0, "A scan whose processing time (arrival at the node to its output published) "
              "exceeds this (s) is late: /diagnostics is WARN while the last scan was late; 0: off.", minimum=0.0,
              runtime=True),
    ParamSpec("late_scans_error", 5, "/diagnostics is ERROR once this many scans in a row were late (with "
              "late_scan_s > 0).", minimum=1, runtime=True),
    ParamSpec("checkpoint", "builtin", "Model checkpoint (.safetensors); 'builtin' or 'builtin:rgbd': the RGB-D "
              "model shipped with the package, 'builtin:lidar': the shipped LiDAR model; empty: an untrained "
              "network (plumbing tests only)."),
    ParamSpec("teacher", "builtin", "2D teacher: 'builtin' (the shipped stand-in the builtin model was trained "
              "with), a Hugging Face DINOv2 folder, a cached hub id, a dinov2_vit*14_pretrain.pth file, or 'tiny' "
              "(random weights, tests)."),
    ParamSpec("teacher_resolution", 0, "Shorter image side (px) fed to the teacher; 0: the checkpoint's.",
              minimum=0),
    ParamSpec("device", "auto", "Torch device: auto (cuda when available), cpu, cuda or cuda:<index>.",
              pattern=r"auto|cpu|cuda(:\d+)?"),
    ParamSpec("amp", False, "Mixed precision on CUDA."),
    ParamSpec("threads", 0, "CPU threads torch uses (torch.set_num_threads); 0: torch's default.", minimum=0),
    ParamSpec("max_points", 150000, "Points the network sees per scan (a random subset beyond it); every input "
              "point is still labelled from its voxel. 0: no cap.", minimum=0),
    ParamSpec("max_input_points", 1000000, "Clouds larger than this are randomly thinned on arrival (memory, "
              "latency and output size stay bounded); the output then has this many points. 0: no cap.",
              minimum=0),
    ParamSpec("seed", 0, "Seed for point sampling and the tiny models."),
    ParamSpec("warm_up", True, "At the first activation after configure, run one synthetic scan (with a camera "
              "when cameras are listed, at most one step) through the engine and restore the strategy, so the first "
              "real scan does not pay for lazy initialisation."),
    ParamSpec("adapt.strategy", _ADAPT.strategy, "Adaptation per scan (TTT-KD resets the weights every scan, "
              "ttt_kd_online keeps them).", choices=tuple(STRATEGIES)),
    ParamSpec("adapt.steps", _ADAPT.steps, "Gradient steps per scan.", minimum=0, maximum=1000, runtime=True),
    ParamSpec("adapt.optimizer", _ADAPT.optimizer, "Optimizer of the test-time steps.", choices=OPTIMIZERS),
    ParamSpec("adapt.lr", _ADAPT.lr, "Learning rate of the test-time steps (> 0).", minimum=0.0, maximum=1.0,
              runtime=True),
    ParamSpec("adapt.params", _ADAPT.params, "Backbone parameters updated at test time.", choices=PARAM_SETS),
    ParamSpec("adapt.bn_train", _ADAPT.bn_train, "Normalise with the scan's own batch statistics during the "
              "TTT-KD steps (the RGB-D model's setting); false keeps the running statistics (the LiDAR model's: "
              "docs/EVALUATION.md)."),
    ParamSpec("adapt.kd_points_per_step", _ADAPT.kd_points_per_step, "Visible points sampled per KD step; 0: all.",
              minimum=0, runtime=True),
    ParamSpec("adapt.crop_voxels", _ADAPT.crop_voxels, "TTT-KD steps run on crops of at most this many voxels "
              "where the cameras see (the final forward covers the whole scan), so a step's cost does not grow with "
              "the scan; 0: every step on the whole scan.", minimum=0),
    ParamSpec("adapt.crops_per_scan", _ADAPT.crops_per_scan, "Different crops per scan, cycled over its steps.",
              minimum=1),
    ParamSpec("adapt.guard_voxels", _ADAPT.guard_voxels, "When steps run on crops, the output guard measures the KD "
              "loss before and after them on at least this many voxels around the first crop (a small crop's few "
              "targets judge an adaptation too noisily).", minimum=0),
    ParamSpec("adapt.loss", _ADAPT.loss, "KD loss form.", choices=KD_LOSS_KINDS, runtime=True),
    ParamSpec("adapt.guard_kd_ratio", 0.0, "Keep a scan's adapted labels only when its KD loss over the visible "
              "points fell below this fraction of the unadapted one, else publish the unadapted labels; 0: no "
              "guard.", minimum=0.0, maximum=1.0),
    ParamSpec("adapt.unadapted_weight", 0.0, "Weight of the unadapted prediction averaged into the adapted one.",
              minimum=0.0, maximum=0.99),
    ParamSpec("adapt.guard_kd_max", 0.0, "Run no step on a scan whose unadapted KD loss over the visible points is "
              "above this (its targets are unlike any the network learnt: blurred or blocky images); 0: no "
              "ceiling.", minimum=0.0, maximum=2.0),
    ParamSpec("adapt.prior_strength", _ADAPT.prior_strength, "Label-shift correction of the output: each class's "
              "probability times (the scan's share of points labelled that class / the model's source share) to "
              "this power, so classes the scan lacks stop collecting its uncertain points (adapt/class_prior.py; "
              "needs the checkpoint's class prior); 0: off.", minimum=0.0, maximum=1.0, runtime=True),
    ParamSpec("adapt.prior_iterations", _ADAPT.prior_iterations, "Rounds of the scan's class-share estimate, each "
              "relabelling the scan with the last round's weights.", minimum=1, maximum=20, runtime=True),
    ParamSpec("fusion.mode", "off", "On points a camera sees, combine the 3D prediction with the teacher's "
              "(the checkpoint's fusion head): off, mean, entropy or geometric (docs/ADAPTATION.md).",
              choices=FUSION_MODES),
    ParamSpec("fusion.weight_2d", 0.5, "The teacher's share in the fusion (0-1).", minimum=0.0, maximum=1.0),
    ParamSpec("fusion.max_disagreement", 1.0, "Withhold the teacher on a scan whose class mix (labels of its head "
              "on the visible points) differs from the 3D one by more than this total-variation distance; 1: "
              "never.", minimum=0.01, maximum=1.0),
    ParamSpec("fusion.shift_slope_3d", 0.0, "The teacher's share rises by this per unit of the 3D network's input "
              "shift (batch-norm variance, shift.py) above fusion.shift_ref_3d; 0: not read.", minimum=0.0,
              maximum=10.0),
    ParamSpec("fusion.shift_ref_3d", 0.0, "The model's in-distribution 3D input shift (the checkpoint's).",
              minimum=0.0, maximum=10.0),
    ParamSpec("fusion.shift_slope_2d", 0.0, "The teacher's share falls by this per unit of the teacher's feature "
              "shift (norm of the scan's mean centred feature, shift.py) above fusion.shift_ref_2d; 0: not read.",
              minimum=0.0, maximum=10.0),
    ParamSpec("fusion.shift_ref_2d", 0.0, "The model's in-distribution teacher feature shift (the checkpoint's).",
              minimum=0.0, maximum=10.0),
    ParamSpec("use_validated", True, "Start from the checkpoint's validated adaptation and fusion settings; each "
              "adapt.* / fusion.* parameter given in a params file or with -p overrides its value. false: the "
              "declared defaults above."),
    ParamSpec("adapt.time_budget_s", NODE_TIME_BUDGET_S, "Bound on a scan's time (s) from its arrival at the "
              "engine: steps stop so that the final forward (as long as the last one) still fits; 0: no limit.",
              minimum=0.0, runtime=True),
)
"""Every runtime entry is applied between scans; the others are read once at configure (declared read-only)."""

CAMERA_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("image_topic", "{name}/image_raw", "Image topic (rgb8, bgr8, rgba8, bgra8, mono8)."),
    ParamSpec("info_topic", "{name}/camera_info", "CameraInfo topic of the same camera."),
    ParamSpec("frame_id", "", "Camera frame for tf lookups (cloud frame -> this frame at the cloud stamp); empty: "
              "the Image header's frame_id."),
    ParamSpec("parent_frame", "", "The frame the extrinsics parameter is given in (static_transform_publisher's "
              "--frame-id); used only for clouds with this header.frame_id. Required with extrinsics."),
)
CAMERA_EXTRINSICS = "extrinsics"
CAMERA_EXTRINSICS_DESCRIPTION = (
    "x y z qx qy qz qw: the camera frame's pose in parent_frame (metres, unit quaternion), the numbers "
    "static_transform_publisher takes for --frame-id <parent_frame> --child-frame-id <camera frame>. Unset: tf."
)
OLD_CAMERA_EXTRINSICS = "cam_from_cloud"
"""The extrinsics parameter of earlier versions (the inverse direction); refused with its conversion."""

def check_value(spec: ParamSpec, value: Any) -> Any:
    """``value`` when it fits the spec (choices, pattern, minimum); ParameterError naming the parameter otherwise."""
    if spec.choices and value not in spec.choices:
        raise ParameterError(f"parameter {spec.name}: expected one of {list(spec.choices)}, got {value!r}")
    if spec.pattern and not re.fullmatch(spec.pattern, str(value)):
        raise ParameterError(f"parameter {spec.name}: expected {spec.pattern!r}, got {value!r}")
    if spec.minimum is not None and value < spec.minimum:
        raise ParameterError(f"parameter {spec.name}: expected >= {spec.minimum}, got {value!r}")
    if spec.maximum is not None and value > spec.maximum:
        raise ParameterError(f"parameter {spec.name}: expected <= {spec.maximum}, got {value!r}")
    return value


def widen_integer(spec: ParamSpec, value: Any) -> Any:
    """An integer given for a double parameter, as the double it stands for (``0`` for ``0.0``); else ``value``.

    WHY: YAML, ``-p adapt.time_budget_s:=0`` and ``ros2 param set ... 3`` give integers for doubles. The node
    widens them (ros/params.py); a tool's path must read them the same way instead of carrying an int into a
    float field.
    """
    if isinstance(spec.default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def parameter_defaults() -> dict[str, Any]:
    """Flat name -> default of every node parameter (``adapt.steps`` style names)."""
    return {spec.name: spec.default for spec in PARAMETERS}


RUNTIME_PARAMETERS: frozenset[str] = frozenset(spec.name for spec in PARAMETERS if spec.runtime)


def parameter_spec(name: str) -> ParamSpec:
    """The spec of node parameter ``name``; KeyError when the node has none by that name."""
    for spec in PARAMETERS:
        if spec.name == name:
            return spec
    raise KeyError(name)
