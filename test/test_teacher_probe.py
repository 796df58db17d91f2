"""The patch linear probe: closed-form ridge fit, mIoU on a hand-made case."""

from __future__ import annotations

import pytest
import torch

from ttt_kd_ros.teachers.probe import fit_patch_probe, patch_miou, similarity_report


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


def test_similarity_report_on_a_hand_made_case() -> None:
    # class 0: two copies of e0; class 1: e1 and (e1 + e2)/sqrt(2)
    e = torch.eye(3)
    features = torch.stack([e[0], e[0], e[1], (e[1] + e[2]) / 2**0.5])
    classes = torch.tensor([0, 0, 1, 1])
    # reference domain: class 0 at e0, class 1 at e2
    report = similarity_report(features, classes, torch.stack([e[0], e[2]]), torch.tensor([0, 1]), 2)
    # same-class ordered pairs: (0,1),(1,0) cos 1; (2,3),(3,2) cos 1/sqrt2 -> mean (2 + 2/sqrt2) / 4
    assert report.within == pytest.approx((2 + 2 / 2**0.5) / 4, abs=1e-4)
    # different-class pairs: e0 with the two class-1 vectors: cos 0 -> 0
    assert report.between == pytest.approx(0.0, abs=1e-4)
    # centroids: class 0 agrees exactly; class 1's mean (e1 + (e1+e2)/sqrt2) vs e2: cos = (1/sqrt2) / |mean|
    mean1 = e[1] + (e[1] + e[2]) / 2**0.5
    want = (1.0 + float(mean1[2] / mean1.norm())) / 2
    assert report.centroid_agreement == pytest.approx(want, abs=1e-4)
