"""Output safety: an adaptation that did not do its job is not published; a mix keeps the unadapted vote."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from ttt_kd_ros.adapt import AdaptConfig, build_strategy
from ttt_kd_ros.metrics import ConfusionMatrix
from ttt_kd_ros.model import TTTKDNet, net_config
from ttt_kd_ros.scan import CameraIntrinsics, CameraView, Scan
from ttt_kd_ros.segmenter import GUARD_CEILING, GUARD_REJECTED, Segmenter
from ttt_kd_ros.targets import distillation_targets
from ttt_kd_ros.teachers.teacher import Teacher
from ttt_kd_ros.teachers.weights import tiny_teacher

TINY_NET = {"encoder_planes": (8, 16), "encoder_blocks": (1, 1), "decoder_planes": (8,), "decoder_blocks": (1,),
            "kd_hidden": 16, "teacher_dim": 32, "voxel_size_m": 0.1}


@functools.cache
def _teacher() -> Teacher:
    return tiny_teacher(resolution=56)


def _scan(labels: np.ndarray | None = None) -> Scan:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    intrinsics = CameraIntrinsics(K=np.array([[40.0, 0, 32], [0, 40.0, 24], [0, 0, 1]]), width_px=64, height_px=48)
    wall = np.c_[rng.uniform(-1, 1, (300, 2)), np.full(300, 3.0)]
    box = np.c_[rng.uniform(-0.3, 0.3, (300, 2)), rng.uniform(2.0, 2.4, 300)]
    return Scan(np.concatenate([wall, box]).astype(np.float32), labels=labels,
                cameras=[CameraView(image, intrinsics, np.eye(4), name="front")])


def _segmenter(fitted: bool = False, **adapt: object) -> Segmenter:
    torch.manual_seed(0)
    model = TTTKDNet(net_config("ttt_kd_small", **TINY_NET))
    if fitted:
        model.load_state_dict(_fitted_state())
        model.eval()
    config = AdaptConfig(**{"strategy": "ttt_kd", "steps": 5, "kd_points_per_step": 128, **adapt})
    return Segmenter(model, _teacher(), build_strategy(model, config))


@functools.cache
def _fitted_state() -> dict[str, torch.Tensor]:
    """The fitted net's weights, fitted once per session (every test that asks gets the same net)."""
    torch.manual_seed(0)
    model = TTTKDNet(net_config("ttt_kd_small", **TINY_NET))
    _fit_kd_head(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fit_kd_head(model: TTTKDNet) -> None:
    """Train the whole net on the scan's KD task (no reset), like a joint model whose features fit this scene:
    its KD loss starts low, so an adaptation that wrecks the weights shows in the loss."""
    scan = _scan()
    prepared = model.prepare(scan)
    targets = distillation_targets(scan, _teacher())
    strategy = build_strategy(model, AdaptConfig(strategy="ttt_kd", steps=150, lr=1e-2, kd_points_per_step=0,
                                                 bn_train=False))
    strategy.adapt(prepared, targets)
    model.eval()


def _miou(truth: np.ndarray, labels: np.ndarray, classes: int) -> float:
    cm = ConfusionMatrix(classes)
    cm.update(truth, labels)
    return cm.miou()


def test_guard_falls_back_to_the_unadapted_labels_when_adaptation_diverges() -> None:
    unadapted = _segmenter(fitted=True, strategy="none").segment(_scan())
    scan = _scan(labels=unadapted.labels)  # a scan the unadapted model labels perfectly
    classes = unadapted.labels.max() + 1
    # Adam at lr 1 throws every weight far off: the KD loss rises and the labels get worse
    diverging = {"lr": 1.0, "fitted": True, "bn_train": False}
    hurt = _segmenter(**diverging).segment(scan)
    assert hurt.adapted
    assert _miou(scan.labels, hurt.labels, classes) < 0.9
    guarded = _segmenter(guard_kd_ratio=0.9, **diverging).segment(scan)
    assert not guarded.adapted and guarded.skip_reason == GUARD_REJECTED and guarded.steps_run == 5
    assert np.array_equal(guarded.labels, unadapted.labels)
    assert _miou(scan.labels, guarded.labels, classes) == pytest.approx(1.0)
    assert guarded.kd_loss_after >= 0.9 * guarded.kd_loss_before  # the loss said so (the unadapted one is before)
    assert guarded.kd_loss_after == pytest.approx(hurt.kd_loss_after)
    assert "reference" in guarded.timings_s


def test_ceiling_runs_no_step_on_targets_unlike_any_the_network_learnt() -> None:
    """The scan's image swapped for a blocky one: the fitted network's unadapted KD loss jumps far above its level
    on the real image. Above guard_kd_max no step runs, the labels are the unadapted ones, and the reference
    forward is the only one (the final forward reuses it); below it the scan adapts as before."""
    scan = _scan()
    blocky_image = np.repeat(np.repeat(scan.cameras[0].image_rgb[::16, ::16], 16, axis=0), 16, axis=1)
    camera = scan.cameras[0]
    blocky = Scan(scan.points_xyz_m, cameras=[CameraView(blocky_image, camera.intrinsics, camera.cam_from_cloud,
                                                         name=camera.name)])
    clean_loss = _segmenter(fitted=True, steps=0).segment(scan).kd_loss_before  # no step: the unadapted loss
    blocky_loss = _segmenter(fitted=True, steps=0).segment(blocky).kd_loss_before
    assert blocky_loss > 1.2 * clean_loss
    ceiling = (clean_loss + blocky_loss) / 2
    unadapted = _segmenter(fitted=True, strategy="none").segment(blocky)
    skipped = _segmenter(fitted=True, guard_kd_max=ceiling).segment(blocky)
    assert skipped.steps_run == 0 and not skipped.adapted and skipped.skip_reason == GUARD_CEILING
    assert np.array_equal(skipped.labels, unadapted.labels)
    assert skipped.kd_loss_before == pytest.approx(blocky_loss, rel=1e-5)
    assert "reference" in skipped.timings_s and skipped.timings_s["forward"] == 0.0
    clean = _segmenter(fitted=True, guard_kd_max=ceiling).segment(scan)
    assert clean.steps_run == 5 and clean.adapted


def _count_whole_forwards(segmenter: Segmenter) -> list[int]:
    """Counts calls of the model's forward (whole-scan passes; crop passes go through kd_features)."""
    calls = [0]
    forward = segmenter.model.forward

    def counted(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return forward(*args, **kwargs)

    segmenter.model.forward = counted
    return calls


CROP = 60
"""Voxels per crop in the crop-guard tests: well under the test scan's ~190 voxels at 0.1 m, so steps run on crops."""


def test_crop_guard_rejects_on_the_first_crop_and_labels_with_the_source_weights() -> None:
    """A scan larger than a crop, no unadapted mix: the guard measures the KD loss on the first step's crop before
    and after the steps, runs no whole-scan reference, and a rejected adaptation is labelled by the one final
    forward with the source weights, exactly as the unadapted model labels it."""
    unadapted = _segmenter(fitted=True, strategy="none").segment(_scan())
    scan = _scan(labels=unadapted.labels)
    segmenter = _segmenter(guard_kd_ratio=0.9, lr=1.0, fitted=True, bn_train=False, crop_voxels=CROP,
                           guard_voxels=CROP)
    assert segmenter.model.prepare(scan).num_voxels > 2 * CROP
    forwards = _count_whole_forwards(segmenter)
    guarded = segmenter.segment(scan)
    assert guarded.steps_run == 5 and not guarded.adapted and guarded.skip_reason == GUARD_REJECTED
    assert forwards[0] == 1 and {"reference", "guard"} <= set(guarded.timings_s)
    assert np.array_equal(guarded.labels, unadapted.labels)
    assert guarded.kd_loss_after >= 0.9 * guarded.kd_loss_before
    # the adapted weights were put back after the source-weight forward, then the scan's reset restored them
    assert all(torch.equal(a, b) for a, b in zip(segmenter.model.state_dict().values(),
                                                  _segmenter(fitted=True).model.state_dict().values(), strict=True))


def test_crop_guard_measures_the_loss_the_first_step_starts_from() -> None:
    """The guard's "before" is the KD loss over every target of the first step's crop with the source weights:
    with all targets per step and running BN statistics, exactly the first step's own loss (same crop, same
    generator draws), which an unguarded segmenter reports as its kd_loss_before."""
    settings = {"lr": 1e-3, "bn_train": False, "crop_voxels": CROP, "guard_voxels": CROP, "kd_points_per_step": 0,
                "fitted": True}
    guarded = _segmenter(guard_kd_ratio=1.0, **settings).segment(_scan())
    plain = _segmenter(**settings).segment(_scan())
    assert "guard" in guarded.timings_s and "guard" not in plain.timings_s
    assert guarded.kd_loss_before == pytest.approx(plain.kd_loss_before, rel=1e-5)
    assert guarded.adapted and guarded.kd_loss_after < guarded.kd_loss_before
    assert np.array_equal(guarded.labels, plain.labels)  # kept: the same adapted weights labelled the scan


def test_the_guard_measures_on_a_region_grown_around_the_first_crop() -> None:
    """With crops smaller than ``guard_voxels`` the guard's region is the guard_voxels voxels around the first
    crop's centre: it holds every voxel of the first crop (the steps start there) and more targets to judge by."""
    segmenter = _segmenter(fitted=True, bn_train=False, crop_voxels=CROP, guard_voxels=2 * CROP)
    scan = _scan()
    prepared = segmenter.model.prepare(scan)
    targets = distillation_targets(scan, segmenter.teacher)
    strategy = segmenter.strategy
    region = strategy.guard_crop(prepared, targets)
    first = strategy._scan_crops(prepared, targets).for_step(0)  # the crop the first step runs on
    assert first.num_voxels == CROP and region.num_voxels == 2 * CROP
    region_coords = {tuple(c) for c in region.prepared.voxels.coords.tolist()}
    assert {tuple(c) for c in first.prepared.voxels.coords.tolist()} <= region_coords
    assert region.target_rows.numel() > first.target_rows.numel()
    assert strategy.guard_voxels(prepared, targets) == 2 * CROP
    whole = _segmenter(fitted=True, bn_train=False, crop_voxels=CROP, guard_voxels=10**6).strategy
    assert whole.guard_voxels(prepared, targets) == prepared.num_voxels  # never more than the scan


def test_a_crop_guard_with_no_room_for_a_step_measures_nothing() -> None:
    """When the budget left after the final forward cannot hold one step, the guard's crop passes are not run
    (they would only delay an unadapted scan): one forward, and the reason names the budget."""
    segmenter = _segmenter(guard_kd_ratio=0.9, crop_voxels=CROP, time_budget_s=5.0)
    segmenter.segment(_scan())  # measures a step and a forward
    segmenter.strategy.expected_step_s = 10.0  # as if a step took twice the budget
    forwards = _count_whole_forwards(segmenter)
    pred = segmenter.segment(_scan())
    assert pred.steps_run == 0 and "no room for a step" in pred.skip_reason
    assert forwards[0] == 1 and "reference" not in pred.timings_s and "guard" not in pred.timings_s


def test_guard_keeps_an_adaptation_whose_kd_loss_fell_enough() -> None:
    scan = _scan()
    plain = _segmenter(lr=3e-3, steps=20).segment(scan)
    guarded = _segmenter(lr=3e-3, steps=20, guard_kd_ratio=0.95).segment(scan)
    assert plain.kd_loss_after < 0.95 * guarded.kd_loss_before  # the loss did fall: the guard must keep it
    assert guarded.adapted and guarded.skip_reason == ""
    assert np.array_equal(guarded.labels, plain.labels)


def test_unadapted_weight_mixes_the_two_predictions() -> None:
    scan = _scan()
    unadapted = _segmenter(strategy="none").segment(scan)
    adapted = _segmenter(lr=3e-2, steps=10).segment(scan)
    mixed = _segmenter(lr=3e-2, steps=10, unadapted_weight=0.5).segment(scan)
    changed = adapted.labels != unadapted.labels
    assert changed.any()  # the adaptation moved some labels ...
    same = ~changed
    assert np.array_equal(mixed.labels[same], adapted.labels[same])  # ... where both agree, so does the mix
    assert np.isin(mixed.labels[changed], np.stack([adapted.labels[changed], unadapted.labels[changed]])).all()
    nearly_unadapted = _segmenter(lr=3e-2, steps=10, unadapted_weight=0.99).segment(scan)
    assert (nearly_unadapted.labels == unadapted.labels).mean() > (adapted.labels == unadapted.labels).mean()


def test_safety_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="guard_kd_ratio"):
        AdaptConfig(guard_kd_ratio=1.5)
    with pytest.raises(ValueError, match="guard_kd_max"):
        AdaptConfig(guard_kd_max=-0.1)
    with pytest.raises(ValueError, match="unadapted_weight"):
        AdaptConfig(unadapted_weight=1.0)


def test_the_budget_holds_back_the_guards_second_pass_not_the_regions_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the steps the guard repeats its region's pass on the region already cut: the budget reserves the
    pass's measured time, not the cut's (a slow cut here), so the cut does not take room from the steps twice."""
    import time as clock

    segmenter = _segmenter(guard_kd_ratio=0.9, fitted=True, bn_train=False, crop_voxels=CROP, guard_voxels=2 * CROP)
    strategy = segmenter.strategy
    real_cut, real_reference = strategy.guard_crop, segmenter._reference
    references = []

    def slow_cut(prepared: object, targets: object) -> object:
        clock.sleep(0.3)
        return real_cut(prepared, targets)

    monkeypatch.setattr(strategy, "guard_crop", slow_cut)
    monkeypatch.setattr(segmenter, "_reference",
                        lambda *args: references.append(real_reference(*args)) or references[-1])
    pred = segmenter.segment(_scan())
    assert pred.steps_run > 0 and "guard" in pred.timings_s
    assert pred.timings_s["reference"] >= 0.3  # the stage still counts the cut
    assert references[0].crop is not None and references[0].crop_forward_s < 0.3
