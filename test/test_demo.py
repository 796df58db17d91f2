"""ttt_kd_demo: the README's main command runs end to end and says where its report is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT
from PIL import Image
from replay_books import assert_nothing_lost, bag_cloud_stamps

from ttt_kd_ros.demo.figures import ROW_TOP, TRUTH_COLUMN, ScanPanel, scan_figure_layout
from ttt_kd_ros.demo.scans import ADAPTED, UNADAPTED, case_scans
from ttt_kd_ros.labels import LABEL_SETS
from ttt_kd_ros.tools import demo


@pytest.mark.ros
@pytest.mark.slow
def test_demo_module_live_node_prints_table_and_writes_report(tmp_path: Path) -> None:
    pytest.importorskip("rclpy")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH"))
                                                      if p))
    done = subprocess.run([sys.executable, "-m", "ttt_kd_ros.tools.demo", "--out", str(tmp_path), "--frames", "2",
                           "--points", "1000", "--steps", "1", "--pictures", "0"], env=env,
                          capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("strategy"))
    assert [line.split()[0] for line in lines[header + 2:header + 4]] == ["none", "ttt_kd"]
    for name in ("report.json", "report.md", "latency.png", "miou.png", "stages.png"):
        assert (tmp_path / "report" / name).is_file()
        assert str(tmp_path / "report" / name) in done.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["mode"] == "node"
    bag_stamps = bag_cloud_stamps(tmp_path / "bag")
    assert len(bag_stamps) == 2  # --frames 2
    for run in report["runs"]:
        assert assert_nothing_lost(run, bag_stamps) == {}  # one frame at a time: nothing to drop
        summary = run["summary"]
        assert summary["frames_out"] == 2 and "miou" in summary


@pytest.mark.slow
def test_main_moving_camera_domain_replays_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A hand-held RGB-D camera moves every scan; the node takes fixed extrinsics, so the demo goes in-process."""
    code = demo.main(["--out", str(tmp_path), "--domain", "source", "--frames", "1", "--points", "600",
                      "--strategies", "none", "--steps", "1", "--pictures", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "inprocess replay" in out and "Segmenter in this process" in out
    assert (tmp_path / "report" / "report.md").is_file()
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["mode"] == "inprocess" and [r["summary"]["strategy"] for r in report["runs"]] == ["none"]
    assert [f["stamp_ns"] for f in report["runs"][0]["frames"]] == bag_cloud_stamps(tmp_path / "bag")  # --frames 1
    assert report["runs"][0]["summary"]["frames_out"] == 1


def test_main_missing_bag_fails_with_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--bag", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def _isolated_points(pixels: np.ndarray, labels: np.ndarray, limit: int = 20) -> list[int]:
    """Points whose 5 x 5 pixel neighbourhood holds no point of another class: their pixel must show their colour
    whichever point is drawn last there (squares of radius 1 can reach 2 pixels from another point's centre)."""
    picked = []
    for i in np.random.default_rng(0).permutation(len(pixels)):
        near = np.abs(pixels - pixels[i]).max(axis=1) <= 2
        if (labels[near] == labels[i]).all():
            picked.append(int(i))
        if len(picked) == limit:
            break
    return picked


@pytest.mark.slow
def test_demo_pictures_show_each_case_scan_in_its_true_colours(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = demo.main(["--out", str(tmp_path), "--domain", "source", "--frames", "1", "--points", "600",
                      "--strategies", "none", "--pictures", "1", "--picture-points", "1500", "--picture-steps", "1"])
    out = capsys.readouterr().out
    assert code == 0
    for case in demo.CASES:
        figure = tmp_path / "pictures" / case.sensor / f"scan_{case.sensor}_0.png"
        assert str(figure) in out and (figure.parent / "miou_over_steps.png").is_file()
        scan = case_scans(case, 1, seed=7, max_points=1500)[0]  # the demo's seed: the same scan, made again
        label_set = LABEL_SETS[scan.label_set]
        columns = {UNADAPTED: scan.labels, f"{ADAPTED} (1 steps)": scan.labels}  # the demo's columns
        layout = scan_figure_layout(ScanPanel("x", scan, columns), label_set)
        box = layout.boxes[(ROW_TOP, TRUTH_COLUMN)]
        with Image.open(figure) as image:
            png = np.asarray(image.convert("RGB"))
        assert (png.shape[1], png.shape[0]) == layout.size_px
        low = scan.points_xyz_m[:, 2] <= case.top_max_z_m
        pixels = layout.top_frame.to_pixels(scan.points_xyz_m[low])
        labels = scan.labels[low]
        checked = _isolated_points(pixels, labels)
        assert len(checked) >= 5
        for i in checked:
            x, y = box.png_pixel(*pixels[i])
            assert tuple(png[y, x]) == tuple(label_set.colors_rgb[labels[i]]), (case.sensor, i)
