"""AdaptConfig validation, the strategy table, and the three verbs (collect, configure, optimizer)."""

from __future__ import annotations

import pytest
import torch
from adapt_nets import TinyNet

from ttt_kd_ros.adapt import (
    STRATEGIES,
    TTTKD,
    AdaptConfig,
    BNStats,
    NoAdaptation,
    Tent,
    TTTKDOnline,
    build_strategy,
    collect_params,
    configure_model,
    make_optimizer,
)


def test_strategies_table_names_every_strategy_once() -> None:
    assert {"none": NoAdaptation, "ttt_kd": TTTKD, "ttt_kd_online": TTTKDOnline, "tent": Tent,
                          "bn_stats": BNStats} == STRATEGIES
    for name, cls in STRATEGIES.items():
        assert cls.name == name


@pytest.mark.parametrize(("field", "value"), [("strategy", "mae"), ("optimizer", "lbfgs"), ("params", "heads"),
                                              ("loss", "kl"), ("lr", 0.0), ("steps", -1), ("bn_momentum", 0.0),
                                              ("guard_factor", 1.0), ("time_budget_s", 0.0),
                                              ("time_budget_s", -1.0), ("time_budget_s", "fast")])
def test_adapt_config_rejects_bad_field_naming_it(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"AdaptConfig.*{field}"):
        AdaptConfig(**{field: value})


def test_collect_params_sets_are_nested_and_exclude_heads() -> None:
    net = TinyNet()
    all_params, all_names = collect_params(net, "all")
    norm_params, norm_names = collect_params(net, "norm")
    nd_params, nd_names = collect_params(net, "norm_decoder")
    assert len(all_params) == len(list(net.backbone.parameters())) == 8
    assert norm_names == ["backbone.encoder.1.weight", "backbone.encoder.1.bias", "backbone.decoder.1.weight",
                          "backbone.decoder.1.bias"]
    assert set(norm_names) < set(nd_names) < set(all_names)
    assert all(n.startswith("backbone.decoder") or n.startswith("backbone.encoder.1") for n in nd_names)
    head_ids = {id(p) for p in [*net.seg_head.parameters(), *net.kd_head.parameters()]}
    assert not head_ids & {id(p) for p in all_params + norm_params + nd_params}


def test_collect_params_norm_decoder_without_decoder_names_prefixes() -> None:
    net = TinyNet()
    net.backbone.decoder_prefixes = ("head_of_decoder",)
    with pytest.raises(ValueError, match="decoder prefix"):
        collect_params(net, "norm_decoder")


def test_configure_model_freezes_all_but_params_and_sets_modes() -> None:
    net = TinyNet()
    params, _ = collect_params(net, "norm")
    configure_model(net, params, bn_train=False)
    assert {id(p) for p in net.parameters() if p.requires_grad} == {id(p) for p in params}
    assert not any(m.training for m in net.modules())
    configure_model(net, params, bn_train=True)
    assert net.backbone.encoder[1].training and not net.backbone.encoder[0].training


@pytest.mark.parametrize(("name", "cls"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                           ("sgd", torch.optim.SGD)])
def test_make_optimizer_builds_named_class_with_lr(name: str, cls: type) -> None:
    net = TinyNet()
    opt = make_optimizer(list(net.parameters()), AdaptConfig(optimizer=name, lr=0.03))
    assert type(opt) is cls and opt.param_groups[0]["lr"] == 0.03


def test_build_strategy_returns_configured_class() -> None:
    strategy = build_strategy(TinyNet(), AdaptConfig(strategy="ttt_kd_online", steps=1))
    assert isinstance(strategy, TTTKDOnline) and not strategy.episodic


def test_a_time_budget_is_set_and_unset_from_the_command_line_syntax() -> None:
    """--row / --adapt edit AdaptConfig as data: an optional field takes a number, and null unsets it again."""
    from ttt_kd_ros.config_edits import apply_overrides

    budgeted = apply_overrides(AdaptConfig(), "time_budget_s=0.5,steps=1000", "--row b05")
    assert (budgeted.time_budget_s, budgeted.steps) == (0.5, 1000)
    assert apply_overrides(budgeted, "time_budget_s=null", "--row x").time_budget_s is None
    with pytest.raises(ValueError, match="field 'steps': expected a number"):
        apply_overrides(AdaptConfig(), "steps=null", "--row x")
    with pytest.raises(ValueError, match="time_budget_s"):
        apply_overrides(AdaptConfig(), "time_budget_s=-2", "--row x")
