"""Where the package's shared files (launch/, config/) live.

A ROS install (colcon or `pip install .`) puts them under
share/ttt_kd_ros; an editable or source checkout only has them in the source
tree. This is the one place that decides, so every caller gets the same file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "ttt_kd_ros"
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _ament_share_dir() -> Path | None:
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory(PACKAGE))
    except (PackageNotFoundError, LookupError, ValueError, OSError):
        # OSError: no AMENT_PREFIX_PATH, i.e. no ROS environment sourced.
        return None


def _prefix_share_dir() -> Path | None:
    """share/ under the running interpreter's prefix (a venv after `pip install .`)."""
    candidate = Path(sys.prefix) / "share" / PACKAGE
    return candidate if (candidate / "package.xml").is_file() else None


def share_dir() -> Path:
    """The directory holding launch/ and config/: ament index, then prefix, then source tree."""
    override = os.environ.get("TTT_KD_ROS_SHARE")
    if override:
        return Path(override)
    for found in (_ament_share_dir(), _prefix_share_dir()):
        if found is not None:
            return found
    return SOURCE_ROOT


def share_file(*parts: str) -> Path:
    """A shared file by its path under share/ttt_kd_ros; FileNotFoundError names every place tried."""
    base = share_dir()
    path = base.joinpath(*parts)
    if path.exists():
        return path
    fallback = SOURCE_ROOT.joinpath(*parts)
    if fallback.exists():
        return fallback
    raise FileNotFoundError(f"{'/'.join(parts)}: not under {base} nor the source tree {SOURCE_ROOT}")
