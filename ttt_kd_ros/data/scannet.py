"""ScanNet RGB-D frames (the SensReader export) as Scans.

Layout of one scene folder (what ScanNet's SensReader writes, plus 2D labels)::

    color/<i>.jpg            RGB, usually 1296x968
    depth/<i>.png            uint16 depth in millimetres, usually 640x480
    pose/<i>.txt             4x4 world_from_camera (rows; -inf for lost tracking)
    intrinsic/intrinsic_color.txt, intrinsic/intrinsic_depth.txt   4x4 (K in the top-left 3x3)
    intrinsic/extrinsic_depth.txt   optional 4x4 colour_from_depth (identity if absent)
    label-filt/<i>.png       optional NYU40 ids per colour pixel (0 = unannotated)

A scene with a label folder (label-filt/, label/ or label40/) must have a label png for every frame and only
NYU40 ids (0..40) in it; a scene without one gives unlabeled scans (labels None, label_set ""). Missing files
(colour, depth, pose, label, intrinsics) are FileNotFoundErrors naming the file.

Depth pixels are back-projected with the depth intrinsics, moved into the
colour camera and projected into the colour image for their colour and
label, so the two image sizes never have to agree. A scan fuses
``frames_per_scan`` frames in ScanNet's world frame (like a reconstruction
chunk); each frame's colour image becomes a CameraView with depth_m when the
two images have the same size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from ttt_kd_ros.labels import NYU40_RAW_IDS, SCANNET20, check_raw_ids, nyu40_to_scannet20
from ttt_kd_ros.scan import IGNORE_LABEL, CameraIntrinsics, CameraView, Scan

LABEL_DIRS = ("label-filt", "label", "label40")


def read_matrix(path: Path, shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    """A whitespace-separated matrix file (ScanNet pose / intrinsic .txt); FileNotFoundError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    values = np.loadtxt(path, dtype=np.float64).reshape(-1)
    if values.size != shape[0] * shape[1]:
        raise ValueError(f"{path}: expected {shape[0] * shape[1]} numbers, got {values.size}")
    return values.reshape(shape)


class ScanNetFrames:
    """Scans from one ScanNet scene folder, indexable and iterable.

    Scan i fuses frames ids[i*frames_per_scan*frame_step] ... taken every
    ``frame_step`` frames. Frames whose pose is not finite are skipped.
    """

    def __init__(self, scene_dir: str | Path, frame_step: int = 1, frames_per_scan: int = 1,
                 depth_scale: float = 1000.0, max_depth_m: float = 10.0, max_points: int | None = None,
                 seed: int = 0) -> None:
        self.root = Path(scene_dir)
        if not (self.root / "color").is_dir() or not (self.root / "depth").is_dir():
            raise ValueError(f"{self.root}: expected a ScanNet scene folder with color/ and depth/")
        if frame_step < 1 or frames_per_scan < 1:
            raise ValueError(f"frame_step and frames_per_scan: expected >= 1, got {frame_step}, {frames_per_scan}")
        self.frame_step = frame_step
        self.frames_per_scan = frames_per_scan
        self.depth_scale = depth_scale
        self.max_depth_m = max_depth_m
        self.max_points = max_points
        self.seed = seed
        ids = sorted(int(p.stem) for p in (self.root / "color").glob("*.jpg"))
        no_color = sorted(set(int(p.stem) for p in (self.root / "depth").glob("*.png")) - set(ids))
        if no_color:
            raise FileNotFoundError(f"{self.root / 'color' / f'{no_color[0]}.jpg'}: colour image missing for "
                                    f"depth/{no_color[0]}.png ({len(no_color)} depth frame(s) without colour)")
        for name in ("intrinsic_color.txt", "intrinsic_depth.txt"):
            if not (self.root / "intrinsic" / name).is_file():
                raise FileNotFoundError(f"{self.root / 'intrinsic' / name}: missing; the scene's images have no "
                                        "calibration (an image without calibration cannot be back-projected)")
        self.frame_ids = [i for i in ids[::frame_step] if np.isfinite(self._pose(i)).all()]
        self.K_color = read_matrix(self.root / "intrinsic" / "intrinsic_color.txt")[:3, :3]
        self.K_depth = read_matrix(self.root / "intrinsic" / "intrinsic_depth.txt")[:3, :3]
        extrinsic = self.root / "intrinsic" / "extrinsic_depth.txt"
        self.color_from_depth = read_matrix(extrinsic) if extrinsic.exists() else np.eye(4)
        self.label_dir = next((self.root / d for d in LABEL_DIRS if (self.root / d).is_dir()), None)

    @property
    def has_labels(self) -> bool:
        return self.label_dir is not None

    def _pose(self, frame: int) -> np.ndarray:
        return read_matrix(self.root / "pose" / f"{frame}.txt")

    def __len__(self) -> int:
        return len(self.frame_ids) // self.frames_per_scan

    def __getitem__(self, index: int) -> Scan:
        if not -len(self) <= index < len(self):
            raise IndexError(f"ScanNetFrames index {index} out of range for {len(self)} scans")
        index %= len(self)
        start = index * self.frames_per_scan
        return self.load(self.frame_ids[start:start + self.frames_per_scan], stamp_index=index)

    def __iter__(self) -> Iterator[Scan]:
        for i in range(len(self)):
            yield self[i]

    def load(self, frames: list[int], stamp_index: int = 0) -> Scan:
        """One Scan fusing ``frames`` (ids) in the world frame."""
        pts, rgbs, labels, cameras = [], [], [], []
        for frame in frames:
            p, c, lab, cam = self._frame(frame)
            pts.append(p)
            rgbs.append(c)
            labels.append(lab)
            cameras.append(cam)
        xyz, rgb = np.concatenate(pts), np.concatenate(rgbs)
        lab = np.concatenate(labels) if self.has_labels else None
        if self.max_points is not None and len(xyz) > self.max_points:
            keep = np.sort(np.random.default_rng([self.seed, stamp_index]).choice(len(xyz), self.max_points,
                                                                                   replace=False))
            xyz, rgb, lab = xyz[keep], rgb[keep], None if lab is None else lab[keep]
        return Scan(points_xyz_m=xyz, rgb=rgb, labels=lab, cameras=cameras, frame_id="scannet_world",
                    label_set=SCANNET20.name if self.has_labels else "", stamp_ns=stamp_index * 33_333_333)

    def _frame(self, frame: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, CameraView]:
        color = np.asarray(_open_image(self.root / "color" / f"{frame}.jpg").convert("RGB"))
        depth_raw = np.asarray(_open_image(self.root / "depth" / f"{frame}.png"))
        if depth_raw.ndim != 2:
            raise ValueError(f"{self.root}/depth/{frame}.png: expected a single-channel 16-bit image, "
                             f"got shape {depth_raw.shape}")
        depth = depth_raw.astype(np.float32) / self.depth_scale
        world_from_color = self._pose(frame)
        h_c, w_c = color.shape[:2]

        # Depth pixels -> depth camera -> colour camera.
        v, u = np.nonzero((depth > 0) & (depth < self.max_depth_m))
        z = depth[v, u].astype(np.float64)
        rays = np.stack([u, v, np.ones_like(u)], axis=1).astype(np.float64) @ np.linalg.inv(self.K_depth).T
        in_depth = rays * z[:, None]
        in_color = in_depth @ self.color_from_depth[:3, :3].T + self.color_from_depth[:3, 3]
        uvw = in_color @ self.K_color.T
        cu = np.round(uvw[:, 0] / uvw[:, 2]).astype(np.int64)
        cv = np.round(uvw[:, 1] / uvw[:, 2]).astype(np.int64)
        seen = (uvw[:, 2] > 0) & (cu >= 0) & (cu < w_c) & (cv >= 0) & (cv < h_c)
        in_color, cu, cv = in_color[seen], cu[seen], cv[seen]

        rgb = color[cv, cu].astype(np.float32) / 255.0
        labels = np.full(len(cu), IGNORE_LABEL, dtype=np.int64)
        if self.label_dir is not None:
            label_path = self.label_dir / f"{frame}.png"
            label_img = np.asarray(_open_image(label_path))
            if label_img.ndim != 2:
                raise ValueError(f"{label_path}: expected a single-channel image of NYU40 ids, "
                                 f"got shape {label_img.shape}")
            if label_img.shape != (h_c, w_c):
                raise ValueError(f"{label_path}: expected {w_c}x{h_c} like the colour image, "
                                 f"got {label_img.shape[1]}x{label_img.shape[0]}")
            if label_img.size and (int(label_img.max()) > max(NYU40_RAW_IDS) or int(label_img.min()) < 0):
                check_raw_ids(label_img, NYU40_RAW_IDS, str(label_path))
            labels = nyu40_to_scannet20(label_img[cv, cu])
        world = in_color @ world_from_color[:3, :3].T + world_from_color[:3, 3]

        intr = CameraIntrinsics(K=self.K_color, width_px=w_c, height_px=h_c)
        same_size = depth.shape == (h_c, w_c) and np.allclose(self.color_from_depth, np.eye(4))
        cam = CameraView(image_rgb=color, intrinsics=intr, cam_from_cloud=np.linalg.inv(world_from_color),
                         name=f"color_{frame}", depth_m=depth if same_size else None)
        return world.astype(np.float32), rgb, labels, cam


def _open_image(path: Path) -> Image.Image:
    """An image file opened with PIL; FileNotFoundError naming it when it is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    return Image.open(path)
