"""The oracle control teacher: class vectors pooled to patches, corruption, refusal without class images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ttt_kd_ros.data.synthetic import generate_scan
from ttt_kd_ros.scan import CameraIntrinsics, CameraView
from ttt_kd_ros.segmenter import Segmenter, SegmenterConfig
from ttt_kd_ros.targets import distillation_targets
from ttt_kd_ros.teachers.oracle import OracleSpec, OracleTeacher, is_oracle, parse_oracle
from ttt_kd_ros.teachers.resolve import resolve


def _view(labels: np.ndarray) -> CameraView:
    h, w = labels.shape
    intr = CameraIntrinsics(K=np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1.0]]), width_px=w, height_px=h)
    return CameraView(np.zeros((h, w, 3), np.uint8), intr, np.eye(4), pixel_labels=labels)


def test_parse_oracle_reads_fields_and_names_bad_ones() -> None:
    assert parse_oracle("oracle") == OracleSpec()
    assert parse_oracle("oracle:corrupt=0.5,dim=16") == OracleSpec(dim=16, corrupt=0.5)
    assert is_oracle("oracle:dim=8") and not is_oracle("oracles") and not is_oracle("tiny")
    for bad, message in (("oracle:size=3", "keys"), ("oracle:dim=x", "dim must be a int"),
                         ("oracle:corrupt=2", "corrupt must be in")):
        with pytest.raises(ValueError, match=message):
            parse_oracle(bad)


def test_oracle_patch_feature_is_the_pooled_class_vector() -> None:
    teacher = OracleTeacher(OracleSpec(dim=8, patch=4), num_classes=3, resolution=(4, 8))
    labels = np.zeros((4, 8), np.int64)
    labels[:, 4:] = 2  # right patch: class 2 only
    labels[:2, :4] = 1  # left patch: half class 1, half class 0
    fmap = teacher.view_feature_map(_view(labels))
    v = teacher.class_vectors
    assert fmap.features.shape == (8, 1, 2)
    torch.testing.assert_close(fmap.features[:, 0, 1], v[2])
    mixed = (v[0] + v[1]) / torch.linalg.norm(v[0] + v[1])
    torch.testing.assert_close(fmap.features[:, 0, 0], mixed)
    assert teacher.view_feature_map(_view(labels)) is fmap and teacher.forward_count == 1  # the same array: cached


def test_oracle_corruption_replaces_the_asked_share_of_patches_deterministically() -> None:
    labels = np.zeros((64, 64), np.int64)
    clean = OracleTeacher(OracleSpec(dim=16, patch=4), 6, resolution=(64, 64)).view_feature_map(_view(labels))
    noisy = OracleTeacher(OracleSpec(dim=16, patch=4, corrupt=0.5), 6, resolution=(64, 64))
    first = noisy.view_feature_map(_view(labels)).features
    again = noisy.view_feature_map(_view(labels.copy())).features
    torch.testing.assert_close(first, again)
    changed = ~torch.isclose(first, clean.features, atol=1e-6).all(dim=0)
    # a replaced patch keeps class 0 with probability 1/6: expect 0.5 * 5/6 of 256 patches to differ
    assert 0.3 < changed.float().mean().item() < 0.55


def test_oracle_refuses_cameras_without_class_images_and_raw_images() -> None:
    teacher = OracleTeacher(OracleSpec(dim=8), 3)
    view = _view(np.zeros((4, 8), np.int64))
    view.pixel_labels = None
    with pytest.raises(ValueError, match="synthetic scans only"):
        teacher.view_feature_map(view)
    with pytest.raises(ValueError, match="rendered class image"):
        teacher.feature_map(np.zeros((4, 8, 3), np.uint8))


def test_oracle_targets_on_a_synthetic_scan_follow_point_labels() -> None:
    scan = generate_scan("source", 3)
    teacher = resolve("oracle:dim=32", (120, 160), torch.device("cpu"), offline=True)
    targets = distillation_targets(scan, teacher)
    labels = torch.from_numpy(scan.labels[targets.point_index.numpy()])
    nearest = (targets.features @ teacher.class_vectors.T).argmax(dim=1)
    assert targets.num_targets > 1000 and (nearest == labels).float().mean() > 0.8


def test_resolve_offline_builds_other_specs_as_the_segmenter_does() -> None:
    teacher = resolve("tiny", (28, 28), torch.device("cpu"), offline=True)
    assert teacher.feature_dim == 32 and not isinstance(teacher, OracleTeacher)


def test_resolve_refuses_the_oracle_unless_offline() -> None:
    with pytest.raises(ValueError, match="offline control"):
        resolve("oracle:dim=8", (28, 28))


def test_segmenter_config_refuses_the_oracle() -> None:
    with pytest.raises(ValueError, match="offline control"):
        Segmenter.from_config(SegmenterConfig(teacher="oracle:dim=8", device="cpu"))
