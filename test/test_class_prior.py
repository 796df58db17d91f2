"""The label-shift correction of the output (adapt/class_prior.py): what it moves, what it keeps, where it runs."""

from __future__ import annotations

import dataclasses
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_fusion import _net, _scan, _teacher

from ttt_kd_ros.adapt import AdaptConfig, build_strategy
from ttt_kd_ros.adapt.class_prior import RATIO_FLOOR, reweight, scan_class_weights
from ttt_kd_ros.checkpoint_format import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from ttt_kd_ros.fusion import FusionConfig
from ttt_kd_ros.model import NetConfig
from ttt_kd_ros.segmenter import Segmenter

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _rows(*groups: tuple[int, list[float]]) -> torch.Tensor:
    return torch.tensor([row for count, row in groups for _ in range(count)], dtype=torch.float64)


def test_correction_moves_uncertain_points_to_the_classes_the_scan_holds_and_keeps_a_confident_one() -> None:
    # a scan of classes 0 and 1; five points hesitate between 1 and the rare class 3, one point is surely 2
    probs = _rows((60, [0.80, 0.10, 0.05, 0.05]), (40, [0.10, 0.70, 0.10, 0.10]), (5, [0.05, 0.44, 0.05, 0.46]),
                  (1, [0.03, 0.04, 0.90, 0.03]))
    source = torch.full((4,), 0.25, dtype=torch.float64)
    assert probs.argmax(dim=1)[100:105].eq(3).all()  # uncorrected, the hesitant points go to class 3
    weights = scan_class_weights(probs, source, strength=0.4, iterations=2)
    corrected = reweight(probs, weights)
    labels = corrected.argmax(dim=1)
    assert labels[:60].eq(0).all() and labels[60:105].eq(1).all()  # the hesitant points join the scan's class 1
    assert labels[105] == 2  # one confident point of a class the scan otherwise lacks is not vetoed
    assert weights[0] > 1 and weights[1] > 1 and weights[3] < 1
    assert torch.allclose(corrected.sum(dim=1), torch.ones(len(probs), dtype=torch.float64))


def test_zero_strength_an_empty_scan_and_the_floor() -> None:
    probs = _rows((10, [0.9, 0.1, 0.0]))
    source = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    assert torch.equal(scan_class_weights(probs, source, 0.0, 2), torch.ones(3, dtype=torch.float64))
    assert torch.equal(scan_class_weights(probs[:0], source, 0.4, 2), torch.ones(3, dtype=torch.float64))
    weights = scan_class_weights(probs, source, 0.4, 3)  # classes 1 and 2 are labelled nowhere
    assert torch.allclose(weights[1:], torch.full((2,), RATIO_FLOOR ** 0.4, dtype=torch.float64))
    assert torch.isclose(weights[0], torch.tensor(5.0 ** 0.4, dtype=torch.float64))  # share 1 over source 0.2


def test_net_config_checks_the_class_prior_and_a_checkpoint_keeps_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="class_prior"):
        NetConfig(num_classes=2, label_set="custom", class_prior=(0.5, 0.6))
    with pytest.raises(ValueError, match="class_prior"):
        NetConfig(num_classes=2, label_set="custom", class_prior=(1.0, 0.0))
    model = _net()
    model.config = dataclasses.replace(model.config, class_prior=(1 / 11,) * 11)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    assert load_checkpoint(path).config.class_prior == (1 / 11,) * 11
    assert load_checkpoint(save_checkpoint(_net(), tmp_path / "old.safetensors")).config.class_prior == ()


def _prior_segmenter(strength: float, prior: tuple[float, ...] = ()) -> Segmenter:
    model = _net()
    model.config = dataclasses.replace(model.config, class_prior=prior)
    config = AdaptConfig(strategy="none", prior_strength=strength)
    return Segmenter(model, _teacher(), build_strategy(model, config), fusion=FusionConfig("off"))


def test_segmenter_labels_a_scan_with_the_corrected_probabilities() -> None:
    # a prior that says class 0 is nearly everything at the source: the scan's own mix then lifts the others
    prior = (0.9,) + (0.01,) * 10
    scan = _scan()
    plain = _prior_segmenter(0.0, prior).segment(scan)
    segmenter = _prior_segmenter(0.5, prior)
    corrected = segmenter.segment(scan)
    with torch.no_grad():
        model = segmenter.model
        probs = torch.softmax(model(model.prepare(scan), with_kd=False).logits.float(), dim=1)
    weights = scan_class_weights(probs, torch.tensor(prior, dtype=torch.float64), 0.5, 2)
    assert np.array_equal(plain.labels, probs.argmax(dim=1).numpy())
    assert np.array_equal(corrected.labels, reweight(probs, weights).argmax(dim=1).numpy())
    assert np.allclose(corrected.class_weights, weights.numpy())
    assert plain.class_weights is None and "prior" in corrected.timings_s and "prior" not in plain.timings_s
    assert not np.array_equal(corrected.labels, plain.labels)


def test_segmenter_refuses_a_prior_strength_without_the_models_class_prior() -> None:
    with pytest.raises(ValueError, match="no class prior"):
        _prior_segmenter(0.4)
    segmenter = _prior_segmenter(0.0)
    with pytest.raises(ValueError, match="no class prior"):
        segmenter.retune(prior_strength=0.4)
    assert segmenter.strategy.config.prior_strength == 0.0


def test_set_validated_settings_stores_the_class_prior_a_strength_needs(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint(_net(), tmp_path / "m.safetensors")
    out = tmp_path / "out.safetensors"
    args = ["--checkpoint", str(path), "--out", str(out), "--adapt", "prior_strength=0.4", "--how", "test"]
    monkeypatch.setattr(sys, "argv", ["set_validated_settings.py", *args])
    with pytest.raises(SystemExit, match="class prior"):
        runpy.run_path(str(SCRIPTS / "set_validated_settings.py"), run_name="__main__")
    prior = ",".join(["0.5"] + ["0.05"] * 10)
    monkeypatch.setattr(sys, "argv", ["set_validated_settings.py", *args, "--class-prior", prior])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(SCRIPTS / "set_validated_settings.py"), run_name="__main__")
    assert done.value.code == 0
    assert load_checkpoint(out).config.class_prior == (0.5,) + (0.05,) * 10
    assert read_checkpoint_metadata(out)["validated"]["adapt"] == {"prior_strength": 0.4}


def test_the_budget_holds_back_the_correction_at_its_largest_recent_cost_per_point() -> None:
    """The correction runs after the final forward: the steps' budget reserves its largest recent time per point
    times the scan's points, and nothing once it is turned off."""
    import time

    segmenter = _prior_segmenter(0.4, (0.5,) + (0.05,) * 10)
    segmenter.retune(time_budget_s=1000.0)
    scan = _scan()
    segmenter.segment(scan)
    (measured,) = segmenter._prior_rates.rates
    assert measured > 0
    segmenter._prior_rates.rates.append(0.01)  # a slower correction since: the largest recent rate is reserved
    rate = 0.01
    prepared = segmenter.model.prepare(scan)
    start = time.perf_counter() + 100.0  # elapsed time negative and far from the budget's floor at 0
    with_prior = segmenter._adapt_budget(start, prepared, None)
    segmenter.retune(prior_strength=0.0)
    without = segmenter._adapt_budget(start, prepared, None)
    assert without - with_prior == pytest.approx(rate * prepared.num_points, abs=1e-3)


def test_the_warm_ups_correction_cost_plans_only_the_first_real_scan() -> None:
    """The warm-up scan's correction cost per point (a small scan's: fixed costs over few points) is forgotten at
    the first real correction, as the warm-up's forward cost is, so it does not shrink the steps' budget after."""
    segmenter = _prior_segmenter(0.4, (0.5,) + (0.05,) * 10)
    segmenter.warm_up(_scan(seed=1))
    segmenter._prior_rates.rates.append(1.0)  # as if the warm-up's correction cost 1 s per point
    segmenter.segment(_scan())
    (real,) = segmenter._prior_rates.rates
    assert real < 1.0
