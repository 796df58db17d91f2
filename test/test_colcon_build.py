"""The package builds as a ROS 2 workspace member with colcon (what `colcon build` users run)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT


@pytest.mark.slow
def test_colcon_build_installs_share_files_and_scripts(tmp_path: Path) -> None:
    colcon = Path(sys.prefix) / "bin" / "colcon"
    if not colcon.exists():
        pytest.skip("colcon-common-extensions is not installed in this environment")
    src = tmp_path / "src" / "ttt_kd_ros"
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "install", "log", "__pycache__", "*.egg-info", "runs")
    shutil.copytree(REPO_ROOT, src, ignore=ignore)
    result = subprocess.run(
        [str(colcon), "build", "--packages-select", "ttt_kd_ros"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    share = tmp_path / "install" / "ttt_kd_ros" / "share" / "ttt_kd_ros"
    assert (share / "package.xml").is_file()
    assert (share / "launch" / "segment.launch.py").is_file()
    assert (share / "config" / "segment.yaml").is_file()
    index = tmp_path / "install" / "ttt_kd_ros" / "share" / "ament_index" / "resource_index" / "packages"
    assert (index / "ttt_kd_ros").is_file()
    # ros2 run looks for executables in lib/<package>.
    scripts = tmp_path / "install" / "ttt_kd_ros" / "lib" / "ttt_kd_ros"
    assert (scripts / "segment_node").is_file()
