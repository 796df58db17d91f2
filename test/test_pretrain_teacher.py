"""Stand-in teacher pre-training: label renders, patch targets, augmentations, and a folder teachers.resolve reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ttt_kd_ros.data.synthetic import generate_sample
from ttt_kd_ros.data.synthetic.renders import render_labeled_images, scan_label_images
from ttt_kd_ros.geometry import project_points
from ttt_kd_ros.labels import SYNTHETIC_INDOOR
from ttt_kd_ros.teachers.resolve import resolve
from ttt_kd_ros.tools import pretrain_teacher
from ttt_kd_ros.tools.pretrain_teacher import (
    PretrainConfig,
    PrototypeHead,
    patch_class_distribution,
    photometric,
    pretrain,
)


def test_render_labeled_images_deterministic_and_labelled() -> None:
    first = render_labeled_images("office_lidar", seed=3, num_views=2)
    again = render_labeled_images("office_lidar", seed=3, num_views=2)
    assert len(first) == 2 and first[0].domain == "office_lidar"
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.image_rgb, b.image_rgb)
        np.testing.assert_array_equal(a.labels, b.labels)
    labels = first[0].labels
    assert labels.shape == first[0].image_rgb.shape[:2] and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < SYNTHETIC_INDOOR.num_classes
    assert len(np.unique(labels)) >= 3  # a room view shows more than floor and wall


def test_render_labeled_images_rejects_zero_views() -> None:
    with pytest.raises(ValueError, match="num_views"):
        render_labeled_images("source", seed=0, num_views=0)


def test_scan_label_images_match_point_labels_at_projected_pixels() -> None:
    sample = generate_sample("source", 5)
    for view, labels in zip(sample.scan.cameras, scan_label_images(sample), strict=True):
        proj = project_points(sample.scan.points_xyz_m, view)
        px = np.round(proj.uv_px[proj.visible]).astype(np.int64)
        agree = labels[px[:, 1], px[:, 0]] == sample.scan.labels[proj.visible]
        assert agree.mean() > 0.8  # misses are depth noise and rounding at object edges


def test_patch_class_distribution_counts_pixels_per_patch() -> None:
    labels = torch.zeros(1, 4, 8, dtype=torch.long)
    labels[0, :, 4:] = 2  # right patch all class 2
    labels[0, :2, :4] = 1  # left patch half class 1
    dist = patch_class_distribution(labels, patch=4, num_classes=3)
    assert dist.shape == (1, 2, 3)
    torch.testing.assert_close(dist[0], torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]))


def test_patch_class_distribution_rejects_ragged_image() -> None:
    with pytest.raises(ValueError, match="patch size"):
        patch_class_distribution(torch.zeros(1, 5, 8, dtype=torch.long), patch=4, num_classes=3)


def _best_shift(out: torch.Tensor, reference: torch.Tensor, reach: int = 2) -> tuple[int, int]:
    """The (dy, dx) roll of ``reference`` (H, W) that correlates best with ``out`` (H, W)."""
    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm()))

    shifts = [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)]
    return max(shifts, key=lambda d: corr(out, reference.roll(d, dims=(0, 1))))


def test_photometric_changes_colour_only() -> None:
    """Colours change, and no pixel moves: each output lines up with its input at shift (0, 0), not one pixel off
    (blur, in a third of the batch, spreads a pixel symmetrically and does not move it)."""
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    out = photometric(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, images.float() / 255, atol=0.05)
    grey_in = images.float().mean(dim=1)
    for image, before in zip(out.mean(dim=1), grey_in, strict=True):
        assert _best_shift(image, before) == (0, 0)
    assert _best_shift(out[0].mean(dim=0).roll(1, dims=1), grey_in[0]) == (0, 1)  # the check sees a shift


def _tiny_config(**changes: object) -> PretrainConfig:
    base = dict(hidden_size=16, num_layers=1, num_heads=2, rooms_per_domain=1, randomised_rooms=1, views_per_room=2,
                held_out_rooms=1, steps=3, batch_size=4)
    return PretrainConfig(**{**base, **changes})


@pytest.mark.slow
def test_pretrain_tiny_writes_folder_resolve_reads(tmp_path) -> None:
    report = pretrain(_tiny_config(), tmp_path / "teacher", command="test", progress=False)
    assert (tmp_path / "teacher" / "config.json").is_file()
    saved = json.loads((tmp_path / "teacher" / "pretrain_report.json").read_text())
    assert saved["train_images"] == report["train_images"] == (5 + 1) * 2
    assert set(saved["probe_trained"]) == {"source", "office", "lidar", "office_lidar", "noisy", "randomised",
                                           "beyond_training"}
    assert set(saved["probe_trained"]["office"]) == {"probe_miou", "within", "between", "centroid_agreement"}
    again = pretrain_teacher.report_only(tmp_path / "teacher", _tiny_config())
    assert again["probe_trained"] == saved["probe_trained"]
    assert not (tmp_path / "teacher" / "train_state.pt").exists()
    teacher = resolve(tmp_path / "teacher", resolution=tuple(report["teacher_resolution_hw"]))
    fmap = teacher.feature_map(render_labeled_images("source", 0, 1)[0].image_rgb)
    assert fmap.features.shape == (16, 120 // 8, 160 // 8)


@pytest.mark.slow
def test_pretrain_interrupted_then_resumed_equals_one_run(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _tiny_config(steps=4, checkpoint_every=2)
    pretrain(config, tmp_path / "whole", progress=False)
    calls = {"n": 0}
    real = pretrain_teacher.pretrain_losses

    def dies_at_step_three(*args: object, **kwargs: object) -> dict:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the session ends mid-run
        return real(*args, **kwargs)

    monkeypatch.setattr(pretrain_teacher, "pretrain_losses", dies_at_step_three)
    with pytest.raises(KeyboardInterrupt):
        pretrain(config, tmp_path / "split", progress=False)
    assert (tmp_path / "split" / "train_state.pt").is_file() and (tmp_path / "split" / "renders").is_dir()
    monkeypatch.setattr(pretrain_teacher, "pretrain_losses", real)
    pretrain(config, tmp_path / "split", progress=False)
    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    split = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert whole.keys() == split.keys()
    for key in whole:
        torch.testing.assert_close(split[key], whole[key], rtol=0, atol=0)


def test_pretrain_refuses_a_state_saved_for_another_config(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "t"
    monkeypatch.setattr(pretrain_teacher, "pretrain_losses", _raise_at_third_call(pretrain_teacher.pretrain_losses))
    with pytest.raises(KeyboardInterrupt):
        pretrain(_tiny_config(steps=4, checkpoint_every=2), out, progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        pretrain(_tiny_config(steps=4, checkpoint_every=2, lr=1e-2), out, progress=False)


def _raise_at_third_call(real):
    calls = {"n": 0}

    def wrapped(*args: object, **kwargs: object) -> dict:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return wrapped


def test_prototype_head_logits_are_scaled_cosines() -> None:
    head = PrototypeHead(dim=2, num_classes=2, temperature=0.5)
    with torch.no_grad():
        head.prototypes.copy_(torch.tensor([[3.0, 0.0], [0.0, 2.0]]))
    logits = head(torch.tensor([[5.0, 0.0], [1.0, 1.0]]))
    torch.testing.assert_close(logits, torch.tensor([[2.0, 0.0], [2**-0.5 * 2, 2**-0.5 * 2]]))


def test_photometric_blur_and_exposure_keep_geometry() -> None:
    images = torch.zeros(8, 3, 16, 16, dtype=torch.uint8)
    images[:, :, :, 8:] = 255  # left half dark, right half bright, in every channel: the edge is at x = 7.5
    out = photometric(images, torch.Generator().manual_seed(1))
    profile = out.mean(dim=(1, 2))  # (8, 16) mean over channels and rows, per column
    dark, bright = profile[:, :4].mean(dim=1), profile[:, 12:].mean(dim=1)
    assert (bright > dark).all()
    for row, lo, hi in zip(profile, dark, bright, strict=True):
        # where the profile crosses half way between its two sides: blur spreads the edge, both ways alike
        mid = (lo + hi) / 2
        k = int(torch.nonzero((row[:-1] < mid) & (row[1:] >= mid))[0])
        crossing = k + float((mid - row[k]) / (row[k + 1] - row[k]))
        assert abs(crossing - 7.5) < 0.25, crossing
