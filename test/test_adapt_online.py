"""TTT-KD-O: updates carry over between scans; the drift guard restores the source on poisoned scans."""

from __future__ import annotations

import pytest
from adapt_nets import TinyNet, make_scan, state_copy, states_equal

from ttt_kd_ros.adapt import AdaptConfig, TTTKDOnline


def _online(net: TinyNet, **overrides: object) -> TTTKDOnline:
    base = {"strategy": "ttt_kd_online", "steps": 3, "lr": 0.02, "kd_points_per_step": 64}
    base.update(overrides)
    return TTTKDOnline(net, AdaptConfig(**base))


def _warm_up(strategy: TTTKDOnline, scans: int = 6) -> None:
    for i in range(scans):
        result = strategy.adapt(*make_scan(seed=100 + i))
        assert not result.restored


def test_ttt_kd_online_keeps_updates_across_scans() -> None:
    net = TinyNet()
    strategy = _online(net)
    first = strategy.adapt(*make_scan(seed=1))
    after_first = state_copy(net)
    second = strategy.adapt(*make_scan(seed=2))
    assert not states_equal(state_copy(net), after_first)
    # The second scan starts from the first scan's weights, so its first loss is already lower.
    assert second.loss_before < first.loss_before
    assert strategy.scans_seen == 2 and strategy.running_loss is not None


def test_ttt_kd_online_guard_restores_on_nan_features() -> None:
    net = TinyNet()
    source = state_copy(net)
    strategy = _online(net)
    _warm_up(strategy, 2)
    prepared, targets = make_scan(seed=50)
    targets.features[:] = float("nan")
    result = strategy.adapt(prepared, targets)
    assert result.restored and result.steps_run == 0 and "drift guard" in result.reason
    assert states_equal(state_copy(net), source)
    assert strategy.resets == 1 and len(strategy.optimizer.state) == 0


def test_ttt_kd_online_guard_fires_on_negated_targets_relative_to_running_loss() -> None:
    net = TinyNet()
    source = state_copy(net)
    strategy = _online(net, guard_factor=2.0, guard_abs_max=10.0)
    _warm_up(strategy)
    prepared, targets = make_scan(seed=51)
    targets.features = -targets.features
    result = strategy.adapt(prepared, targets)
    assert result.restored and "running average" in result.reason
    assert states_equal(state_copy(net), source)
    assert strategy.running_loss is None and strategy.scans_seen == 0  # the guard warms up again on the source
    # A clean scan afterwards trains again from the source weights.
    clean = strategy.adapt(*make_scan(seed=52))
    assert not clean.restored and clean.steps_run == 3


def test_ttt_kd_online_guard_absolute_bound_applies_before_warmup() -> None:
    net = TinyNet()
    strategy = _online(net, guard_abs_max=0.5, guard_warmup_scans=100)
    result = strategy.adapt(*make_scan(seed=53))  # an untrained net's cosine distance is near 1
    assert result.restored and "guard_abs_max" in result.reason
    assert strategy.resets == 1


@pytest.mark.parametrize("scans", [1, 2])
def test_ttt_kd_online_relative_guard_waits_for_warmup(scans: int) -> None:
    net = TinyNet()
    strategy = _online(net, guard_factor=1.01, guard_abs_max=10.0, guard_warmup_scans=3)
    _warm_up(strategy, scans)
    prepared, targets = make_scan(seed=54)
    targets.features = -targets.features
    assert not strategy.adapt(prepared, targets).restored


def test_ttt_kd_online_guard_does_not_lock_out_after_restore() -> None:
    strategy = _online(TinyNet(), guard_factor=1.3, guard_abs_max=10.0, guard_warmup_scans=2)
    _warm_up(strategy)
    poisoned, targets = make_scan(seed=60)
    targets.features = -targets.features
    assert strategy.adapt(poisoned, targets).restored
    # The source weights' loss is far above the adapted running average; clean scans must still train.
    results = [strategy.adapt(*make_scan(seed=61 + i)) for i in range(4)]
    assert not any(r.restored for r in results)
    assert strategy.resets == 1
