"""Loaders of real data set layouts: shapes, label ranges, and projections that land in the images."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ttt_kd_ros.data.calib import read_kitti_calib
from ttt_kd_ros.data.kitti_object import KittiObjectFrames, load_kitti_object_frame
from ttt_kd_ros.data.nuscenes import lidarseg_to_train, load_nuscenes_sample
from ttt_kd_ros.data.scannet import ScanNetFrames
from ttt_kd_ros.data.semantic_kitti import SemanticKittiScans, read_odometry_calib
from ttt_kd_ros.data.synthetic import generate_scene, get_domain
from ttt_kd_ros.data.synthetic.sensors import intrinsics_for, look_pose, render_view
from ttt_kd_ros.geometry import project_points
from ttt_kd_ros.labels import SCANNET20, SEMANTIC_KITTI19
from ttt_kd_ros.scan import IGNORE_LABEL

# --------------------------------------------------------------------------------------------- SemanticKITTI


def test_semantic_kitti_scans_flat_folder_labels(real_data: Path) -> None:
    scans = SemanticKittiScans(real_data / "semantickitti")
    assert len(scans) == 1
    scan = scans[0]
    assert scan.points_xyz_m.shape == (scan.num_points, 3) and scan.num_points > 100_000
    assert scan.label_set == SEMANTIC_KITTI19.name and scan.cameras == []
    assert scan.labels.min() >= IGNORE_LABEL and scan.labels.max() < SEMANTIC_KITTI19.num_classes
    assert np.mean(scan.labels != IGNORE_LABEL) > 0.8
    road = scan.labels == SEMANTIC_KITTI19.class_names.index("road")
    assert road.sum() > 1000
    assert abs(float(np.median(scan.points_xyz_m[road, 2])) + 1.73) < 0.3  # velodyne 1.73 m above the road


def _odometry_calib_text(object_calib: Path) -> str:
    """KITTI object calib rewritten as odometry calib.txt (Tr = R0_rect @ Tr_velo_to_cam)."""
    calib = read_kitti_calib(object_calib)
    rect = np.eye(4)
    rect[:3, :3] = calib.R0_rect
    tr = (rect @ calib.Tr_velo_to_cam)[:3]
    lines = [f"P{i}: " + " ".join(f"{v:.12e}" for v in calib.P[i].ravel()) for i in sorted(calib.P)]
    return "\n".join([*lines, "Tr: " + " ".join(f"{v:.12e}" for v in tr.ravel())]) + "\n"


def test_semantic_kitti_scans_odometry_layout_camera_matches_object_chain(real_data: Path, tmp_path: Path) -> None:
    src = real_data / "kitti_object"
    seq = tmp_path / "sequences" / "00"
    for sub in ("velodyne", "image_2"):
        (seq / sub).mkdir(parents=True)
    shutil.copy(src / "velodyne" / "000000.bin", seq / "velodyne" / "000000.bin")
    shutil.copy(src / "image_2" / "000000.png", seq / "image_2" / "000000.png")
    (seq / "calib.txt").write_text(_odometry_calib_text(src / "calib" / "000000.txt"))

    scan = SemanticKittiScans(seq)[0]
    assert scan.labels is None and len(scan.cameras) == 1
    reference = load_kitti_object_frame(src, "000000")
    ours = project_points(scan.points_xyz_m, scan.cameras[0], occlusion=False)
    theirs = project_points(reference.points_xyz_m, reference.cameras[0], occlusion=False)
    assert ours.num_visible > 5000
    np.testing.assert_array_equal(ours.visible, theirs.visible)
    np.testing.assert_allclose(ours.uv_px[ours.visible], theirs.uv_px[theirs.visible], atol=1e-2)


def test_read_odometry_calib_missing_tr_names_field(tmp_path: Path) -> None:
    path = tmp_path / "calib.txt"
    path.write_text("P2: " + " ".join(["1"] * 12) + "\n")
    with pytest.raises(ValueError, match="'Tr'"):
        read_odometry_calib(path)


# ---------------------------------------------------------------------------------------------- KITTI object


def test_kitti_object_frames_project_into_image(real_data: Path) -> None:
    frames = KittiObjectFrames(real_data / "kitti_object")
    assert len(frames) == 3
    for i, scan in enumerate(frames):
        assert scan.frame_id == "velodyne" and scan.stamp_ns == i * 100_000_000
        assert scan.labels is None and scan.intensity.min() >= 0.0 and scan.intensity.max() <= 1.0
        (cam,) = scan.cameras
        assert cam.image_rgb.shape == (cam.intrinsics.height_px, cam.intrinsics.width_px, 3)
        proj = project_points(scan.points_xyz_m, cam)
        # The camera sees the forward ~90 degrees of the sweep: a sizeable, forward-facing share.
        assert 0.05 < proj.num_visible / scan.num_points < 0.4
        assert scan.points_xyz_m[proj.visible, 0].min() > 0.0


# -------------------------------------------------------------------------------------------------- nuScenes


def _nuscenes_info(real_data: Path) -> Path:
    return real_data / "nuscenes_sample" / "info.json"


def test_load_nuscenes_sample_six_cameras_see_points(real_data: Path) -> None:
    scan = load_nuscenes_sample(_nuscenes_info(real_data))
    assert scan.frame_id == "LIDAR_TOP" and scan.labels is None
    assert scan.num_points > 20_000 and scan.intensity.max() <= 1.0
    assert sorted(c.name for c in scan.cameras) == sorted(
        ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"])
    seen = np.zeros(scan.num_points, dtype=bool)
    for cam in scan.cameras:
        proj = project_points(scan.points_xyz_m, cam)
        assert proj.num_visible > 500, cam.name
        seen |= proj.visible
    assert seen.mean() > 0.3  # six cameras cover most of the ring


def test_load_nuscenes_sample_lidarseg_labels(real_data: Path, tmp_path: Path) -> None:
    info = _nuscenes_info(real_data)
    n = load_nuscenes_sample(info).num_points
    raw = np.arange(n, dtype=np.uint8) % 32
    (tmp_path / "seg.bin").write_bytes(raw.tobytes())
    scan = load_nuscenes_sample(info, lidarseg_path=tmp_path / "seg.bin")
    np.testing.assert_array_equal(scan.labels, lidarseg_to_train(raw))
    assert scan.label_set == SEMANTIC_KITTI19.name
    (tmp_path / "short.bin").write_bytes(raw[:-1].tobytes())
    with pytest.raises(ValueError, match="one per point"):
        load_nuscenes_sample(info, lidarseg_path=tmp_path / "short.bin")


def test_lidarseg_to_train_known_classes() -> None:
    names = SEMANTIC_KITTI19.class_names
    out = lidarseg_to_train(np.array([0, 17, 24, 2, 31, 99]))
    assert out.tolist() == [IGNORE_LABEL, names.index("car"), names.index("road"), names.index("person"),
                            IGNORE_LABEL, IGNORE_LABEL]


# --------------------------------------------------------------------------------------------------- ScanNet

# NYU40 ids of the synthetic classes; ceiling (22) and clutter (40, otherprop) are not ScanNet-20 classes.
_SYNTHETIC_TO_NYU40 = np.array([2, 1, 22, 7, 5, 6, 4, 3, 8, 9, 40])


def _write_scannet_scene(root: Path, num_frames: int = 2, lost_frame: int | None = None) -> list[np.ndarray]:
    """A ScanNet-layout folder rendered from a synthetic room; returns each frame's per-pixel NYU40 labels."""
    dom = get_domain("source")
    rng = np.random.default_rng(0)
    scene = generate_scene(dom.style, rng)
    intr = intrinsics_for(dom.sensor)
    noise_free = replace(dom.sensor, depth_noise_m=0.0, depth_noise_quad=0.0, image_noise=0.0)
    for sub in ("color", "depth", "pose", "intrinsic", "label-filt"):
        (root / sub).mkdir(parents=True)
    k4 = np.eye(4)
    k4[:3, :3] = intr.K
    np.savetxt(root / "intrinsic" / "intrinsic_color.txt", k4)
    np.savetxt(root / "intrinsic" / "intrinsic_depth.txt", k4)
    labels = []
    for i in range(num_frames):
        pose = look_pose(np.array([0.3 * i, 0.0, 1.4]), yaw=1.0 + 2.0 * i, pitch=-0.4)
        view = render_view(scene, intr, pose, noise_free, rng)
        nyu = _SYNTHETIC_TO_NYU40[scene.class_id[view.hits.primitive]].reshape(view.depth_m.shape)
        Image.fromarray(view.image_rgb).save(root / "color" / f"{i}.jpg", quality=95)
        Image.fromarray(np.round(view.depth_m * 1000).astype(np.uint16)).save(root / "depth" / f"{i}.png")
        Image.fromarray(nyu.astype(np.uint8)).save(root / "label-filt" / f"{i}.png")
        np.savetxt(root / "pose" / f"{i}.txt", np.full((4, 4), -np.inf) if i == lost_frame else pose)
        labels.append(nyu)
    return labels


def test_scannet_frames_points_labels_and_projection(tmp_path: Path) -> None:
    nyu = _write_scannet_scene(tmp_path)
    frames = ScanNetFrames(tmp_path, frames_per_scan=2)
    assert len(frames) == 1
    scan = frames[0]
    h, w = nyu[0].shape
    assert scan.num_points == 2 * h * w and scan.label_set == SCANNET20.name
    assert scan.rgb.shape == (scan.num_points, 3) and scan.rgb.min() >= 0.0 and scan.rgb.max() <= 1.0
    assert scan.labels.min() >= IGNORE_LABEL and scan.labels.max() < SCANNET20.num_classes
    # Labels are the NYU40 map of each pixel, and geometry agrees: floor at z = 0 in the world frame.
    floor = scan.labels == SCANNET20.class_names.index("floor")
    assert floor.sum() == sum(int((n == 2).sum()) for n in nyu)
    assert np.abs(scan.points_xyz_m[floor, 2]).max() < 0.01
    for cam in scan.cameras:
        assert cam.depth_m is not None
        proj = project_points(scan.points_xyz_m, cam, occlusion=False)
        px = np.round(proj.uv_px[proj.visible]).astype(np.int64)
        gap = np.abs(cam.depth_m[px[:, 1], px[:, 0]] - proj.depth_m[proj.visible])
        assert proj.num_visible >= h * w  # at least its own frame's points
        assert np.mean(gap < 0.01) > 0.5


def test_scannet_frames_skips_lost_tracking(tmp_path: Path) -> None:
    _write_scannet_scene(tmp_path, num_frames=3, lost_frame=1)
    frames = ScanNetFrames(tmp_path)
    assert frames.frame_ids == [0, 2] and len(frames) == 2
    assert [s.cameras[0].name for s in frames] == ["color_0", "color_2"]


def test_scannet_frames_label_size_mismatch_names_file(tmp_path: Path) -> None:
    _write_scannet_scene(tmp_path, num_frames=1)
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(tmp_path / "label-filt" / "0.png")
    with pytest.raises(ValueError, match=r"label-filt/0\.png"):
        ScanNetFrames(tmp_path)[0]


def test_scannet_frames_rejects_non_scene_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="color/"):
        ScanNetFrames(tmp_path)


@pytest.mark.parametrize("cut", [1, 13])  # 13: the partial value dropped leaves whole rows: loaded short
def test_a_velodyne_file_cut_mid_value_is_named_as_truncated_not_blamed_on_the_labels(tmp_path: Path, cut: int,
                                                                                     ) -> None:
    """A .bin cut a few bytes short used to load with fewer points (np.fromfile drops the partial value)."""
    from layout_semantickitti import write_semantickitti

    from ttt_kd_ros.data.sources import open_source

    root = write_semantickitti(tmp_path / "skitti", {"00": 1}, points=300)
    velodyne = root / "sequences/00/velodyne/000000.bin"
    velodyne.write_bytes(velodyne.read_bytes()[:-cut])
    with pytest.raises(ValueError, match=r"000000\.bin: \d+ bytes is not a whole number of 4-float32 rows"):
        open_source(f"semantickitti:{root}")[0]


def test_a_corrupt_png_is_reported_with_its_path(tmp_path: Path) -> None:
    from ttt_kd_ros.data.calib import load_image_rgb

    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    truncated, garbage = tmp_path / "truncated.png", tmp_path / "garbage.png"
    truncated.write_bytes(good.read_bytes()[:40])
    garbage.write_bytes(b"not an image at all")
    for path in (truncated, garbage):
        with pytest.raises(ValueError, match=rf"{path.name}: not a readable image"):
            load_image_rgb(path)
