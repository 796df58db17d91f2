"""The whole tree is ruff clean (configuration in ruff.toml)."""

import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT


def test_ruff_reports_no_problems() -> None:
    ruff = shutil.which("ruff") or str(REPO_ROOT / ".venv" / "bin" / "ruff")
    if not shutil.which(ruff):
        pytest.skip("ruff is not installed")
    result = subprocess.run([ruff, "check", str(REPO_ROOT)], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sys.version_info >= (3, 10)
