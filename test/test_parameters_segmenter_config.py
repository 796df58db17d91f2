"""parameters.segmenter_config: node parameters -> SegmenterConfig (the one mapping), the Segmenter built from it."""

from __future__ import annotations

import pytest

from ttt_kd_ros.parameters.segmenter_config import segmenter_config_from_parameters, segmenter_from_parameters
from ttt_kd_ros.parameters.table import PARAMETERS, ParameterError, parameter_defaults


def test_segmenter_config_missing_names_take_the_node_defaults() -> None:
    config = segmenter_config_from_parameters({"cloud_topic": "/ignored"})
    defaults = parameter_defaults()
    assert (config.checkpoint, config.teacher, config.device) == (defaults["checkpoint"], defaults["teacher"],
                                                                  defaults["device"])
    assert config.max_points == defaults["max_points"] > 0 and config.teacher_resolution is None
    assert config.adapt.strategy == defaults["adapt.strategy"] and config.adapt.time_budget_s == 1.0
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
    segmenter = segmenter_from_parameters(None, "tiny", "cpu", {"teacher_resolution": 56, "adapt.strategy": "none"})
    assert segmenter.strategy.name == "none" and str(segmenter.device) == "cpu"


def test_retune_changes_steps_lr_budget_of_a_built_segmenter_between_scans() -> None:
    from ttt_kd_ros.parameters.segmenter_config import retune

    segmenter = segmenter_from_parameters(None, "tiny", "cpu", {"teacher_resolution": 56, "adapt.optimizer": "sgd",
                                                      "adapt.time_budget_s": 0.0})
    assert segmenter.strategy.config.time_budget_s is None
    config = retune(segmenter, {"adapt.steps": 4, "adapt.lr": 0.01, "adapt.time_budget_s": 0.5,
                                "adapt.kd_points_per_step": 64, "adapt.loss": "l2", "cloud_topic": "/ignored"})
    assert segmenter.strategy.config is config
    assert (config.steps, config.lr, config.time_budget_s, config.kd_points_per_step, config.loss) == (
        4, 0.01, 0.5, 64, "l2")
    assert all(group["lr"] == 0.01 for group in segmenter.strategy.optimizer.param_groups)
    with pytest.raises(ParameterError, match=r"parameter adapt\.lr"):
        retune(segmenter, {"adapt.lr": 0.0})
    assert segmenter.strategy.config.lr == 0.01  # a refused value changes nothing


def test_node_time_budget_default_is_bounded_and_engine_default_is_not() -> None:
    from ttt_kd_ros.adapt import AdaptConfig

    assert parameter_defaults()["adapt.time_budget_s"] == 1.0
    assert segmenter_config_from_parameters({}).adapt.time_budget_s == 1.0
    assert AdaptConfig().time_budget_s is None  # offline evaluation keeps its step counts machine-independent


def test_bn_train_parameter_reaches_the_strategy_and_refuses_strings() -> None:
    assert segmenter_config_from_parameters({}).adapt.bn_train is True
    assert segmenter_config_from_parameters({"adapt.bn_train": False}).adapt.bn_train is False
    with pytest.raises(ParameterError, match=r"adapt\.bn_train"):
        segmenter_config_from_parameters({"adapt.bn_train": "false"})


def test_tools_read_integers_for_double_parameters_as_doubles() -> None:
    """``-p adapt.time_budget_s:=0`` (YAML gives an int) on the tools' path: mapping, Segmenter, retune."""
    from ttt_kd_ros.parameters.segmenter_config import retune
    from ttt_kd_ros.tools.replay import parse_overrides

    overrides = parse_overrides(["adapt.time_budget_s:=0", "adapt.lr:=1", "fusion.weight_2d:=1"])
    assert overrides["adapt.time_budget_s"] == 0 and isinstance(overrides["adapt.time_budget_s"], int)
    config = segmenter_config_from_parameters(overrides)
    assert config.adapt.time_budget_s is None and config.adapt.lr == 1.0 and config.fusion.weight_2d == 1.0
    segmenter = segmenter_from_parameters(None, "tiny", "cpu", {"teacher_resolution": 56, **overrides})
    assert segmenter.strategy.config.time_budget_s is None
    changed = retune(segmenter, {"adapt.lr": 1, "adapt.time_budget_s": 2})
    assert (changed.lr, changed.time_budget_s) == (1.0, 2.0)
    assert isinstance(changed.lr, float) and isinstance(changed.time_budget_s, float)
    assert isinstance(retune(segmenter, {"adapt.steps": 3}).steps, int)  # integers stay integers


def test_prior_parameters_reach_the_engine_and_a_model_without_a_prior_refuses_them() -> None:
    from ttt_kd_ros.parameters.segmenter_config import retune

    config = segmenter_config_from_parameters({"adapt.prior_strength": 0.4, "adapt.prior_iterations": 3})
    assert (config.adapt.prior_strength, config.adapt.prior_iterations) == (0.4, 3)
    with pytest.raises(ParameterError, match=r"prior_iterations >= 1"):
        segmenter_config_from_parameters({"adapt.prior_iterations": 0})
    segmenter = segmenter_from_parameters(None, "tiny", "cpu", {"teacher_resolution": 56, "adapt.strategy": "none"})
    with pytest.raises(ParameterError, match="no class prior"):  # the untrained net has none
        retune(segmenter, {"adapt.prior_strength": 0.4})
    assert retune(segmenter, {"adapt.prior_iterations": 5}).prior_iterations == 5  # at strength 0: nothing to check
