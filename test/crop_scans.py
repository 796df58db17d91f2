"""A scan big enough to be cut into crops, for the crop and frozen-encoder tests (test_adapt_crops.py,
test_frozen_encoder.py)."""

from __future__ import annotations

import numpy as np

from ttt_kd_ros.scan import CameraIntrinsics, CameraView, Scan


def wall_and_floor_scan(points: int = 6000, seed: int = 0) -> Scan:
    """A 6 m wide wall 3 m in front of a camera that sees its middle third, and a floor behind the camera."""
    rng = np.random.default_rng(seed)
    wall = np.c_[rng.uniform(-3, 3, points // 2), rng.uniform(-1, 1, points // 2), np.full(points // 2, 3.0)]
    floor = np.c_[rng.uniform(-3, 3, points // 2), np.full(points // 2, 1.0), rng.uniform(-3, 0.5, points // 2)]
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    intrinsics = CameraIntrinsics(K=np.array([[40.0, 0, 32], [0, 40.0, 24], [0, 0, 1]]), width_px=64, height_px=48)
    camera = CameraView(image, intrinsics, np.eye(4), name="front")
    return Scan(np.concatenate([wall, floor]).astype(np.float32), cameras=[camera])
