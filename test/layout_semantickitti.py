"""A tiny SemanticKITTI tree in the real on-disk layout (odometry images and calib included), for tests.

    ROOT/sequences/<seq>/velodyne/<id>.bin   float32 x, y, z, remission
    ROOT/sequences/<seq>/labels/<id>.label   uint32: low 16 bits raw class id, high 16 instance id
    ROOT/sequences/<seq>/image_2/<id>.png    left colour camera (KITTI odometry)
    ROOT/sequences/<seq>/calib.txt           P0..P3 and Tr (velodyne -> rectified camera 0), 12 numbers each

The scene is a road with a car and a building in front of the camera, so every
scan has labelled points that the camera sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_WH = (96, 32)
FOCAL_PX = 40.0
# KITTI's velodyne -> camera axes: x_cam = -y_velo, y_cam = -z_velo, z_cam = x_velo.
TR_VELO_TO_CAM = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
RAW_ROAD, RAW_CAR, RAW_BUILDING, RAW_UNLABELED = 40, 10, 50, 0


def projection_p2() -> np.ndarray:
    w, h = IMAGE_WH
    return np.array([[FOCAL_PX, 0.0, w / 2, 0.0], [0.0, FOCAL_PX, h / 2, 0.0], [0.0, 0.0, 1.0, 0.0]])


def scan_points(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) float32 points and (N,) uint32 raw labels: road below, a car ahead, a building behind it."""
    n_road, n_car = count // 2, count // 4
    n_building = count - n_road - n_car
    road = np.column_stack([rng.uniform(2, 20, n_road), rng.uniform(-6, 6, n_road), np.full(n_road, -1.7)])
    car = np.column_stack([rng.uniform(6, 8, n_car), rng.uniform(-1, 1, n_car), rng.uniform(-1.5, -0.2, n_car)])
    building = np.column_stack([np.full(n_building, 18.0), rng.uniform(-8, 8, n_building),
                                rng.uniform(-1.5, 3.0, n_building)])
    xyz = np.vstack([road, car, building])
    remission = rng.uniform(0, 1, (count, 1))
    raw = np.concatenate([np.full(n_road, RAW_ROAD), np.full(n_car, RAW_CAR), np.full(n_building, RAW_BUILDING)])
    instance = np.where(raw == RAW_CAR, 7, 0)
    return np.hstack([xyz, remission]).astype(np.float32), (raw | (instance << 16)).astype(np.uint32)


def write_calib(path: Path) -> None:
    p2 = projection_p2()
    lines = [f"P{i}: " + " ".join(f"{v:.6e}" for v in p2.reshape(-1)) for i in range(4)]
    lines.append("Tr: " + " ".join(f"{v:.6e}" for v in TR_VELO_TO_CAM.reshape(-1)))
    path.write_text("\n".join(lines) + "\n")


def write_semantickitti(root: Path, sequences: dict[str, int], points: int = 600, images: bool = True,
                        labels: bool = True, seed: int = 0) -> Path:
    """ROOT/sequences/<seq>/ with ``sequences[seq]`` scans each; returns ROOT."""
    rng = np.random.default_rng(seed)
    for seq, count in sequences.items():
        folder = root / "sequences" / seq
        (folder / "velodyne").mkdir(parents=True)
        if labels:
            (folder / "labels").mkdir()
        if images:
            (folder / "image_2").mkdir()
            write_calib(folder / "calib.txt")
        for i in range(count):
            pts, raw = scan_points(rng, points)
            pts.tofile(folder / "velodyne" / f"{i:06d}.bin")
            if labels:
                raw.tofile(folder / "labels" / f"{i:06d}.label")
            if images:
                pixels = rng.integers(0, 255, (IMAGE_WH[1], IMAGE_WH[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / "image_2" / f"{i:06d}.png")
    return root
