"""The patch linear probe: closed-form ridge fit, mIoU on a hand-made case."""

from __future__ import annotations

import pytest
import torch

from ttt_kd_ros.teacher_probe import fit_patch_probe, patch_miou


def test_probe_separates_one_hot_features_perfectly() -> None:
    classes = torch.tensor([0, 1, 2, 2, 1, 0])
    features = torch.eye(3)[classes]
    probe = fit_patch_probe(features, classes, num_classes=3, ridge=1e-6)
    assert torch.equal(probe.predict(features), classes)
    assert patch_miou(probe, features, classes, 3) == pytest.approx(1.0)


def test_probe_miou_on_swapped_domain_is_the_hand_computed_value() -> None:
    classes = torch.tensor([0, 0, 1, 1])
    probe = fit_patch_probe(torch.eye(2)[classes], classes, num_classes=2, ridge=1e-6)
    # another "domain" where one patch of class 1 looks like class 0: predictions 0, 0, 0, 1
    shifted = torch.eye(2)[torch.tensor([0, 0, 0, 1])]
    # IoU class 0 = 2 / 3, class 1 = 1 / 2
    assert patch_miou(probe, shifted, classes, 2) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_probe_rejects_mismatched_rows() -> None:
    with pytest.raises(ValueError, match="expected"):
        fit_patch_probe(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), 2)
