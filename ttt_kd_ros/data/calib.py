"""Real rig calibrations -> CameraIntrinsics / CameraView.

Each format stores the same geometry differently; these parsers turn them
into the one model ``geometry.project_points`` understands, keeping each
format's own chain rather than pre-multiplying it, so a reader can check a
view against the file by eye:

- KITTI object ``calib/*.txt``: pixel = P2 @ R0_rect @ Tr_velo_to_cam @ X, i.e.
  cam_from_cloud = Tr_velo_to_cam, rectification = R0_rect, projection = P2
  (what a ROS rectified CameraInfo carries too).
- mmdet3d nuScenes info JSONs: per camera ``cam2img`` = K 3x3 and
  ``lidar2cam`` 4x4, undistorted images.

Images load with PIL as (H, W, 3) uint8; the image, not the calibration file,
decides the image size.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ttt_kd_ros.scan import CameraIntrinsics, CameraView


def load_image_rgb(path: str | Path) -> np.ndarray:
    """Any PIL-readable image -> (H, W, 3) uint8 RGB (read-only, as PIL hands it out; copy to modify)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as err:  # PIL: UnidentifiedImageError, "image file is truncated"
        raise ValueError(f"{path}: not a readable image ({err}); replace or remove the file") from None


# ---------------------------------------------------------------------------------------------------- KITTI txt


@dataclass
class KittiCalib:
    """One KITTI object-benchmark calibration file.

    P: camera index -> (3, 4) rectified projection; R0_rect (3, 3);
    Tr_velo_to_cam (4, 4) velodyne -> unrectified camera 0; Tr_imu_to_velo
    (4, 4) when present.
    """

    P: dict[int, np.ndarray]
    R0_rect: np.ndarray
    Tr_velo_to_cam: np.ndarray
    Tr_imu_to_velo: np.ndarray | None = None
    source: str = ""
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def read_kitti_calib(path: str | Path) -> KittiCalib:
    """Parse ``P0..P3``, ``R0_rect``, ``Tr_velo_to_cam`` (and ``Tr_imu_to_velo``) from a KITTI calib txt."""
    path = Path(path)
    values: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        if not sep:
            raise ValueError(f"{path}:{lineno}: expected 'key: numbers', got {line[:60]!r}")
        try:
            values[key.strip()] = np.array([float(v) for v in rest.split()], dtype=np.float64)
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: field {key.strip()!r} has a non-number: {exc}") from None

    def take(name: str, size: int) -> np.ndarray:
        if name not in values:
            raise ValueError(f"{path}: missing field {name!r} (have {sorted(values)})")
        if values[name].size != size:
            raise ValueError(f"{path}: field {name!r}: expected {size} numbers, got {values[name].size}")
        return values.pop(name)

    projections = {i: take(f"P{i}", 12).reshape(3, 4) for i in range(4) if f"P{i}" in values}
    if 2 not in projections:
        raise ValueError(f"{path}: missing field 'P2' (the colour camera)")
    R0 = take("R0_rect", 9).reshape(3, 3)
    velo = _homogeneous(take("Tr_velo_to_cam", 12).reshape(3, 4))
    imu = _homogeneous(take("Tr_imu_to_velo", 12).reshape(3, 4)) if "Tr_imu_to_velo" in values else None
    return KittiCalib(P=projections, R0_rect=R0, Tr_velo_to_cam=velo, Tr_imu_to_velo=imu, source=str(path),
                      extra=values)


def kitti_camera_view(
    calib: KittiCalib | str | Path, image: np.ndarray | str | Path, camera: int = 2, stamp_ns: int = 0
) -> CameraView:
    """A rectified KITTI camera (default 2, the left colour one) seeing the velodyne frame."""
    if not isinstance(calib, KittiCalib):
        calib = read_kitti_calib(calib)
    if camera not in calib.P:
        raise ValueError(f"{calib.source}: no P{camera}; cameras present: {sorted(calib.P)}")
    image_rgb = load_image_rgb(image) if isinstance(image, (str, Path)) else image
    return rectified_camera_view(
        image_rgb, calib.P[camera], calib.R0_rect, calib.Tr_velo_to_cam, name=f"image_{camera:02d}", stamp_ns=stamp_ns
    )


def rectified_camera_view(
    image_rgb: np.ndarray,
    P: np.ndarray,
    R_rect: np.ndarray | None,
    cam_from_cloud: np.ndarray,
    name: str = "camera",
    stamp_ns: int = 0,
) -> CameraView:
    """A view whose pixels follow P @ R_rect @ cam_from_cloud (KITTI, ROS image_rect).

    K is P's left 3x3 block, as ROS fills CameraInfo.K for rectified cameras.
    """
    P = np.asarray(P, dtype=np.float64)
    if P.shape == (4, 4):
        P = P[:3]
    if P.shape != (3, 4):
        raise ValueError(f"camera {name}: projection P must be 3x4 (or 4x4 homogeneous), got {P.shape}")
    h, w = image_rgb.shape[:2]
    intrinsics = CameraIntrinsics(K=P[:, :3], width_px=w, height_px=h, rectification=R_rect, projection=P)
    return CameraView(image_rgb=image_rgb, intrinsics=intrinsics, cam_from_cloud=_as_4x4(cam_from_cloud, name),
                      stamp_ns=stamp_ns, name=name)


# ---------------------------------------------------------------------------------------------- mmdet3d info JSONs


@functools.lru_cache(maxsize=4)
def _parsed_info(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    """The parsed JSON of an info file, kept while the file is unchanged: a data set's info file is read once,
    not once per camera of every scan (a nuScenes trainval info file is hundreds of MB)."""
    return json.loads(Path(path).read_text())


def seconds_to_ns(seconds: float | str) -> int:
    """Info-file seconds (floats with microsecond precision) -> integer ns on the whole microsecond, so a float's
    last bits do not show up as stray nanoseconds."""
    return round(float(seconds) * 1e6) * 1000


def read_info(info_path: str | Path, index: int = 0) -> tuple[str, dict[str, Any]]:
    """An mmdet3d info JSON -> (data set name in lower case, the ``data_list[index]`` entry; read-only)."""
    info_path = Path(info_path)
    stat = info_path.stat()
    doc = _parsed_info(str(info_path.resolve()), stat.st_mtime_ns, stat.st_size)
    meta = doc.get("metainfo", {})
    dataset = str(meta.get("DATASET", meta.get("dataset", ""))).lower()
    frames = doc.get("data_list")
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{info_path}: expected a non-empty 'data_list'")
    if not 0 <= index < len(frames):
        raise ValueError(f"{info_path}: data_list index {index} out of range (0..{len(frames) - 1})")
    return dataset, frames[index]


def info_lidar_path(info_path: str | Path, index: int = 0) -> Path:
    """The point file an mmdet3d info entry refers to, resolved next to the JSON."""
    _, frame = read_info(info_path, index)
    try:
        name = frame["lidar_points"]["lidar_path"]
    except KeyError:
        raise ValueError(f"{info_path}: data_list[{index}] has no lidar_points.lidar_path") from None
    return Path(info_path).parent / Path(name).name


def _imaged_cameras(images: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, entry) of the info's cameras that have an image (other keys are calibration, not cameras)."""
    for cam_name, cam in images.items():
        if isinstance(cam, dict) and "img_path" in cam:
            yield cam_name, cam


def _pinhole_view(image: np.ndarray, K: np.ndarray, cam_from_cloud: np.ndarray, name: str,
                  stamp_ns: int = 0) -> CameraView:
    """An undistorted camera whose size is the image's own (info files do not state it)."""
    h, w = image.shape[:2]
    return CameraView(image_rgb=image, intrinsics=CameraIntrinsics(K=K, width_px=w, height_px=h),
                      cam_from_cloud=cam_from_cloud, stamp_ns=stamp_ns, name=name)


def nuscenes_info_views(
    info_path: str | Path, index: int = 0, image_dir: str | Path | None = None
) -> list[CameraView]:
    """nuScenes info: six pinhole cameras (images are undistorted) seeing the LIDAR_TOP frame."""
    _, frame = read_info(info_path, index)
    views = []
    for cam_name, cam in _imaged_cameras(_field(frame, "images", info_path)):
        K = _matrix(_field(cam, "cam2img", info_path), info_path, f"images.{cam_name}.cam2img")[:3, :3]
        T = _matrix(_field(cam, "lidar2cam", info_path), info_path, f"images.{cam_name}.lidar2cam")
        image = load_image_rgb(_image_path(info_path, cam["img_path"], image_dir))
        stamp_ns = seconds_to_ns(cam.get("timestamp", 0.0))
        views.append(_pinhole_view(image, K, T, cam_name, stamp_ns))
    return views


# --------------------------------------------------------------------------------------------------------- shared


def _homogeneous(T34: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3] = T34
    return T


def _as_4x4(T: np.ndarray, name: str) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape == (3, 4):
        return _homogeneous(T)
    if T.shape != (4, 4):
        raise ValueError(f"camera {name}: cam_from_cloud must be 4x4 or 3x4, got {T.shape}")
    return T


def _field(container: Any, key: str, source: str | Path) -> Any:
    if not isinstance(container, dict) or key not in container:
        have = sorted(container) if isinstance(container, dict) else type(container).__name__
        raise ValueError(f"{source}: missing field {key!r} (have {have})")
    return container[key]


def _matrix(value: Any, source: str | Path, name: str) -> np.ndarray:
    M = np.asarray(value, dtype=np.float64)
    if M.ndim != 2 or M.shape not in ((3, 3), (3, 4), (4, 4)):
        raise ValueError(f"{source}: {name}: expected a 3x3, 3x4 or 4x4 matrix, got shape {M.shape}")
    if not np.isfinite(M).all():
        raise ValueError(f"{source}: {name}: matrix has non-finite entries")
    return _homogeneous(M) if M.shape == (3, 4) else M


def _image_path(info_path: str | Path, img_path: str, image_dir: str | Path | None) -> Path:
    folder = Path(image_dir) if image_dir is not None else Path(info_path).parent
    return folder / Path(img_path).name
