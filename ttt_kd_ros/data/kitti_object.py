"""KITTI object-benchmark frames (velodyne + image_2 + calib) as Scans.

Layout (the benchmark's ``training``/``testing`` folder)::

    velodyne/<id>.bin   float32 x, y, z, reflectance
    image_2/<id>.png    left colour camera, rectified
    calib/<id>.txt      P0..P3, R0_rect, Tr_velo_to_cam

The cloud stays in the velodyne frame; the camera follows KITTI's rectified
chain P2 @ R0_rect @ Tr_velo_to_cam (see data.calib). The benchmark has 3D
boxes but no point labels, so Scans carry no labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ttt_kd_ros.data.calib import kitti_camera_view, read_kitti_calib
from ttt_kd_ros.data.pointfiles import read_kitti_bin
from ttt_kd_ros.scan import Scan


def load_kitti_object_frame(root: str | Path, frame_id: str) -> Scan:
    """Frame ``frame_id`` (e.g. "000008") of a KITTI object folder; the image is optional."""
    root = Path(root)
    points = read_kitti_bin(root / "velodyne" / f"{frame_id}.bin")
    image = root / "image_2" / f"{frame_id}.png"
    cameras = []
    if image.is_file():
        cameras.append(kitti_camera_view(read_kitti_calib(root / "calib" / f"{frame_id}.txt"), image, camera=2))
    return Scan(points_xyz_m=points[:, :3], intensity=np.clip(points[:, 3], 0.0, 1.0), cameras=cameras,
                frame_id="velodyne")


class KittiObjectFrames:
    """All frames of a KITTI object folder in id order, indexable and iterable."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / "velodyne").is_dir():
            raise ValueError(f"{self.root}: expected a KITTI object folder with velodyne/ (and image_2/, calib/)")
        self.frame_ids = sorted(p.stem for p in (self.root / "velodyne").glob("*.bin"))

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __getitem__(self, index: int) -> Scan:
        scan = load_kitti_object_frame(self.root, self.frame_ids[index])
        scan.stamp_ns = (index % len(self)) * 100_000_000  # 10 Hz like the velodyne
        return scan

    def __iter__(self) -> Iterator[Scan]:
        for i in range(len(self)):
            yield self[i]
