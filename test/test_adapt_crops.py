"""Adaptation steps on bounded crops (adapt/crops.py): no step sees more than N voxels, crops lie where the targets
are, a scan adapts the same way twice, and the final labels still cover every point."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from crop_scans import wall_and_floor_scan

from ttt_kd_ros.adapt import AdaptConfig, build_strategy
from ttt_kd_ros.adapt.crops import crop_targets, nearest_voxels
from ttt_kd_ros.model import TTTKDNet, net_config
from ttt_kd_ros.scan import Scan
from ttt_kd_ros.segmenter import Segmenter
from ttt_kd_ros.targets import distillation_targets
from ttt_kd_ros.teachers.weights import tiny_teacher

TINY_NET = {"encoder_planes": (8, 16), "encoder_blocks": (1, 1), "decoder_planes": (8,), "decoder_blocks": (1,),
            "kd_hidden": 16, "teacher_dim": 32, "voxel_size_m": 0.1}


def _scan(points: int = 6000) -> Scan:
    return wall_and_floor_scan(points, seed=0)


def _segmenter(crop_voxels: int, steps: int = 6, **adapt: object) -> Segmenter:
    torch.manual_seed(0)
    model = TTTKDNet(net_config("ttt_kd_small", **TINY_NET))
    config = AdaptConfig(strategy="ttt_kd", steps=steps, lr=1e-2, kd_points_per_step=64, crop_voxels=crop_voxels,
                         crops_per_scan=3, **adapt)
    return Segmenter(model, tiny_teacher(resolution=56), build_strategy(model, config))


def _voxels_per_step(seg: Segmenter, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The voxel count of what each KD step's forward runs on, recorded as the steps run."""
    seen: list[int] = []
    real = seg.model.kd_features
    monkeypatch.setattr(seg.model, "kd_features", lambda prepared, index: seen.append(prepared.num_voxels)
                        or real(prepared, index))
    return seen


def test_no_step_sees_more_than_the_crop_and_the_final_labels_cover_every_point(monkeypatch) -> None:
    seg = _segmenter(crop_voxels=150)
    seen = _voxels_per_step(seg, monkeypatch)
    scan = _scan()
    prepared = seg.model.prepare(scan)
    assert prepared.num_voxels > 4 * 150  # the crop is a small part of the scan
    pred = seg.segment(scan)
    assert pred.steps_run == 6 and len(seen) == 6 and max(seen) <= 150
    assert pred.labels.shape == (scan.num_points,) and ((pred.labels >= 0) & (pred.labels < seg.num_classes)).all()


def test_a_scan_smaller_than_the_crop_steps_on_the_whole_scan(monkeypatch) -> None:
    seg = _segmenter(crop_voxels=100000)
    seen = _voxels_per_step(seg, monkeypatch)
    scan = _scan(1200)
    seg.segment(scan)
    assert set(seen) == {seg.model.prepare(scan).num_voxels}


def test_crops_hold_only_their_own_targets_and_cycle_over_the_steps() -> None:
    seg = _segmenter(crop_voxels=150)
    scan = _scan()
    prepared = seg.model.prepare(scan)
    targets = distillation_targets(scan, seg.teacher)
    strategy = seg.strategy
    crops = [strategy._crop(prepared, targets) for _ in range(6)]
    assert [id(c) for c in crops[:3]] == [id(c) for c in crops[3:]]  # three crops, each built once and reused
    assert len({id(c) for c in crops}) == 3
    for crop in crops[:3]:
        assert crop.num_voxels == 150 and crop.target_rows.numel() > 0
        # every target of the crop has its voxel in the crop, at the crop row the crop says
        voxel_of_target = prepared.voxels.point_to_voxel[targets.point_index[crop.target_rows]]
        coords_full = prepared.voxels.coords[voxel_of_target]
        assert torch.equal(crop.prepared.voxels.coords[crop.crop_rows], coords_full)
        assert torch.equal(crop.prepared.features[crop.crop_rows], prepared.features[voxel_of_target])


def test_a_cropped_scan_adapts_the_same_way_twice() -> None:
    seg = _segmenter(crop_voxels=150)
    scan = _scan()
    first = seg.segment(scan)
    second = seg.segment(scan)
    assert first.kd_loss_after == second.kd_loss_after and np.array_equal(first.labels, second.labels)


def test_nearest_voxels_and_crop_targets_on_a_line() -> None:
    coords = torch.tensor([[x, 0, 0] for x in range(10)])
    rows = nearest_voxels(coords, centre=4, count=3)
    assert rows.tolist() == [3, 4, 5]
    point_to_voxel = torch.tensor([0, 3, 3, 4, 9])
    targets = type("T", (), {"point_index": torch.tensor([1, 3, 4]), "features": torch.zeros(3, 2)})()
    inside, crop_rows = crop_targets(point_to_voxel, targets, rows, num_voxels=10)
    assert inside.tolist() == [0, 1] and crop_rows.tolist() == [0, 1]


@pytest.mark.parametrize("fields", [{"crop_voxels": -1}, {"crops_per_scan": 0}])
def test_a_negative_crop_or_no_crop_per_scan_is_refused(fields: dict) -> None:
    with pytest.raises(ValueError, match="crop_voxels"):
        AdaptConfig(**fields)
