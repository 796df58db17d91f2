"""Calibration parsers and point-file readers: real rigs where present, small synthetic files always."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import rig_files

from ttt_kd_ros.data import calib, pointfiles
from ttt_kd_ros.geometry import project_points

# ------------------------------------------------------------------------------------------- real rigs


@pytest.mark.data
def test_kitti_info_views_reproduce_stored_lidar2img(real_data: Path) -> None:
    info = real_data / "kitti_demo" / "000008_info.json"
    (view,) = rig_files.kitti_info_views(info)
    points = pointfiles.read_kitti_bin(calib.info_lidar_path(info))[:, :3]
    proj = project_points(points, view, occlusion=False)

    _, frame = calib.read_info(info)
    lidar2img = np.asarray(frame["images"]["CAM2"]["lidar2img"])
    homog = np.c_[points, np.ones(len(points))] @ lidar2img.T
    expected = homog[:, :2] / homog[:, 2:3]
    seen = proj.visible
    assert seen.mean() > 0.95  # the demo scan is cropped to the camera's field of view
    assert np.abs(proj.uv_px[seen] - expected[seen]).max() < 1e-3
    np.testing.assert_allclose(proj.depth_m[seen], homog[seen, 2], atol=1e-4)


@pytest.mark.data
def test_kitti_camera_view_object_frames_project_into_image(real_data: Path) -> None:
    for frame in ("000000", "000001", "000002"):
        folder = real_data / "kitti_object"
        view = calib.kitti_camera_view(folder / "calib" / f"{frame}.txt", folder / "image_2" / f"{frame}.png")
        cal = calib.read_kitti_calib(folder / "calib" / f"{frame}.txt")
        points = pointfiles.read_kitti_bin(folder / "velodyne" / f"{frame}.bin")[:, :3]
        proj = project_points(points, view, occlusion=False)
        homog = (cal.P[2] @ np.r_[cal.R0_rect @ (cal.Tr_velo_to_cam @ np.c_[points, np.ones(len(points))].T)[:3],
                                  np.ones((1, len(points)))]).T
        seen = proj.visible
        np.testing.assert_allclose(proj.uv_px[seen], homog[seen, :2] / homog[seen, 2:3], atol=1e-3)
        # A 90-degree camera sees roughly a quarter of a 360-degree sweep (minus the near ground).
        assert 0.1 < seen.mean() < 0.3, frame
        occluded = seen & ~project_points(points, view).visible
        assert 0.0 < occluded.mean() < 0.1 * seen.mean(), frame


@pytest.mark.data
def test_nuscenes_info_views_six_cameras_plausible(real_data: Path) -> None:
    info = real_data / "nuscenes_sample" / "info.json"
    views = calib.nuscenes_info_views(info)
    assert sorted(v.name for v in views) == sorted(
        ["CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]
    )
    points = pointfiles.read_nuscenes_bin(calib.info_lidar_path(info))[:, :3]
    assert len(points) == 34688
    seen_by_any = np.zeros(len(points), dtype=bool)
    for view in views:
        assert view.image_rgb.shape == (900, 1600, 3)
        assert view.stamp_ns > 1.5e18
        proj = project_points(points, view)
        seen = proj.visible
        assert 0.04 < seen.mean() < 0.25, view.name
        u, v = proj.uv_px[seen, 0], proj.uv_px[seen, 1]
        assert (u >= -0.5).all() and (u < 1599.5).all() and (v >= -0.5).all() and (v < 899.5).all()
        assert (proj.depth_m[seen] > 0).all()
        seen_by_any |= seen
    # Six cameras cover the horizon, but not the ground right around the car nor points above the images.
    assert 0.4 < seen_by_any.mean() < 0.9


@pytest.mark.data
def test_pjlab_camera_view_distortion_changes_pixels(real_data: Path) -> None:
    folder = real_data / "pjlab_urban"
    view = rig_files.pjlab_camera_view(
        folder / "center_camera-intrinsic.json", folder / "top_center_lidar-to-center_camera-extrinsic.json",
        folder / "0.png",
    )
    assert (view.intrinsics.width_px, view.intrinsics.height_px) == (1920, 1200)  # from the image, not the file
    assert view.intrinsics.distortion_model == "plumb_bob" and view.intrinsics.D.size == 4
    points = rig_files.read_pcd_xyz(folder / "0.pcd")
    assert points.shape == (78238, 3)
    proj = project_points(points, view, occlusion=False)
    pinhole_view = dataclasses.replace(
        view, intrinsics=dataclasses.replace(view.intrinsics, distortion_model="none", D=np.zeros(0))
    )
    pinhole = project_points(points, pinhole_view, occlusion=False)
    both = proj.visible & pinhole.visible
    assert proj.visible.sum() > 5000
    shift = np.linalg.norm(proj.uv_px[both] - pinhole.uv_px[both], axis=1)
    assert shift.max() > 5.0  # k1 = -0.108 over a 1920 px image moves the edges by tens of pixels
    # distortion is radial about the principal point: the centre barely moves
    centre = np.linalg.norm(pinhole.uv_px[both] - view.intrinsics.K[:2, 2], axis=1) < 100
    assert shift[centre].max() < shift.max() / 5


@pytest.mark.data
def test_sunrgbd_info_views_match_depth2img(real_data: Path) -> None:
    info = real_data / "sunrgbd" / "000017_info.json"
    (view,) = rig_files.sunrgbd_info_views(info)
    points = rig_files.read_sunrgbd_bin(calib.info_lidar_path(info))
    assert points.shape == (50000, 6) and points[:, 3:].min() >= 0.0 and points[:, 3:].max() <= 1.0
    proj = project_points(points[:, :3], view, occlusion=False)
    _, frame = calib.read_info(info)
    depth2img = np.asarray(frame["images"]["CAM0"]["depth2img"])
    homog = points[:, :3].astype(np.float64) @ depth2img.T
    expected = homog[:, :2] / homog[:, 2:3]
    seen = proj.visible
    assert seen.mean() > 0.95  # the depth cloud comes from this camera's own depth image
    assert np.abs(proj.uv_px[seen] - expected[seen]).max() < 1e-3
    K = view.intrinsics.K
    assert K[0, 0] > 0 and K[1, 1] > 0 and abs(K[1, 0]) < 1e-9


# ------------------------------------------------------------------------------------------ synthetic files

KITTI_TXT = """P0: 700 0 600 0 0 700 180 0 0 0 1 0
P1: 700 0 600 -380 0 700 180 0 0 0 1 0
P2: 700 0 600 45 0 700 180 -0.3 0 0 1 0.005
P3: 700 0 600 -330 0 700 180 2.3 0 0 1 0.003
R0_rect: 1 0 0 0 1 0 0 0 1
Tr_velo_to_cam: 0 -1 0 0 0 0 -1 -0.08 1 0 0 -0.27
Tr_imu_to_velo: 1 0 0 -0.8 0 1 0 0.3 0 0 1 -0.8
"""


def test_read_kitti_calib_parses_all_fields(tmp_path: Path) -> None:
    path = tmp_path / "calib.txt"
    path.write_text(KITTI_TXT)
    cal = calib.read_kitti_calib(path)
    assert sorted(cal.P) == [0, 1, 2, 3]
    assert cal.P[2][0, 3] == 45 and cal.P[2].shape == (3, 4)
    assert cal.Tr_velo_to_cam.shape == (4, 4) and cal.Tr_velo_to_cam[3].tolist() == [0, 0, 0, 1]
    assert cal.Tr_imu_to_velo is not None
    view = calib.kitti_camera_view(cal, np.zeros((375, 1242, 3), np.uint8))
    # a point 10 m straight ahead of the velodyne lands near P2's principal point
    proj = project_points(np.array([[10.0, 0.0, -0.08]]), view)
    assert proj.visible[0] and abs(proj.uv_px[0, 1] - 180) < 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (KITTI_TXT.replace("R0_rect", "R_rect"), "R0_rect"),
        (KITTI_TXT.replace("P2: 700", "P2: 700 1"), "P2"),
        (KITTI_TXT.replace("Tr_velo_to_cam: 0", "Tr_velo_to_cam: x"), "Tr_velo_to_cam"),
        (KITTI_TXT + "garbage line\n", "key: numbers"),
    ],
)
def test_read_kitti_calib_bad_file_names_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "calib.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        calib.read_kitti_calib(path)


def test_nuscenes_info_views_missing_matrix_names_field(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "cam.png")
    doc = {"metainfo": {"dataset": "nuscenes"},
           "data_list": [{"images": {"CAM_FRONT": {"img_path": "cam.png", "cam2img": np.eye(3).tolist()}}}]}
    path = tmp_path / "info.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="lidar2cam"):
        calib.nuscenes_info_views(path)
    doc["data_list"][0]["images"]["CAM_FRONT"]["lidar2cam"] = np.eye(4).tolist()
    path.write_text(json.dumps(doc))
    (view,) = calib.nuscenes_info_views(path)
    assert view.image_rgb.shape == (4, 6, 3) and view.name == "CAM_FRONT"


def test_load_image_rgb_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        calib.load_image_rgb(tmp_path / "nope.png")


def test_read_float_bin_checks_row_size(tmp_path: Path) -> None:
    path = tmp_path / "scan.bin"
    np.arange(12, dtype="<f4").tofile(path)
    assert pointfiles.read_kitti_bin(path).shape == (3, 4)
    assert pointfiles.read_float_bin(path, 6)[1, 0] == 6.0
    with pytest.raises(ValueError, match="whole number of 5-float32 rows"):
        pointfiles.read_nuscenes_bin(path)

