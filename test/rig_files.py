"""Readers of real rig files that only the tests read: the package's data loaders do not take these formats.

- mmdet3d KITTI info JSON (``cam2img`` = P 4x4, ``R0_rect``, ``Tr_velo_to_cam``): the KITTI demo frame;
- mmdet3d SUN RGB-D info JSON (``depth2img`` 3x3 = K @ R, no translation: split by an RQ decomposition) and its
  6-float point file (x, y, z, r, g, b);
- PJLab SensorsCalibration JSONs (K + 4 OpenCV coefficients on the raw image, a lidar -> camera 4x4) and the
  rig's ASCII PCD cloud.

They serve the projection checks in test_calib.py and test_targets.py (nuScenes info JSONs are read by the
package itself: ``calib.nuscenes_info_views``). Images decide the image size (PJLab's file says 1080 rows for
1200-row images).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ttt_kd_ros.data.calib import load_image_rgb, read_info, rectified_camera_view
from ttt_kd_ros.data.pointfiles import read_float_bin
from ttt_kd_ros.scan import CameraIntrinsics, CameraView


def _imaged(images: dict) -> list[tuple[str, dict]]:
    return [(name, cam) for name, cam in images.items() if isinstance(cam, dict) and "img_path" in cam]


def _image(info: Path, cam: dict) -> np.ndarray:
    return load_image_rgb(info.parent / Path(cam["img_path"]).name)


def kitti_info_views(info: Path) -> list[CameraView]:
    """The cameras of an mmdet3d KITTI info entry that list an image: P (cam2img) @ R0_rect @ Tr_velo_to_cam."""
    _, frame = read_info(info)
    R0 = np.asarray(frame["images"]["R0_rect"], dtype=np.float64)[:3, :3]
    velo = np.asarray(frame["lidar_points"]["Tr_velo_to_cam"], dtype=np.float64)
    return [rectified_camera_view(_image(info, cam), np.asarray(cam["cam2img"], dtype=np.float64)[:3], R0, velo,
                                  name=name) for name, cam in _imaged(frame["images"])]


def decompose_camera_matrix(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """M (3, 3) = K @ R -> (K upper-triangular, K[2, 2] = 1, positive focals; R a rotation): an RQ decomposition
    done as a QR of the row-reversed transpose. M's overall scale is free (homogeneous)."""
    flip = np.eye(3)[::-1]
    q, r = np.linalg.qr((flip @ np.asarray(M, dtype=np.float64)).T)
    K, R = flip @ r.T @ flip, flip @ q.T
    signs = np.diag(np.sign(np.diag(K)))
    K, R = K @ signs, signs @ R  # signs @ signs = I: K @ R unchanged
    assert np.linalg.det(R) > 0, "a mirrored R is not a physical camera"
    return K / K[2, 2], R


def sunrgbd_info_views(info: Path) -> list[CameraView]:
    """The RGB camera of an mmdet3d SUN RGB-D info entry, seeing the upright depth frame through K @ R."""
    _, frame = read_info(info)
    views = []
    for name, cam in _imaged(frame["images"]):
        K, R = decompose_camera_matrix(np.asarray(cam["depth2img"]))
        cam_from_cloud = np.eye(4)
        cam_from_cloud[:3, :3] = R
        image = _image(info, cam)
        intrinsics = CameraIntrinsics(K=K, width_px=image.shape[1], height_px=image.shape[0])
        views.append(CameraView(image_rgb=image, intrinsics=intrinsics, cam_from_cloud=cam_from_cloud, name=name))
    return views


def read_sunrgbd_bin(path: Path) -> np.ndarray:
    """mmdet3d's SUN RGB-D point file -> (N, 6) float32 x, y, z (x right, y forward, z up), r, g, b in [0, 1]."""
    return read_float_bin(path, 6)


def _pjlab_entry(path: Path) -> dict:
    (entry,) = json.loads(path.read_text()).values()  # one calibration per file
    return entry


def pjlab_camera_view(intrinsic_json: Path, extrinsic_json: Path, image_png: Path) -> CameraView:
    """The PJLab rig's distorted camera (plumb_bob: k1 k2 p1 p2) seeing the lidar frame."""
    image = load_image_rgb(image_png)
    entry = _pjlab_entry(intrinsic_json)
    param = entry["param"]
    intrinsics = CameraIntrinsics(K=np.asarray(param["cam_K"]["data"], dtype=np.float64), width_px=image.shape[1],
                                  height_px=image.shape[0], distortion_model="plumb_bob",
                                  D=np.asarray(param["cam_dist"]["data"], dtype=np.float64).reshape(-1))
    cam_from_cloud = np.asarray(_pjlab_entry(extrinsic_json)["param"]["sensor_calib"]["data"], dtype=np.float64)
    return CameraView(image_rgb=image, intrinsics=intrinsics, cam_from_cloud=cam_from_cloud, name=entry["sensor_name"])


def read_pcd_xyz(path: Path) -> np.ndarray:
    """x, y, z of an ASCII PCD v0.7 file (one value per field) -> (N, 3) float32."""
    lines = path.read_text().splitlines()
    body = next(i for i, line in enumerate(lines) if line.upper().startswith("DATA")) + 1
    header = {key.upper(): values for key, *values in (line.split() for line in lines[:body])
              if not key.startswith("#")}
    assert header["DATA"] == ["ascii"], f"{path}: only DATA ascii is read here"
    rows = np.loadtxt(lines[body:], dtype=np.float64, ndmin=2)
    assert len(rows) == int(header["POINTS"][0]), f"{path}: {len(rows)} rows, header says {header['POINTS']}"
    columns = [header["FIELDS"].index(axis) for axis in ("x", "y", "z")]
    return rows[:, columns].astype(np.float32)
