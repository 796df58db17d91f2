"""The demo's adaptation run: unadapted and adapted labels of the same scans, a curve and pictures from the run."""

from __future__ import annotations

import numpy as np

from ttt_kd_ros.adapt import AdaptConfig
from ttt_kd_ros.demo.scans import ADAPTED, UNADAPTED, DemoCase, case_scans, run_case, table, write_case_figures
from ttt_kd_ros.metrics import miou
from ttt_kd_ros.segmenter import Segmenter, SegmenterConfig

CASE = DemoCase("rgbd", "", "warm=office:style.light_rgb=[1.0,0.8,0.6]", "office, warm light", top_max_z_m=2.0)


def _segmenter(lr: float) -> Segmenter:
    return Segmenter.from_config(SegmenterConfig(checkpoint=None, teacher="tiny", device="cpu",
                                                 adapt=AdaptConfig(strategy="ttt_kd", steps=2, lr=lr)))


def test_case_scans_are_the_shifted_split_cropped() -> None:
    scans = case_scans(CASE, 2, seed=5, max_points=1500)
    assert len(scans) == 2 and all(s.num_points == 1500 and s.labels is not None for s in scans)
    again = case_scans(CASE, 2, seed=5, max_points=1500)
    np.testing.assert_array_equal(scans[1].points_xyz_m, again[1].points_xyz_m)


def test_run_case_curve_is_the_pooled_miou_of_the_panels(tmp_path) -> None:
    scans = case_scans(CASE, 2, seed=5, max_points=1500)
    result = run_case(CASE, _segmenter(lr=1e-2), scans, steps=[1, 3])
    assert sorted(result.curve) == [0, 1, 3] and len(result.panels) == 2
    adapted_key = f"{ADAPTED} (3 steps)"
    assert list(result.panels[0].predictions) == [UNADAPTED, adapted_key]
    truth = np.concatenate([s.labels for s in scans])
    for key, k in ((UNADAPTED, 0), (adapted_key, 3)):
        pooled = np.concatenate([p.predictions[key] for p in result.panels])
        assert abs(result.curve[k] - miou(truth, pooled, 11)) < 1e-12
    # the steps move the weights: an untrained net at lr 1e-2 does not keep every label
    assert any((p.predictions[UNADAPTED] != p.predictions[adapted_key]).any() for p in result.panels)
    text = table([result])
    assert f"{100 * result.unadapted:.1f} | {100 * result.adapted:.1f}" in text and "office, warm light" in text
    paths = write_case_figures(result, tmp_path)
    assert sorted(p.name for p in paths) == ["miou_over_steps.png", "scan_rgbd_0.png", "scan_rgbd_1.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
