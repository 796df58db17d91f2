"""compose: the one mapping from node parameters to SegmenterConfig, and the Segmenter tools build from it."""

from __future__ import annotations

import pytest

from ttt_kd_ros.compose import build_segmenter, segmenter_config_from_parameters
from ttt_kd_ros.node_parameters import PARAMETERS, ParameterError, parameter_defaults


def test_segmenter_config_missing_names_take_the_node_defaults() -> None:
    config = segmenter_config_from_parameters({"cloud_topic": "/ignored"})
    defaults = parameter_defaults()
    assert (config.checkpoint, config.teacher, config.device) == (defaults["checkpoint"], defaults["teacher"],
                                                                  defaults["device"])
    assert config.max_points == defaults["max_points"] > 0 and config.teacher_resolution is None
    assert config.adapt.strategy == defaults["adapt.strategy"] and config.adapt.time_budget_s is None
    assert set(defaults) == {spec.name for spec in PARAMETERS}


def test_segmenter_config_maps_given_values_and_yaml_forms() -> None:
    config = segmenter_config_from_parameters({"checkpoint": "", "teacher": "tiny", "device": "cpu",
                                               "teacher_resolution": [56, 84], "adapt.steps": 2,
                                               "adapt.time_budget_s": 0.5, "seed": 7})
    assert config.checkpoint is None and config.teacher_resolution == (56, 84)
    assert (config.adapt.steps, config.adapt.time_budget_s, config.adapt.seed, config.seed) == (2, 0.5, 7, 7)


def test_segmenter_config_names_the_parameter_the_engine_refuses() -> None:
    with pytest.raises(ParameterError, match=r"parameter adapt\.lr: expected > 0"):
        segmenter_config_from_parameters({"adapt.lr": -1.0})


def test_build_segmenter_from_checkpoint_teacher_device() -> None:
    segmenter = build_segmenter(None, "tiny", "cpu", {"teacher_resolution": 56, "adapt.strategy": "none"})
    assert segmenter.strategy.name == "none" and str(segmenter.device) == "cpu"
