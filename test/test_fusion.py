"""Fusion: the teacher head's prediction combined with the 3D one on visible points, and only there."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from ttt_kd_ros.adapt import AdaptConfig, build_strategy
from ttt_kd_ros.checkpoint_format import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from ttt_kd_ros.fusion import (
    ADAPTIVE_WEIGHT_RANGE,
    GEOMETRIC_FLOOR,
    FusionConfig,
    class_mix_disagreement,
    fit_fusion_head,
    fuse_probabilities,
    fuse_scan,
    normalised_entropy,
    scan_weight_2d,
)
from ttt_kd_ros.geometry import project_points
from ttt_kd_ros.model import TTTKDNet, net_config
from ttt_kd_ros.scan import CameraIntrinsics, CameraView, Scan
from ttt_kd_ros.segmenter import Segmenter, SegmenterConfig
from ttt_kd_ros.shift import BatchNormShift, teacher_shift
from ttt_kd_ros.targets import distillation_targets
from ttt_kd_ros.teachers.teacher import Teacher
from ttt_kd_ros.teachers.weights import tiny_teacher
from ttt_kd_ros.tools.fit_fusion_head import with_fusion_head

TINY_NET = {"encoder_planes": (8, 16), "encoder_blocks": (1, 1), "decoder_planes": (8,), "decoder_blocks": (1,),
            "kd_hidden": 16, "teacher_dim": 32, "voxel_size_m": 0.1}


@functools.cache
def _teacher() -> Teacher:
    return tiny_teacher(resolution=56)


def _scan(seed: int = 0) -> Scan:
    """A wall at z = 3 m in front of a camera looking along +z, and as many points behind the camera."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    intrinsics = CameraIntrinsics(K=np.array([[40.0, 0, 32], [0, 40.0, 24], [0, 0, 1]]), width_px=64, height_px=48)
    front = np.c_[rng.uniform(-1, 1, (200, 2)), np.full(200, 3.0)]
    behind = np.c_[rng.uniform(-1, 1, (200, 2)), np.full(200, -3.0)]
    labels = np.r_[np.zeros(200), np.ones(200)].astype(np.int64)
    return Scan(np.concatenate([front, behind]).astype(np.float32), labels=labels,
                cameras=[CameraView(image, intrinsics, np.eye(4), name="front")])


def _net(head: bool = True, seed: int = 0) -> TTTKDNet:
    torch.manual_seed(seed)
    return TTTKDNet(net_config("ttt_kd_small", fusion_head=head, **TINY_NET)).eval()


def _segmenter(model: TTTKDNet, fusion: FusionConfig, strategy: str = "none") -> Segmenter:
    config = AdaptConfig(strategy=strategy, steps=2, lr=1e-2, kd_points_per_step=64)
    return Segmenter(model, _teacher(), build_strategy(model, config), fusion=fusion)


def test_fuse_probabilities_mean_averages_and_full_teacher_weight_is_the_teacher() -> None:
    p3 = torch.tensor([[0.8, 0.2], [0.5, 0.5]])
    p2 = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    assert torch.allclose(fuse_probabilities(p3, p2, FusionConfig("mean", 0.5)), (p3 + p2) / 2)
    assert torch.allclose(fuse_probabilities(p3, p2, FusionConfig("mean", 1.0)), p2)
    assert torch.equal(fuse_probabilities(p3, p2, FusionConfig("off")), p3)


def test_fuse_probabilities_entropy_lets_the_confident_modality_lead() -> None:
    confident = torch.tensor([[0.97, 0.01, 0.01, 0.01]])
    unsure = torch.tensor([[0.24, 0.26, 0.25, 0.25]])
    fused = fuse_probabilities(unsure, confident, FusionConfig("entropy", 0.5))
    assert fused.argmax().item() == 0 and fused[0, 0] > 0.9
    fused = fuse_probabilities(confident, unsure, FusionConfig("entropy", 0.5))
    assert fused.argmax().item() == 0 and fused[0, 0] > 0.9
    assert torch.allclose(fused.sum(dim=1), torch.ones(1))
    assert normalised_entropy(unsure).item() > 0.99 and normalised_entropy(confident).item() < 0.15


def test_fuse_probabilities_geometric_is_the_renormalised_weighted_product() -> None:
    p3 = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    p2 = torch.tensor([[0.1, 0.8, 0.1], [0.5, 0.25, 0.25]])
    fused = fuse_probabilities(p3, p2, FusionConfig("geometric", 0.25))
    expected = (p3 + GEOMETRIC_FLOOR) ** 0.75 * (p2 + GEOMETRIC_FLOOR) ** 0.25
    assert torch.allclose(fused, expected / expected.sum(dim=1, keepdim=True), atol=1e-6)
    assert torch.allclose(fused.sum(dim=1), torch.ones(2))


def test_geometric_fusion_picks_the_class_both_allow_and_ignores_a_flat_teacher() -> None:
    """Where each modality rules out the other's favourite, the product keeps the class both allow (the mean
    takes the teacher's, which the 3D network ruled out); a uniform teacher keeps the 3D ranking, only tempered."""
    p3 = torch.tensor([[0.5, 0.5, 0.0]])
    p2 = torch.tensor([[0.0, 0.2, 0.8]])
    assert fuse_probabilities(p3, p2, FusionConfig("geometric", 0.5)).argmax().item() == 1
    assert fuse_probabilities(p3, p2, FusionConfig("mean", 0.5)).argmax().item() == 2
    p3 = torch.tensor([[0.40, 0.35, 0.25]])
    uniform = torch.full((1, 3), 1 / 3)
    fused = fuse_probabilities(p3, uniform, FusionConfig("geometric", 0.4))
    assert torch.equal(fused.argsort(dim=1), p3.argsort(dim=1))
    assert torch.allclose(fused, p3**0.6 / (p3**0.6).sum(), atol=1e-5)


def test_fusion_config_refuses_unknown_modes_and_weights() -> None:
    with pytest.raises(ValueError, match="mode"):
        FusionConfig("max")
    with pytest.raises(ValueError, match="weight_2d"):
        FusionConfig("mean", 1.5)


def test_fit_fusion_head_separates_classes_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    labels = rng.integers(0, 3, 600)
    features = centres[labels] + 0.3 * rng.normal(size=(600, 16))
    head = fit_fusion_head(features, labels, num_classes=4, seed=1)
    predicted = head(torch.as_tensor(features, dtype=torch.float32)).argmax(dim=1).numpy()
    assert (predicted == labels).mean() > 0.95
    again = fit_fusion_head(features, labels, num_classes=4, seed=1)
    assert torch.equal(head.weight, again.weight)
    with pytest.raises(ValueError, match="labels must lie"):
        fit_fusion_head(features, np.full(600, 4), num_classes=4)


def test_segment_fuses_exactly_the_visible_points_and_keeps_the_3d_label_elsewhere() -> None:
    scan = _scan()
    model = _net()
    plain = _segmenter(model, FusionConfig("off")).segment(scan)
    teacher_only = _segmenter(model, FusionConfig("mean", 1.0)).segment(scan)
    visible = project_points(scan.points_xyz_m, scan.cameras[0]).visible
    assert visible[:200].all() and not visible[200:].any()
    assert plain.fused is None
    assert np.array_equal(teacher_only.fused, visible) and teacher_only.visible_points == 200
    assert np.array_equal(teacher_only.labels[~visible], plain.labels[~visible])
    targets = distillation_targets(scan, _teacher(), center=model.config.kd_target_center)
    with torch.no_grad():
        head_labels = model.fusion_head(targets.features).argmax(dim=1).numpy()
    assert np.array_equal(teacher_only.labels[targets.point_index.numpy()], head_labels)
    assert "fusion" in teacher_only.timings_s


def test_class_mix_disagreement_is_the_total_variation_of_the_label_histograms() -> None:
    one_hot = torch.eye(4)
    same_mix = one_hot[[0, 1, 2, 3]], one_hot[[1, 0, 3, 2]]  # every point disagrees, the mix is the same
    assert class_mix_disagreement(*same_mix) == pytest.approx(0.0)
    assert class_mix_disagreement(one_hot[[0, 0, 1, 1]], one_hot[[2, 2, 3, 3]]) == pytest.approx(1.0)
    assert class_mix_disagreement(one_hot[[0, 0, 0, 1]], one_hot[[0, 0, 1, 1]]) == pytest.approx(0.25)


def test_fuse_scan_withholds_a_teacher_whose_class_mix_is_unlike_the_3d_one() -> None:
    """A collapsed teacher (blocky images) labels every visible point with one class: past max_disagreement the
    scan keeps its 3D probabilities, below it the rule fuses as usual."""
    p3 = torch.softmax(torch.randn(100, 5, generator=torch.Generator().manual_seed(0)) * 3, dim=1)
    collapsed = torch.full((100, 5), 0.05).index_fill_(1, torch.tensor([4]), 0.8)
    config = FusionConfig("geometric", 0.5, max_disagreement=0.4)
    assert class_mix_disagreement(p3, collapsed) > 0.4
    kept, withheld = fuse_scan(p3, collapsed, config)
    assert withheld and torch.equal(kept, p3)
    fused, withheld = fuse_scan(p3, p3.roll(1, dims=0), config)  # the same mix: fused
    assert not withheld and torch.allclose(fused, fuse_probabilities(p3, p3.roll(1, dims=0), config))
    fused, withheld = fuse_scan(p3, collapsed, FusionConfig("geometric", 0.5))  # 1.0: never withheld
    assert not withheld and not torch.equal(fused, p3)
    with pytest.raises(ValueError, match="max_disagreement"):
        FusionConfig("mean", 0.3, max_disagreement=0.0)


def test_segment_withholds_a_collapsed_teacher_and_says_so() -> None:
    """The fusion head forced to one class: no point is fused, the labels are the 3D ones, the prediction says
    the teacher was withheld (test_ros_worker checks /diagnostics counts it as fusion_withheld)."""
    scan = _scan()
    model = _net()
    plain = _segmenter(model, FusionConfig("off")).segment(scan)
    teacher_label = min(set(range(model.config.num_classes)) - set(plain.labels[:200].tolist()))
    with torch.no_grad():  # one class the 3D side never says, on every visible point
        model.fusion_head.weight.zero_()
        model.fusion_head.bias.fill_(-10.0)
        model.fusion_head.bias[teacher_label] = 10.0
    fused = _segmenter(model, FusionConfig("mean", 0.9)).segment(scan)
    assert (fused.labels[:200] == teacher_label).all() and not fused.fusion_withheld
    gated = _segmenter(model, FusionConfig("mean", 0.9, max_disagreement=0.5)).segment(scan)
    assert gated.fusion_withheld and not gated.fused.any()
    assert np.array_equal(gated.labels, plain.labels)


def test_segment_with_fusion_and_no_camera_keeps_every_3d_label() -> None:
    scan = dataclasses.replace(_scan(), cameras=[])
    model = _net()
    plain = _segmenter(model, FusionConfig("off")).segment(scan)
    fused = _segmenter(model, FusionConfig("mean", 0.5)).segment(scan)
    assert np.array_equal(plain.labels, fused.labels)
    assert fused.fused is not None and not fused.fused.any() and fused.visible_points == 0


def test_segmenter_refuses_fusion_without_a_head() -> None:
    with pytest.raises(ValueError, match="no fusion head"):
        _segmenter(_net(head=False), FusionConfig("mean", 0.5))


def test_checkpoint_keeps_the_head_and_the_validated_settings(tmp_path: Path) -> None:
    model = _net()
    validated = {"adapt": {"strategy": "ttt_kd", "lr": 3e-4, "bn_train": False}, "fusion": {"mode": "mean"}}
    path = save_checkpoint(model, tmp_path / "m.safetensors", validated=validated)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.fusion_head.weight, model.fusion_head.weight)
    assert read_checkpoint_metadata(path)["validated"] == validated
    old = save_checkpoint(_net(head=False), tmp_path / "old.safetensors")
    assert load_checkpoint(old).fusion_head is None


def test_from_config_runs_the_checkpoints_validated_settings_unless_given(tmp_path: Path) -> None:
    validated = {"adapt": {"strategy": "ttt_kd", "lr": 3e-4, "bn_train": False, "steps": 3},
                 "fusion": {"mode": "mean", "weight_2d": 0.4}}
    path = save_checkpoint(_net(), tmp_path / "m.safetensors", validated=validated)
    base = SegmenterConfig(checkpoint=str(path), teacher="tiny", teacher_resolution=56, device="cpu",
                           adapt=AdaptConfig(steps=1))
    as_given = Segmenter.from_config(base)  # given=None: the configs are used as they are
    assert as_given.strategy.config.steps == 1 and as_given.strategy.config.bn_train
    assert not as_given.fusion.enabled
    validated_run = Segmenter.from_config(dataclasses.replace(base, given=("adapt.steps",)))
    cfg = validated_run.strategy.config
    assert (cfg.steps, cfg.lr, cfg.bn_train) == (1, 3e-4, False)
    assert validated_run.fusion == FusionConfig("mean", 0.4)
    tent = Segmenter.from_config(dataclasses.replace(base, adapt=AdaptConfig(strategy="tent"), given=()))
    assert tent.strategy.config.lr == AdaptConfig().lr  # TTT-KD's learning rate is not TENT's
    assert tent.fusion.enabled


def test_with_fusion_head_keeps_every_network_weight() -> None:
    model = _net(head=False)
    head = torch.nn.Linear(32, model.config.num_classes)
    out = with_fusion_head(model, head)
    assert out.config.fusion_head and torch.equal(out.fusion_head.weight, head.weight)
    for key, value in model.state_dict().items():
        assert torch.equal(out.state_dict()[key], value)


def test_scan_weight_follows_each_modality_shift_and_is_clipped() -> None:
    """More teacher when the 3D input shifted, less when the teacher's features did, a fixed share without slopes,
    and a measure that is missing moves nothing."""
    fixed = FusionConfig("geometric", 0.3)
    assert scan_weight_2d(fixed, 5.0, 5.0) == 0.3
    both = FusionConfig("geometric", 0.3, shift_slope_3d=1.0, shift_ref_3d=0.2, shift_slope_2d=0.5, shift_ref_2d=0.4)
    assert scan_weight_2d(both, 0.2, 0.4) == pytest.approx(0.3)  # in-distribution levels: the base share
    assert scan_weight_2d(both, 0.3, 0.4) == pytest.approx(0.4)
    assert scan_weight_2d(both, 0.2, 0.6) == pytest.approx(0.2)
    assert scan_weight_2d(both, None, None) == pytest.approx(0.3)
    assert scan_weight_2d(both, 10.0, 0.4) == ADAPTIVE_WEIGHT_RANGE[1]
    assert scan_weight_2d(both, 0.2, 10.0) == ADAPTIVE_WEIGHT_RANGE[0]
    with pytest.raises(ValueError, match="shift_slope_2d"):
        FusionConfig("geometric", 0.3, shift_slope_2d=-1.0)


def test_batch_norm_shift_is_the_log_variance_distance_and_leaves_no_hook() -> None:
    """An input with the running variance reads 0, one with 9x the variance log 9; outside the context the layers
    record nothing."""
    layer = torch.nn.BatchNorm1d(4).eval()
    layer.running_var.fill_(4.0)
    x = torch.randn(20000, 4, generator=torch.Generator().manual_seed(0))
    with BatchNormShift(layer) as same:
        layer(2.0 * x)
    with BatchNormShift(layer) as wider:
        layer(6.0 * x)
    assert same.value == pytest.approx(0.0, abs=0.03)
    assert wider.value == pytest.approx(np.log(9.0), abs=0.03)
    layer(x)  # after the context: no hook left to record it
    assert wider.value == pytest.approx(np.log(9.0), abs=0.03) and not layer._forward_hooks


def test_teacher_shift_grows_as_the_features_collapse() -> None:
    spread = torch.nn.functional.normalize(torch.randn(500, 16, generator=torch.Generator().manual_seed(1)), dim=1)
    collapsed = torch.nn.functional.normalize(spread + 4.0 * torch.ones(16), dim=1)
    assert teacher_shift(spread) < 0.2  # many directions: their mean is short
    assert 0.9 < teacher_shift(collapsed) <= 1.0 + 1e-6  # one direction: the mean of unit vectors is near unit
    assert teacher_shift(torch.zeros(0, 16)) is None


def test_segment_shares_by_the_shifts_of_the_scan_it_labels() -> None:
    """The teacher's share of a scan is scan_weight_2d of its shifts: the 3D one from the scan's unadapted
    whole-scan forward, the teacher's from its targets. A flat grey image collapses the teacher's features: less
    share than the textured image of the same points."""
    model = _net()
    # this untrained net's 3D shift is about 3.8, the teacher's 0.68 on the textured image, 1.0 on the grey one
    fusion = FusionConfig("geometric", 0.3, shift_slope_3d=0.05, shift_ref_3d=3.7, shift_slope_2d=0.5,
                          shift_ref_2d=0.6)
    scan = _scan()
    camera = scan.cameras[0]
    grey = dataclasses.replace(scan, cameras=[CameraView(np.full_like(camera.image_rgb, 128), camera.intrinsics,
                                                         camera.cam_from_cloud, name=camera.name)])
    for strategy in ("none", "ttt_kd"):
        weights = []
        for image_scan in (scan, grey):
            pred = _segmenter(model, fusion, strategy).segment(image_scan)
            with torch.no_grad(), BatchNormShift(model.backbone) as shift:
                model.eval()(model.prepare(image_scan), with_kd=False)
            targets = distillation_targets(image_scan, _teacher(), center=model.config.kd_target_center)
            expected = scan_weight_2d(fusion, shift.value, teacher_shift(targets.features))
            assert pred.fusion_weight == pytest.approx(expected, rel=1e-5), strategy
            weights.append(pred.fusion_weight)
        low, high = ADAPTIVE_WEIGHT_RANGE
        assert low < weights[1] < weights[0] - 0.1 < high, strategy
