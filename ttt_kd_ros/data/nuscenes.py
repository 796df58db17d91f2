"""nuScenes samples (LIDAR_TOP + six cameras, from an mmdet3d info JSON) as Scans.

The info JSON (``data_list[i]``: ``lidar_points.lidar_path``, per camera
``img_path``, ``cam2img`` K and ``lidar2cam``) is read by data.calib; the
cloud stays in the LIDAR_TOP frame. nuScenes-lidarseg labels (one uint8 per
point, the 32 lidarseg class indices) are read when a ``_lidarseg.bin`` file
is given and mapped onto SEMANTIC_KITTI19 by ``labels.LIDARSEG_TO_SEMANTIC_KITTI``,
a cross-data-set map: classes without a counterpart (noise, animals, debris,
cones, ego vehicle, static.other) are ignored, and static.manmade (buildings,
but also poles and signs) becomes "building".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ttt_kd_ros.data.calib import info_lidar_path, nuscenes_info_views, read_info, seconds_to_ns
from ttt_kd_ros.data.pointfiles import read_nuscenes_bin
from ttt_kd_ros.labels import SEMANTIC_KITTI19, lidarseg_to_semantic_kitti
from ttt_kd_ros.scan import Scan

lidarseg_to_train = lidarseg_to_semantic_kitti
"""nuScenes-lidarseg class indices -> SEMANTIC_KITTI19 training ids (the map lives in labels.py)."""


def load_nuscenes_sample(info_path: str | Path, index: int = 0, lidarseg_path: str | Path | None = None,
                         image_dir: str | Path | None = None) -> Scan:
    """Sample ``index`` of an mmdet3d nuScenes info JSON; points and images resolve next to the JSON."""
    _, frame = read_info(info_path, index)
    points = read_nuscenes_bin(info_lidar_path(info_path, index))
    labels = None
    if lidarseg_path is not None:
        raw = np.fromfile(lidarseg_path, dtype=np.uint8)
        if len(raw) != len(points):
            raise ValueError(f"{lidarseg_path}: expected {len(points)} labels (one per point), got {len(raw)}")
        labels = lidarseg_to_train(raw)
    return Scan(
        points_xyz_m=points[:, :3],
        intensity=np.clip(points[:, 3] / 255.0, 0.0, 1.0),  # nuScenes stores 0-255
        cameras=nuscenes_info_views(info_path, index=index, image_dir=image_dir),
        labels=labels,
        stamp_ns=seconds_to_ns(frame.get("timestamp", 0.0)),
        frame_id="LIDAR_TOP",
        label_set=SEMANTIC_KITTI19.name if labels is not None else "",
    )
