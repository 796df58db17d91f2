"""KD targets on a hand-built scan with a tiny teacher, and on real KITTI / nuScenes frames."""

from pathlib import Path

import numpy as np
import pytest
import rig_files
import torch
import torch.nn.functional as F

from ttt_kd_ros.data import calib, pointfiles
from ttt_kd_ros.geometry import project_points
from ttt_kd_ros.scan import CameraIntrinsics, CameraView, Scan
from ttt_kd_ros.targets import center_features, distillation_targets
from ttt_kd_ros.teachers.teacher import Teacher
from ttt_kd_ros.teachers.weights import tiny_teacher

W, H = 80, 60



@pytest.fixture(scope="module")
def teacher() -> Teacher:
    return tiny_teacher(seed=0, resolution=56)


def camera(seed: int, yaw_rad: float = 0.0, name: str = "cam") -> CameraView:
    """A camera at the origin looking along +z, turned by ``yaw_rad`` about y."""
    c, s = np.cos(yaw_rad), np.sin(yaw_rad)
    T = np.eye(4)
    T[:3, :3] = np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])
    image = np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    intr = CameraIntrinsics(K=np.array([[40.0, 0, 39.5], [0, 40.0, 29.5], [0, 0, 1]]), width_px=W, height_px=H)
    return CameraView(image_rgb=image, intrinsics=intr, cam_from_cloud=T, name=name)


def scan_points(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    front = np.c_[rng.uniform(-2, 2, 40), rng.uniform(-1.5, 1.5, 40), rng.uniform(3, 6, 40)]
    behind = front * [1, 1, -1]
    return np.r_[front, behind].astype(np.float32)


def test_distillation_targets_one_camera_matches_projection_and_sampling(teacher: Teacher) -> None:
    view = camera(seed=1)
    scan = Scan(points_xyz_m=scan_points(), cameras=[view])
    targets = distillation_targets(scan, teacher)
    proj = project_points(scan.points_xyz_m, view)
    np.testing.assert_array_equal(targets.point_index.numpy(), np.flatnonzero(proj.visible))
    assert 0 < targets.num_targets <= 40  # only the 40 points in front can be seen
    expected = teacher.sample(teacher.feature_map(view.image_rgb), proj.uv_px[proj.visible])
    torch.testing.assert_close(targets.features, expected)
    assert targets.point_index.dtype == torch.long and targets.features.dtype == torch.float32
    torch.testing.assert_close(targets.features.norm(dim=1), torch.ones(targets.num_targets))
    assert targets.visible_per_camera == {"cam": targets.num_targets}


def test_distillation_targets_occlusion_flag_is_passed(teacher: Teacher) -> None:
    pts = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 6.0]], dtype=np.float32)  # the second hides behind the first
    scan = Scan(points_xyz_m=pts, cameras=[camera(seed=1)])
    assert distillation_targets(scan, teacher).point_index.tolist() == [0]
    assert distillation_targets(scan, teacher, occlusion=False).point_index.tolist() == [0, 1]


def test_distillation_targets_two_cameras_average_overlap(teacher: Teacher) -> None:
    front, back = camera(seed=1, name="front"), camera(seed=2, yaw_rad=np.pi, name="back")
    also_front = camera(seed=3, yaw_rad=0.2, name="front_right")
    pts = scan_points()
    single = {v.name: distillation_targets(Scan(points_xyz_m=pts, cameras=[v]), teacher)
              for v in (front, back, also_front)}
    both = distillation_targets(Scan(points_xyz_m=pts, cameras=[front, back, also_front]), teacher)

    expected_index = torch.unique(torch.cat([t.point_index for t in single.values()]))
    assert both.point_index.tolist() == expected_index.tolist()
    # the back camera sees exactly the other half of the scan
    assert single["back"].point_index.min() >= 40 and single["front"].point_index.max() < 40
    assert set(both.visible_per_camera) == {"front", "back", "front_right"}

    shared = np.intersect1d(single["front"].point_index.numpy(), single["front_right"].point_index.numpy())
    assert len(shared) > 0
    for point in shared[:5]:
        f1 = single["front"].features[single["front"].point_index == int(point)][0]
        f2 = single["front_right"].features[single["front_right"].point_index == int(point)][0]
        got = both.features[both.point_index == int(point)][0]
        torch.testing.assert_close(got, F.normalize(f1 + f2, dim=0))
    only_back = single["back"].point_index[0]
    torch.testing.assert_close(both.features[both.point_index == only_back][0], single["back"].features[0])


def test_distillation_targets_empty_without_cameras_or_visibility(teacher: Teacher) -> None:
    no_camera = distillation_targets(Scan(points_xyz_m=scan_points()), teacher)
    assert no_camera.point_index.shape == (0,) and no_camera.features.shape == (0, teacher.feature_dim)
    before = teacher.forward_count
    behind_only = Scan(points_xyz_m=scan_points()[40:], cameras=[camera(seed=4, name="c")])
    empty = distillation_targets(behind_only, teacher)
    assert len(empty) == 0 and empty.visible_per_camera == {"c": 0}
    assert teacher.forward_count == before  # no teacher forward for an image nothing lands in
    none_at_all = distillation_targets(Scan(points_xyz_m=np.zeros((0, 3), np.float32), cameras=[camera(5)]), teacher)
    assert len(none_at_all) == 0


def test_distillation_targets_reuse_cached_feature_maps(teacher: Teacher) -> None:
    scan = Scan(points_xyz_m=scan_points(), cameras=[camera(seed=6)])
    first = distillation_targets(scan, teacher)
    before = teacher.forward_count
    second = distillation_targets(scan, teacher)
    assert teacher.forward_count == before
    torch.testing.assert_close(first.features, second.features)


@pytest.mark.data
def test_distillation_targets_real_kitti_frame(real_data: Path, teacher: Teacher) -> None:
    info = real_data / "kitti_demo" / "000008_info.json"
    views = rig_files.kitti_info_views(info)
    points = pointfiles.read_kitti_bin(calib.info_lidar_path(info))
    scan = Scan(points_xyz_m=points[:, :3], intensity=points[:, 3], cameras=views)
    targets = distillation_targets(scan, teacher)
    visible = project_points(scan.points_xyz_m, views[0]).visible
    assert targets.num_targets == int(visible.sum())
    assert 0.85 * scan.num_points < targets.num_targets < scan.num_points  # cropped to the FOV, minus occlusions
    torch.testing.assert_close(targets.features.norm(dim=1), torch.ones(targets.num_targets))
    # neighbouring points share a patch, far-apart points do not: features must vary over the scan
    assert targets.features.std(dim=0).mean() > 0.01


@pytest.mark.data
def test_distillation_targets_real_nuscenes_overlapping_cameras(real_data: Path, teacher: Teacher) -> None:
    info = real_data / "nuscenes_sample" / "info.json"
    points = pointfiles.read_nuscenes_bin(calib.info_lidar_path(info))[:, :3]
    scan = Scan(points_xyz_m=points, cameras=calib.nuscenes_info_views(info))
    targets = distillation_targets(scan, teacher)
    per_camera = targets.visible_per_camera
    assert len(per_camera) == 6 and min(per_camera.values()) > 1000
    # neighbouring nuScenes cameras overlap at their edges: some points are seen twice
    assert targets.num_targets < sum(per_camera.values())
    assert targets.num_targets > 0.9 * max(per_camera.values())
    assert torch.all(targets.point_index[1:] > targets.point_index[:-1])


def test_distillation_targets_center_subtracts_and_renormalises(teacher: Teacher) -> None:
    scan = Scan(points_xyz_m=scan_points(), cameras=[camera(seed=1)])
    raw = distillation_targets(scan, teacher)
    center = raw.features.mean(dim=0)
    centred = distillation_targets(scan, teacher, center=center.tolist())
    torch.testing.assert_close(centred.features, F.normalize(raw.features - center, dim=1))
    torch.testing.assert_close(centred.features.norm(dim=1), torch.ones(centred.num_targets))
    assert centred.features.mean(dim=0).norm() < raw.features.mean(dim=0).norm()  # the common part is gone
    assert torch.equal(distillation_targets(scan, teacher, center=()).features, raw.features)


def test_center_features_rejects_a_center_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match="kd_target_center: expected 4 values"):
        center_features(torch.ones(3, 4), [0.0, 1.0])
