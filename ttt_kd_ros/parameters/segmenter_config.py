"""Composition: node parameters -> SegmenterConfig -> Segmenter, the one mapping the node and the tools share.

Before, the node (ros/params.py) and the replay tool each mapped parameters
to a SegmenterConfig, with different defaults for names a params file left
out (teacher, device, max_points). Here a missing name takes the node's own
default (parameters.table.PARAMETERS), and engine errors are renamed to the
parameter (``AdaptConfig.lr`` -> ``parameter adapt.lr``). No rclpy: tools
import this without ROS.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ttt_kd_ros.adapt import AdaptConfig
from ttt_kd_ros.fusion import FusionConfig
from ttt_kd_ros.parameters.table import ParameterError, parameter_defaults, parameter_spec, widen_integer
from ttt_kd_ros.segmenter import Segmenter, SegmenterConfig


def engine_error_text(exc: Exception) -> str:
    """An engine ValueError in the node's parameter names (AdaptConfig.lr -> adapt.lr)."""
    return str(exc).replace("AdaptConfig.", "parameter adapt.").replace("SegmenterConfig.", "parameter ")


def _flag(value: Any, name: str) -> bool:
    """A boolean parameter: YAML and ros2 give bools; a string such as "false" is refused rather than read as True."""
    if isinstance(value, bool):
        return value
    raise ParameterError(f"parameter {name}: expected true or false, got {value!r}")


VALIDATED_PREFIXES = ("adapt.", "fusion.")
"""Parameters a checkpoint's validated settings may set (validated_settings.py)."""


def segmenter_config_from_parameters(values: Mapping[str, Any], given: Iterable[str] | None = None
                                     ) -> SegmenterConfig:
    """SegmenterConfig from flat node parameters (``adapt.steps`` style); a name not given takes the node default.

    ``given``: the adapt.* / fusion.* names the user set; every other one then takes the checkpoint's validated
    value (SegmenterConfig.given). None: the values are used as they are (``use_validated: false``). Other names
    (topics, cameras) are ignored. ParameterError (a ValueError) names the parameter when the engine refuses a
    value.
    """
    params = parameter_defaults()
    params.update(values)
    guard = float(params["adapt.guard_kd_ratio"] or 0.0)
    budget = float(params["adapt.time_budget_s"] or 0.0)
    resolution = params["teacher_resolution"] or None  # 0: the checkpoint's own
    if isinstance(resolution, list):  # (H, W) from a YAML list
        resolution = tuple(resolution)
    try:
        adapt = AdaptConfig(
            strategy=params["adapt.strategy"],
            steps=int(params["adapt.steps"]),
            optimizer=params["adapt.optimizer"],
            lr=float(params["adapt.lr"]),
            params=params["adapt.params"],
            bn_train=_flag(params["adapt.bn_train"], "adapt.bn_train"),
            kd_points_per_step=int(params["adapt.kd_points_per_step"]),
            crop_voxels=int(params["adapt.crop_voxels"]),
            crops_per_scan=int(params["adapt.crops_per_scan"]),
            guard_voxels=int(params["adapt.guard_voxels"]),
            loss=params["adapt.loss"],
            time_budget_s=budget if budget > 0 else None,
            seed=int(params["seed"]),
            guard_kd_ratio=guard if guard > 0 else None,
            unadapted_weight=float(params["adapt.unadapted_weight"]),
            guard_kd_max=float(params["adapt.guard_kd_max"]),
            prior_strength=float(params["adapt.prior_strength"]),
            prior_iterations=int(params["adapt.prior_iterations"]),
        )
        fusion = FusionConfig(params["fusion.mode"], float(params["fusion.weight_2d"]),
                              float(params["fusion.max_disagreement"]),
                              shift_slope_3d=float(params["fusion.shift_slope_3d"]),
                              shift_ref_3d=float(params["fusion.shift_ref_3d"]),
                              shift_slope_2d=float(params["fusion.shift_slope_2d"]),
                              shift_ref_2d=float(params["fusion.shift_ref_2d"]))
        explicit = None
        if given is not None and _flag(params["use_validated"], "use_validated"):
            explicit = tuple(n for n in given if n.startswith(VALIDATED_PREFIXES))
        return SegmenterConfig(
            checkpoint=params["checkpoint"] or None,
            teacher=params["teacher"],
            teacher_resolution=resolution,
            device=params["device"],
            amp=bool(params["amp"]),
            adapt=adapt,
            fusion=fusion,
            max_points=int(params["max_points"]),
            seed=int(params["seed"]),
            given=explicit,
        )
    except ValueError as exc:
        raise ParameterError(engine_error_text(exc)) from exc


@dataclass
class ModelChoice:
    """Checkpoint + teacher a tool runs, and whether they are the trained defaults.

    The teacher's input size is not chosen here: the checkpoint stores the one
    it was trained with, and the Segmenter uses it when none is given.
    """

    checkpoint: str
    teacher: str
    trained: bool


def default_model(sensor: str = "rgbd") -> ModelChoice:
    """The shipped checkpoint for ``sensor`` and the teacher when both are present, else an untrained net with the
    tiny teacher."""
    from ttt_kd_ros.checkpoints import default_checkpoint, default_teacher

    checkpoint, teacher = default_checkpoint(sensor), default_teacher()
    if checkpoint.is_file() and teacher.exists():
        return ModelChoice(str(checkpoint), str(teacher), True)
    return ModelChoice("", "tiny", False)


def segmenter_from_parameters(checkpoint: str | None, teacher: str, device: str,
                    parameters: Mapping[str, Any] | None = None) -> Segmenter:
    """A Segmenter from (checkpoint, teacher, device) plus any other node parameters, mapped as the node maps them;
    the adapt.* / fusion.* names not in ``parameters`` take the checkpoint's validated values, as on the node."""
    values = dict(parameters or {})
    values.update({"checkpoint": checkpoint or "", "teacher": teacher, "device": device})
    return Segmenter.from_config(segmenter_config_from_parameters(values, given=tuple(parameters or ())))


RUNTIME_ADAPT_FIELDS: dict[str, str] = {
    "adapt.steps": "steps",
    "adapt.lr": "lr",
    "adapt.kd_points_per_step": "kd_points_per_step",
    "adapt.loss": "loss",
    "adapt.time_budget_s": "time_budget_s",
    "adapt.prior_strength": "prior_strength",
    "adapt.prior_iterations": "prior_iterations",
}
"""Node parameters that retune a built Segmenter's strategy between scans: none of them changes which parameters
move or how the optimizer was built, so no rebuild (and no reload of the checkpoint) is needed."""


def retune(segmenter: Segmenter, values: Mapping[str, Any]) -> AdaptConfig:
    """Apply the RUNTIME_ADAPT_FIELDS in ``values`` to ``segmenter``'s strategy; call between scans only.

    Segmenter.retune applies them (the strategy knows where each value lives); an integer for a double is the
    double (``adapt.lr: 1``), as on the node; ParameterError (naming the parameter) when the engine refuses a value.
    """
    changes: dict[str, Any] = {}
    for name, field_name in RUNTIME_ADAPT_FIELDS.items():
        if name not in values:
            continue
        value = widen_integer(parameter_spec(name), values[name])
        if field_name == "time_budget_s":
            value = float(value) if value and float(value) > 0 else None
        changes[field_name] = value
    try:
        return segmenter.retune(**changes)
    except ValueError as exc:
        raise ParameterError(engine_error_text(exc)) from exc
