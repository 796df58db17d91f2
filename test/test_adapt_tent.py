"""TENT: entropy falls, only normalisation affine parameters move, reset restores them."""

from __future__ import annotations

import torch
from adapt_nets import TinyNet, make_scan, state_copy, states_equal

from ttt_kd_ros.adapt import AdaptConfig, Tent
from ttt_kd_ros.losses import entropy_loss


def _tent(net: TinyNet, **overrides: object) -> Tent:
    base = {"strategy": "tent", "steps": 5, "lr": 0.05}
    base.update(overrides)
    return Tent(net, AdaptConfig(**base))


def test_tent_lowers_entropy_of_predictions() -> None:
    net = TinyNet()
    strategy = _tent(net)
    prepared, _ = make_scan(seed=1)
    before = entropy_loss(strategy.predict(prepared).logits).item()
    result = strategy.adapt(prepared)
    after = entropy_loss(strategy.predict(prepared).logits).item()
    assert result.steps_run == 5 and result.loss_after < result.loss_before
    assert after < before


def test_tent_moves_only_norm_affine_and_reset_restores() -> None:
    net = TinyNet()
    source = state_copy(net)
    strategy = _tent(net)
    prepared, _ = make_scan(seed=2)
    strategy.adapt(prepared)
    strategy.predict(prepared)
    now = state_copy(net)
    changed = {k for k in source if not torch.equal(source[k], now[k])}
    affine = {"backbone.encoder.1.weight", "backbone.encoder.1.bias", "backbone.decoder.1.weight",
              "backbone.decoder.1.bias"}
    assert affine <= changed
    assert all(k in affine or "running" in k or "num_batches" in k for k in changed)
    strategy.reset()
    assert states_equal(state_copy(net), source)


def test_tent_online_accumulates_and_per_scan_does_not() -> None:
    prepared, _ = make_scan(seed=3)
    results = {}
    for per_scan in (True, False):
        strategy = _tent(TinyNet(), reset_per_scan=per_scan)
        strategy.adapt(prepared)
        results[per_scan] = strategy.adapt(prepared).loss_before
    first = _tent(TinyNet()).adapt(prepared).loss_before
    assert results[True] == first
    assert results[False] < first


def test_tent_adapts_inside_no_grad_caller() -> None:
    prepared, _ = make_scan(seed=4)
    with torch.no_grad():
        result = _tent(TinyNet()).adapt(prepared)
    assert result.steps_run == 5 and result.loss_after < result.loss_before
