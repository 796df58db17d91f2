"""Readers for the point-cloud files the data loaders read.

Raw float32 ``.bin`` files (KITTI, nuScenes ``.pcd.bin``) carry no header, so
the caller must know the number of fields per point; the named readers fix it
per format and check that the file size fits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

KITTI_FIELDS = 4  # x, y, z, reflectance
NUSCENES_FIELDS = 5  # x, y, z, intensity, ring index


def read_float_bin(path: str | Path, num_fields: int) -> np.ndarray:
    """Headerless little-endian float32 file -> (N, num_fields) float32.

    The size is checked in bytes first: np.fromfile silently drops a partial trailing value, so a file cut
    mid-value would load with fewer points and the error would surface later, blaming the label file.
    """
    path = Path(path)
    row_bytes = 4 * num_fields
    size = path.stat().st_size
    if num_fields > 0 and size % row_bytes != 0:
        raise ValueError(f"{path}: {size} bytes is not a whole number of {num_fields}-float32 rows ({row_bytes} "
                         f"bytes each): the file is truncated or not in this format")
    raw = np.fromfile(path, dtype="<f4")
    if num_fields <= 0 or raw.size % num_fields != 0:
        raise ValueError(
            f"{path}: {raw.size} float32 values do not split into rows of {num_fields} fields "
            f"(wrong format or truncated file)"
        )
    return raw.reshape(-1, num_fields).astype(np.float32, copy=False)


def read_kitti_bin(path: str | Path) -> np.ndarray:
    """KITTI / SemanticKITTI velodyne scan -> (N, 4) float32 x, y, z, reflectance."""
    return read_float_bin(path, KITTI_FIELDS)


def read_nuscenes_bin(path: str | Path) -> np.ndarray:
    """nuScenes LIDAR_TOP ``.pcd.bin`` -> (N, 5) float32 x, y, z, intensity (0-255), ring."""
    return read_float_bin(path, NUSCENES_FIELDS)
