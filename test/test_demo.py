"""ttt_kd_demo: the README's main command runs end to end and says where its report is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from ttt_kd_ros.tools import demo


@pytest.mark.ros
@pytest.mark.slow
def test_demo_module_live_node_prints_table_and_writes_report(tmp_path: Path) -> None:
    pytest.importorskip("rclpy")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH"))
                                                      if p))
    done = subprocess.run([sys.executable, "-m", "ttt_kd_ros.tools.demo", "--out", str(tmp_path), "--frames", "2",
                           "--points", "1000", "--steps", "1", "--accuracy-domain", ""], env=env,
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
    for run in report["runs"]:
        summary = run["summary"]
        assert summary["frames_in"] == 2 and summary["frames_in"] == summary["frames_out"] + summary["dropped"]
        assert "miou" in summary


@pytest.mark.slow
def test_main_moving_camera_domain_replays_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A hand-held RGB-D camera moves every scan; the node takes fixed extrinsics, so the demo goes in-process."""
    code = demo.main(["--out", str(tmp_path), "--domain", "source", "--frames", "1", "--points", "600",
                      "--strategies", "none", "--steps", "1", "--accuracy-domain", ""])
    out = capsys.readouterr().out
    assert code == 0
    assert "inprocess replay" in out and "Segmenter in this process" in out
    assert (tmp_path / "report" / "report.md").is_file()


def test_main_missing_bag_fails_with_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--bag", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
