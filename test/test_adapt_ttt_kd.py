"""TTT-KD per scan: k KD steps lower the loss, reset() restores bit-exactly, budgets and bad data."""

from __future__ import annotations

import time

import pytest
import torch
from adapt_nets import TinyNet, TinyTargets, make_scan, state_copy, states_equal

from ttt_kd_ros.adapt import TTTKD, AdaptConfig
from ttt_kd_ros.losses import kd_loss


def _full_kd_loss(net: TinyNet, prepared: torch.Tensor, targets: TinyTargets) -> float:
    net.eval()
    with torch.no_grad():
        return kd_loss(net(prepared).kd[targets.point_index], targets.features).item()


def _config(**overrides: object) -> AdaptConfig:
    base = {"strategy": "ttt_kd", "steps": 5, "lr": 0.02, "kd_points_per_step": 64}
    base.update(overrides)
    return AdaptConfig(**base)


def test_ttt_kd_steps_lower_kd_loss_on_scan(device: torch.device) -> None:
    net = TinyNet().to(device)
    prepared, targets = make_scan(seed=1)
    prepared, targets = prepared.to(device), TinyTargets(targets.point_index.to(device), targets.features.to(device))
    before = _full_kd_loss(net, prepared, targets)
    result = TTTKD(net, _config()).adapt(prepared, targets)
    after = _full_kd_loss(net, prepared, targets)
    assert result.steps_run == 5 and not result.stopped_early and result.reason == ""
    assert after < before - 0.05
    assert result.loss_after < result.loss_before
    assert len(result.step_times_s) == 5


def test_ttt_kd_updates_backbone_only() -> None:
    net = TinyNet()
    heads = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("backbone")}
    source_backbone = net.backbone.encoder[0].weight.detach().clone()
    TTTKD(net, _config()).adapt(*make_scan(seed=1))
    assert all(torch.equal(net.state_dict()[k], v) for k, v in heads.items())
    assert not torch.equal(net.backbone.encoder[0].weight, source_backbone)


@pytest.mark.parametrize("bn_train", [False, True])
def test_ttt_kd_reset_restores_weights_buffers_and_optimizer_bit_exactly(bn_train: bool, device: torch.device) -> None:
    net = TinyNet().to(device)
    source = state_copy(net)
    strategy = TTTKD(net, _config(bn_train=bn_train))
    prepared, targets = make_scan(seed=2)
    prepared, targets = prepared.to(device), TinyTargets(targets.point_index.to(device), targets.features.to(device))
    strategy.adapt(prepared, targets)
    strategy.predict(prepared)
    adapted = state_copy(net)
    assert not states_equal(adapted, source)
    strategy.reset()
    assert states_equal(state_copy(net), source)
    assert len(strategy.optimizer.state) == 0
    # A second pass over the same scan retraces the first one exactly: sampler and moments were reset too.
    strategy.adapt(prepared, targets)
    assert states_equal(state_copy(net), adapted)


def test_ttt_kd_adapt_restores_itself_when_caller_skips_reset() -> None:
    net = TinyNet()
    strategy = TTTKD(net, _config())
    scan_a, scan_b = make_scan(seed=3), make_scan(seed=4)
    strategy.adapt(*scan_a)
    after_a = state_copy(net)
    strategy.adapt(*scan_b)
    strategy.adapt(*scan_a)
    assert states_equal(state_copy(net), after_a)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_ttt_kd_adapts_inside_no_grad_caller(context: type) -> None:
    net = TinyNet()
    prepared, targets = make_scan(seed=5)
    before = _full_kd_loss(net, prepared, targets)
    with context():
        result = TTTKD(net, _config()).adapt(prepared, targets)
    assert result.steps_run == 5
    assert _full_kd_loss(net, prepared, targets) < before


class _SlowNet(TinyNet):
    def backbone_features(self, prepared: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return super().backbone_features(prepared)


def test_ttt_kd_time_budget_stops_before_overrunning_step() -> None:
    strategy = TTTKD(_SlowNet(), _config(steps=20, time_budget_s=0.18))
    result = strategy.adapt(*make_scan(seed=6))
    assert result.stopped_early and "time budget" in result.reason
    assert 1 <= result.steps_run < 20
    # Every step but the last one started inside the budget (a step can only overrun by its own jitter).
    assert sum(result.step_times_s[:-1]) <= 0.18


def test_ttt_kd_budget_uses_the_previous_scans_step_time_for_the_first_step() -> None:
    strategy = TTTKD(_SlowNet(), _config(steps=2))
    strategy.adapt(*make_scan(seed=6))  # measures its steps: at least 0.05 s each
    assert strategy.expected_step_s is not None and strategy.expected_step_s >= 0.05
    result = strategy.adapt(*make_scan(seed=6), time_budget_s=0.03)
    assert result.steps_run == 0 and "time budget" in result.reason  # a first step that cannot fit never starts


def test_unadapted_swaps_the_source_weights_in_and_the_adapted_ones_back() -> None:
    """Inside ``unadapted()`` the net holds its source tensors; after it, the adapted ones, bit for bit, with the
    optimizer's moments untouched: the guard labels with the source weights and a steps curve goes on adapting."""
    net = TinyNet()
    source = state_copy(net)
    strategy = TTTKD(net, _config(steps=3, lr=1e-1))
    strategy.adapt(*make_scan(seed=6))
    adapted = state_copy(net)
    moments = {id(p): {k: v.clone() for k, v in st.items()} for p, st in strategy.optimizer.state.items()}
    assert not states_equal(adapted, source)
    with strategy.unadapted():
        assert states_equal(state_copy(net), source)
    assert states_equal(state_copy(net), adapted)
    assert all(torch.equal(v, moments[id(p)][k]) for p, st in strategy.optimizer.state.items() for k, v in st.items())


def test_ttt_kd_zero_budget_runs_no_step_and_keeps_weights() -> None:
    net = TinyNet()
    source = state_copy(net)
    result = TTTKD(net, _config()).adapt(*make_scan(seed=6), time_budget_s=0.0)
    assert result.steps_run == 0 and result.stopped_early
    assert states_equal(state_copy(net), source)


def test_ttt_kd_nan_targets_restore_source_and_report() -> None:
    net = TinyNet()
    source = state_copy(net)
    prepared, targets = make_scan(seed=7)
    targets.features[0] = float("nan")
    strategy = TTTKD(net, _config(kd_points_per_step=0))
    result = strategy.adapt(prepared, targets)
    assert result.restored and result.steps_run == 0 and "non-finite" in result.reason
    assert states_equal(state_copy(net), source)
    assert strategy.resets == 1


def test_ttt_kd_no_visible_points_skips() -> None:
    net = TinyNet()
    prepared, _ = make_scan(seed=8)
    empty = TinyTargets(torch.zeros(0, dtype=torch.long), torch.zeros(0, 8))
    result = TTTKD(net, _config()).adapt(prepared, empty)
    assert result.steps_run == 0 and result.reason == "no visible points"


def test_ttt_kd_rejects_mismatched_targets() -> None:
    prepared, targets = make_scan(seed=9)
    bad = TinyTargets(targets.point_index, targets.features[:-1])
    with pytest.raises(ValueError, match="point indices"):
        TTTKD(TinyNet(), _config()).adapt(prepared, bad)
