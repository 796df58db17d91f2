"""BN-stats (DUA-style): running statistics move towards the scan's, weights never change."""

from __future__ import annotations

import pytest
import torch
from adapt_nets import TinyNet, make_scan, state_copy, states_equal

from ttt_kd_ros.adapt import AdaptConfig, BNStats


def _bn_stats(net: TinyNet, **overrides: object) -> BNStats:
    base = {"strategy": "bn_stats", "steps": 1, "bn_momentum": 0.25}
    base.update(overrides)
    return BNStats(net, AdaptConfig(**base))


def test_bn_stats_changes_running_stats_not_weights() -> None:
    net = TinyNet()
    source = state_copy(net)
    result = _bn_stats(net, steps=3).adapt(make_scan(seed=1)[0])
    now = state_copy(net)
    changed = {k for k in source if not torch.equal(source[k], now[k])}
    assert result.steps_run == 3
    assert {"backbone.encoder.1.running_mean", "backbone.decoder.1.running_var"} <= changed
    assert all("running" in k or "num_batches" in k for k in changed)


def test_bn_stats_one_pass_mixes_source_and_scan_by_momentum() -> None:
    net = TinyNet()
    prepared, _ = make_scan(seed=2)
    source_mean = net.backbone.encoder[1].running_mean.clone()
    with torch.no_grad():
        batch_mean = net.backbone.encoder[0](prepared).mean(dim=0)
    _bn_stats(net, bn_momentum=0.25).adapt(prepared)
    expected = 0.75 * source_mean + 0.25 * batch_mean
    torch.testing.assert_close(net.backbone.encoder[1].running_mean, expected)
    assert net.backbone.encoder[1].momentum == pytest.approx(0.1)  # the module's own momentum is put back
    assert not net.backbone.encoder[1].training


def test_bn_stats_per_scan_resets_and_online_accumulates() -> None:
    prepared, _ = make_scan(seed=3)
    means = {}
    for per_scan in (True, False):
        net = TinyNet()
        strategy = _bn_stats(net, reset_per_scan=per_scan)
        strategy.adapt(prepared)
        once = net.backbone.encoder[1].running_mean.clone()
        strategy.adapt(prepared)
        means[per_scan] = (once, net.backbone.encoder[1].running_mean.clone())
    assert torch.equal(*means[True])
    assert not torch.equal(*means[False])


def test_bn_stats_reset_restores_source_bit_exactly() -> None:
    net = TinyNet()
    source = state_copy(net)
    strategy = _bn_stats(net, steps=2)
    strategy.adapt(make_scan(seed=4)[0])
    assert not states_equal(state_copy(net), source)  # something to restore
    strategy.reset()
    assert states_equal(state_copy(net), source)


def test_bn_stats_prediction_changes_under_shift() -> None:
    net = TinyNet()
    strategy = _bn_stats(net, steps=5, bn_momentum=0.5)
    prepared, _ = make_scan(seed=5)
    before = strategy.predict(prepared).logits
    strategy.adapt(prepared)
    after = strategy.predict(prepared).logits
    assert not torch.allclose(before, after)
