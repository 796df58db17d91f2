"""Real rig calibrations -> CameraIntrinsics / CameraView.

Each format stores the same geometry differently; these parsers turn them
into the one model ``geometry.project_points`` understands, keeping each
format's own chain rather than pre-multiplying it, so a reader can check a
view against the file by eye:

- KITTI object ``calib/*.txt``: pixel = P2 @ R0_rect @ Tr_velo_to_cam @ X, i.e.
  cam_from_cloud = Tr_velo_to_cam, rectification = R0_rect, projection = P2
  (what a ROS rectified CameraInfo carries too).
- mmdet3d info JSONs: KITTI (``cam2img`` = P 4x4, ``R0_rect``,
  ``Tr_velo_to_cam``), nuScenes (per camera ``cam2img`` = K 3x3, ``lidar2cam``
  4x4, undistorted images), SUN RGB-D (``depth2img`` 3x3 = K @ R, no
  translation: split by an RQ decomposition).
- PJLab SensorsCalibration JSONs: K + 4 OpenCV coefficients (k1 k2 p1 p2) on
  the raw image, and a lidar -> camera 4x4.

Images load with PIL as (H, W, 3) uint8; the image, not the calibration file,
decides the image size (PJLab's file states 1080 rows for 1200-row images).
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
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


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


def mmdet3d_info_views(info_path: str | Path, index: int = 0, image_dir: str | Path | None = None) -> list[CameraView]:
    """Every camera with an image in an mmdet3d info JSON (KITTI, nuScenes or SUN RGB-D)."""
    dataset, _ = read_info(info_path, index)
    readers = {"kitti": kitti_info_views, "nuscenes": nuscenes_info_views, "sunrgbd": sunrgbd_info_views}
    if dataset not in readers:
        raise ValueError(f"{info_path}: metainfo data set {dataset!r} is not one of {sorted(readers)}")
    return readers[dataset](info_path, index=index, image_dir=image_dir)


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


def kitti_info_views(info_path: str | Path, index: int = 0, image_dir: str | Path | None = None) -> list[CameraView]:
    """KITTI info: cameras that list an ``img_path``, as P (cam2img) @ R0_rect @ Tr_velo_to_cam."""
    _, frame = read_info(info_path, index)
    images = _field(frame, "images", info_path)
    R0 = _matrix(_field(images, "R0_rect", info_path), info_path, "images.R0_rect")[:3, :3]
    velo = _matrix(_field(_field(frame, "lidar_points", info_path), "Tr_velo_to_cam", info_path), info_path,
                   "lidar_points.Tr_velo_to_cam")
    views = []
    for cam_name, cam in _imaged_cameras(images):
        P = _matrix(_field(cam, "cam2img", info_path), info_path, f"images.{cam_name}.cam2img")
        image = load_image_rgb(_image_path(info_path, cam["img_path"], image_dir))
        views.append(rectified_camera_view(image, P[:3], R0, velo, name=cam_name))
    return views


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


def sunrgbd_info_views(
    info_path: str | Path, index: int = 0, image_dir: str | Path | None = None
) -> list[CameraView]:
    """SUN RGB-D info: the RGB camera seeing the upright depth frame through ``depth2img`` = K @ R."""
    _, frame = read_info(info_path, index)
    views = []
    for cam_name, cam in _imaged_cameras(_field(frame, "images", info_path)):
        M = np.asarray(_field(cam, "depth2img", info_path), dtype=np.float64)
        if M.shape != (3, 3):
            raise ValueError(f"{info_path}: images.{cam_name}.depth2img: expected 3x3, got {M.shape}")
        K, R = decompose_camera_matrix(M, source=f"{info_path}: images.{cam_name}.depth2img")
        T = np.eye(4)
        T[:3, :3] = R
        image = load_image_rgb(_image_path(info_path, cam["img_path"], image_dir))
        views.append(_pinhole_view(image, K, T, cam_name))
    return views


def decompose_camera_matrix(M: np.ndarray, source: str = "camera matrix") -> tuple[np.ndarray, np.ndarray]:
    """M (3, 3) = K @ R -> (K upper-triangular with K[2,2] = 1 and positive focals, R a rotation).

    RQ decomposition done as a QR of the row-reversed transpose. The overall
    scale of M is free (homogeneous), so K is normalised by K[2, 2].
    """
    M = np.asarray(M, dtype=np.float64)
    flip = np.eye(3)[::-1]
    q, r = np.linalg.qr((flip @ M).T)
    K = flip @ r.T @ flip
    R = flip @ q.T
    signs = np.diag(np.sign(np.diag(K)))
    K, R = K @ signs, signs @ R  # signs @ signs = I, so K @ R is unchanged
    if K[2, 2] == 0 or not np.isfinite(K).all():
        raise ValueError(f"{source}: cannot split into K @ R (singular matrix)")
    K = K / K[2, 2]
    if np.linalg.det(R) < 0:
        raise ValueError(f"{source}: K @ R with a mirrored R (det < 0); not a physical camera")
    return K, R


# ---------------------------------------------------------------------------------------------------- PJLab JSONs


def read_pjlab_intrinsics(path: str | Path, width_px: int, height_px: int) -> CameraIntrinsics:
    """PJLab ``*-intrinsic.json``: K and (k1, k2, p1, p2) on the raw image.

    The image size must come from the image itself: the file's
    ``img_dist_w/h`` are not reliable (the shipped sample says 1080 rows for a
    1200-row image).
    """
    path = Path(path)
    param = _single_entry(path)["param"]
    K = _matrix(_field(_field(param, "cam_K", path), "data", path), path, "param.cam_K.data")
    D = np.asarray(_field(_field(param, "cam_dist", path), "data", path), dtype=np.float64).reshape(-1)
    if D.size not in (4, 5, 8):
        raise ValueError(f"{path}: param.cam_dist: expected 4, 5 or 8 OpenCV coefficients, got {D.size}")
    model = "plumb_bob" if D.size <= 5 else "rational_polynomial"
    return CameraIntrinsics(K=K[:3, :3], width_px=width_px, height_px=height_px, distortion_model=model, D=D)


def read_pjlab_extrinsic(path: str | Path) -> np.ndarray:
    """PJLab ``<a>-to-<b>-extrinsic.json`` -> (4, 4) b_from_a (X_b = T @ X_a)."""
    path = Path(path)
    param = _single_entry(path)["param"]
    return _matrix(_field(_field(param, "sensor_calib", path), "data", path), path, "param.sensor_calib.data")


def pjlab_camera_view(
    intrinsic_json: str | Path, extrinsic_json: str | Path, image: np.ndarray | str | Path, name: str = ""
) -> CameraView:
    """The PJLab rig's distorted camera seeing the lidar frame."""
    image_rgb = load_image_rgb(image) if isinstance(image, (str, Path)) else image
    h, w = image_rgb.shape[:2]
    intrinsics = read_pjlab_intrinsics(intrinsic_json, width_px=w, height_px=h)
    T = read_pjlab_extrinsic(extrinsic_json)
    cam_name = name or _single_entry(Path(intrinsic_json)).get("sensor_name", "camera")
    return CameraView(image_rgb=image_rgb, intrinsics=intrinsics, cam_from_cloud=T, name=str(cam_name))


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


def _single_entry(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or len(doc) != 1:
        raise ValueError(f"{path}: expected one top-level calibration entry, got {list(doc)[:5]}")
    entry = next(iter(doc.values()))
    if not isinstance(entry, dict) or "param" not in entry:
        raise ValueError(f"{path}: calibration entry has no 'param'")
    return entry


def _image_path(info_path: str | Path, img_path: str, image_dir: str | Path | None) -> Path:
    folder = Path(image_dir) if image_dir is not None else Path(info_path).parent
    return folder / Path(img_path).name
