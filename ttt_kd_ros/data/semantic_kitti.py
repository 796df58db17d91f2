"""SemanticKITTI scans (velodyne .bin + .label) as Scans, with the odometry camera when present.

Two layouts are read:

- a benchmark sequence folder ``sequences/<seq>/`` with ``velodyne/<id>.bin``,
  ``labels/<id>.label`` and, from KITTI odometry, ``image_2/<id>.png`` and
  ``calib.txt`` (P0..P3 and ``Tr`` velodyne -> rectified camera 0);
- a flat folder holding ``<id>.bin`` and ``<id>.label`` side by side.

Labels map to SEMANTIC_KITTI19 training ids with
labels.semantic_kitti_to_train (moving classes folded, the rest ignored).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ttt_kd_ros.data.calib import load_image_rgb, rectified_camera_view
from ttt_kd_ros.data.pointfiles import read_kitti_bin
from ttt_kd_ros.labels import SEMANTIC_KITTI19, SEMANTIC_KITTI_RAW_IDS, check_raw_ids, semantic_kitti_to_train
from ttt_kd_ros.scan import CameraView, Scan


def read_odometry_calib(path: str | Path) -> dict[str, np.ndarray]:
    """KITTI odometry ``calib.txt`` -> {"P0".."P3": (3, 4), "Tr": (4, 4) velodyne -> rectified cam 0}."""
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        try:
            values = np.array([float(v) for v in rest.split()], dtype=np.float64)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: field {key.strip()!r} has a non-number") from None
        if values.size != 12:
            raise ValueError(f"{path}:{lineno}: field {key.strip()!r}: expected 12 numbers, got {values.size}")
        out[key.strip()] = values.reshape(3, 4)
    for name in ("P2", "Tr"):
        if name not in out:
            raise ValueError(f"{path}: missing field {name!r} (have {sorted(out)})")
    out["Tr"] = np.vstack([out["Tr"], [0.0, 0.0, 0.0, 1.0]])
    return out


class SemanticKittiScans:
    """Labelled scans of one sequence (or flat) folder in id order; indexable and iterable.

    A sequence with label files must have one for every scan (a missing one is an error naming it, never an
    unlabeled training scan); a sequence without any (the benchmark's test sequences) gives unlabeled scans.
    Images without calib.txt are an error unless ``cameras=False`` leaves the images out.
    """

    def __init__(self, root: str | Path, cameras: bool = True) -> None:
        self.root = Path(root)
        nested = (self.root / "velodyne").is_dir()
        self.scan_dir = self.root / "velodyne" if nested else self.root
        self.label_dir = self.root / "labels" if nested else self.root
        self.frame_ids = sorted(p.stem for p in self.scan_dir.glob("*.bin"))
        if not self.frame_ids:
            raise ValueError(f"{self.root}: expected velodyne/<id>.bin or <id>.bin files, found none")
        self.has_labels = any(self.label_dir.glob("*.label"))
        calib = self.root / "calib.txt"
        self.use_cameras = cameras and (self.root / "image_2").is_dir()
        if self.use_cameras and not calib.is_file():
            raise FileNotFoundError(f"{self.root}/image_2 has images but {calib} (their calibration) is missing; "
                                    "add it or read the scans without cameras (cameras=false)")
        self.calib = read_odometry_calib(calib) if self.use_cameras else None

    def __len__(self) -> int:
        return len(self.frame_ids)

    def scan_path(self, index: int) -> Path:
        return self.scan_dir / f"{self.frame_ids[index]}.bin"

    def __getitem__(self, index: int) -> Scan:
        frame = self.frame_ids[index]
        points = read_kitti_bin(self.scan_dir / f"{frame}.bin")
        label_path = self.label_dir / f"{frame}.label"
        labels = None
        if self.has_labels:
            if not label_path.is_file():
                raise FileNotFoundError(f"{label_path}: label file missing for scan {self.scan_path(index)}")
            raw = np.fromfile(label_path, dtype="<u4")
            if len(raw) != len(points):
                raise ValueError(f"{label_path}: expected {len(points)} labels (one per point), got {len(raw)}")
            check_raw_ids(raw & 0xFFFF, SEMANTIC_KITTI_RAW_IDS, str(label_path))
            labels = semantic_kitti_to_train(raw)
        return Scan(points_xyz_m=points[:, :3], intensity=np.clip(points[:, 3], 0.0, 1.0), labels=labels,
                    cameras=self._cameras(frame), frame_id="velodyne",
                    label_set=SEMANTIC_KITTI19.name if labels is not None else "",
                    stamp_ns=(index % len(self)) * 100_000_000)

    def _cameras(self, frame: str) -> list[CameraView]:
        if not self.use_cameras:
            return []
        image = self.root / "image_2" / f"{frame}.png"
        if not image.is_file():
            raise FileNotFoundError(f"{image}: image missing (the sequence has image_2/; every scan needs its image)")
        return [rectified_camera_view(load_image_rgb(image), self.calib["P2"], None, self.calib["Tr"],
                                      name="image_02")]

    def __iter__(self) -> Iterator[Scan]:
        for i in range(len(self)):
            yield self[i]
