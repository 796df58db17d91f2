"""nuscenes: data sources: the real on-disk layout (tables, samples/, lidarseg/) and an mmdet3d info JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from layout_nuscenes import (
    CAMERA_TRANSLATIONS,
    CX,
    CY,
    FX,
    FY,
    IMAGE_SIZE,
    TARGET_INDEX,
    VERSION,
    EgoPose,
    NuScenesLayout,
    write_nuscenes_tree,
)

from ttt_kd_ros.data.sources import open_source
from ttt_kd_ros.labels import SEMANTIC_KITTI19
from ttt_kd_ros.scan import IGNORE_LABEL


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> NuScenesLayout:
    """A tree the read-only tests share."""
    return write_nuscenes_tree(tmp_path_factory.mktemp("nuscenes"))


def _spec(root: Path, options: str = "") -> str:
    return f"nuscenes:{root}?version={VERSION}" + (f"&{options}" if options else "")


def _expected_pixel(world: np.ndarray, ego: EgoPose, channel: str) -> tuple[float, float]:
    """World point -> pixel by hand: undo the ego's yaw and translation, then the camera's axis swap and mount."""
    dx, dy, dz = world[0] - ego.x, world[1] - ego.y, world[2] - ego.z
    c, s = math.cos(ego.yaw), math.sin(ego.yaw)
    ex, ey, ez = c * dx + s * dy, -s * dx + c * dy, dz  # ego frame: x forward, y left, z up
    tx, ty, tz = CAMERA_TRANSLATIONS[channel]
    if channel == "CAM_FRONT":  # camera x = -ego y (right), y = -ego z (down), z = ego x (forward)
        xc, yc, zc = -(ey - ty), -(ez - tz), ex - tx
    else:  # CAM_BACK looks backwards: camera x = ego y, z = -ego x
        xc, yc, zc = ey - ty, -(ez - tz), -(ex - tx)
    return FX * xc / zc + CX, FY * yc / zc + CY


def _pixel(view, point: np.ndarray) -> np.ndarray:
    cam = view.cam_from_cloud @ np.r_[point.astype(np.float64), 1.0]
    uvw = view.intrinsics.K @ cam[:3]
    return uvw[:2] / uvw[2]


# --------------------------------------------------------------------------------------------- the real layout


def test_open_nuscenes_orders_key_frames_by_scene_then_time(layout: NuScenesLayout) -> None:
    source = open_source(_spec(layout.root))
    assert source.kind == "nuscenes" and source.label_set == SEMANTIC_KITTI19.name
    assert len(source) == 4  # sweeps and radar records are not scans
    assert [source.item_name(i) for i in range(4)] == [str(s.lidar_path) for s in layout.samples]
    assert [s.scene for s in layout.samples] == ["scene-0061", "scene-0061", "scene-0103", "scene-0103"]
    stamps = [source[i].stamp_ns for i in range(4)]
    assert stamps == [s.lidar_stamp_us * 1000 for s in layout.samples]


def test_open_nuscenes_points_intensity_and_labels(layout: NuScenesLayout) -> None:
    scan = open_source(_spec(layout.root))[0]
    expected = layout.samples[0]
    assert scan.num_points == 200 and scan.frame_id == "LIDAR_TOP"
    assert scan.intensity.dtype == np.float32
    np.testing.assert_allclose(scan.intensity, expected.intensity_raw / 255.0, rtol=1e-6)
    assert scan.intensity[2] == 1.0 and scan.intensity[3] == 0.0
    names = SEMANTIC_KITTI19.class_names
    by_raw = {17: names.index("car"), 24: names.index("road"), 30: names.index("vegetation"), 0: IGNORE_LABEL,
              28: names.index("building")}
    assert scan.label_set == SEMANTIC_KITTI19.name
    np.testing.assert_array_equal(scan.labels, [by_raw[int(r)] for r in expected.raw_labels])


def test_open_nuscenes_cameras_project_world_points_to_hand_computed_pixels(layout: NuScenesLayout) -> None:
    source = open_source(_spec(layout.root))
    for i, expected in enumerate(layout.samples):
        scan = source[i]
        assert sorted(v.name for v in scan.cameras) == ["CAM_BACK", "CAM_FRONT"]
        for view in scan.cameras:
            assert view.image_rgb.shape == (IMAGE_SIZE[1], IMAGE_SIZE[0], 3)
            assert view.stamp_ns == expected.camera_stamp_us[view.name] * 1000
            np.testing.assert_allclose(view.intrinsics.K, [[FX, 0, CX], [0, FY, CY], [0, 0, 1]])
            world = expected.targets_world[view.name]
            want = _expected_pixel(world, expected.ego[view.name], view.name)
            got = _pixel(view, scan.points_xyz_m[TARGET_INDEX[view.name]])
            np.testing.assert_allclose(got, want, atol=0.01, err_msg=f"sample {i} {view.name}")
            assert 0 <= want[0] < IMAGE_SIZE[0] and 0 <= want[1] < IMAGE_SIZE[1]
            # The test can tell the chains apart: the lidar-time ego pose would put the point elsewhere.
            wrong = _expected_pixel(world, expected.ego["LIDAR_TOP"], view.name)
            assert math.dist(want, wrong) > 2.0


def test_open_nuscenes_cameras_false_leaves_images_out(layout: NuScenesLayout) -> None:
    scan = open_source(_spec(layout.root, "cameras=false"))[0]
    assert scan.cameras == [] and scan.num_points == 200


def test_open_nuscenes_split_built_in_for_mini(layout: NuScenesLayout) -> None:
    train = open_source(_spec(layout.root, "split=mini_train"))
    assert [train.item_name(i) for i in range(len(train))] == [str(s.lidar_path) for s in
                                                                layout.by_scene("scene-0061")]
    val = open_source(_spec(layout.root, "split=mini_val"))
    assert [val.item_name(i) for i in range(len(val))] == [str(s.lidar_path) for s in layout.by_scene("scene-0103")]


def test_open_nuscenes_split_file_and_scenes_file(tmp_path: Path) -> None:
    layout = write_nuscenes_tree(tmp_path, labels=False)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "mine.txt").write_text("# my split\nscene-0103\n\n")
    source = open_source(_spec(tmp_path, "split=mine"))
    assert [source.item_name(i) for i in range(len(source))] == [str(s.lidar_path) for s in
                                                                 layout.by_scene("scene-0103")]
    (tmp_path / "two.txt").write_text("scene-0103\nscene-0061\n")
    both = open_source(_spec(tmp_path, f"scenes={tmp_path / 'two.txt'}"))
    assert len(both) == 4 and both.item_name(0) == str(layout.samples[0].lidar_path)
    relative = open_source(_spec(tmp_path, "scenes=two.txt"))  # not in the cwd: read from ROOT
    assert len(relative) == 4


def test_open_nuscenes_unknown_split_explains_the_split_file(layout: NuScenesLayout) -> None:
    with pytest.raises(ValueError, match=r"splits/train\.txt not found.*create_splits_scenes"):
        open_source(_spec(layout.root, "split=train"))


def test_open_nuscenes_unknown_scene_names_listed(layout: NuScenesLayout, tmp_path: Path) -> None:
    (tmp_path / "scenes.txt").write_text("scene-0061\nscene-9999\nscene-0000\n")
    with pytest.raises(ValueError, match=r"scene\.json: 2 scene name\(s\).*scene-9999.*scene-0000"):
        open_source(_spec(layout.root, f"scenes={tmp_path / 'scenes.txt'}"))


def test_open_nuscenes_split_and_scenes_together_rejected(layout: NuScenesLayout) -> None:
    with pytest.raises(ValueError, match="not both"):
        open_source(_spec(layout.root, "split=mini_val&scenes=x.txt"))


def test_open_nuscenes_unknown_option_rejected(layout: NuScenesLayout) -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['versoin'\]"):
        open_source(_spec(layout.root, "versoin=v1.0-mini"))


def test_open_nuscenes_without_lidarseg_is_unlabeled(tmp_path: Path) -> None:
    write_nuscenes_tree(tmp_path, labels=False)
    source = open_source(_spec(tmp_path))
    assert source.label_set == "" and not source.labeled
    scan = source[0]
    assert scan.labels is None and scan.label_set == ""


# ---------------------------------------------------------------------------------------------------- bad input


def test_open_nuscenes_missing_lidarseg_file_named(tmp_path: Path) -> None:
    layout = write_nuscenes_tree(tmp_path)
    layout.samples[1].lidarseg_path.unlink()
    source = open_source(_spec(tmp_path))
    source[0]
    with pytest.raises(FileNotFoundError, match=layout.samples[1].lidarseg_path.name):
        source[1]


def test_open_nuscenes_unknown_lidarseg_id_named(tmp_path: Path) -> None:
    layout = write_nuscenes_tree(tmp_path)
    raw = layout.samples[0].raw_labels.copy()
    raw[5] = 40
    raw.tofile(layout.samples[0].lidarseg_path)
    with pytest.raises(ValueError, match=rf"{layout.samples[0].lidarseg_path.name}.*\[40\]"):
        open_source(_spec(tmp_path))[0]


def test_open_nuscenes_lidarseg_length_mismatch_named(tmp_path: Path) -> None:
    layout = write_nuscenes_tree(tmp_path)
    layout.samples[0].raw_labels[:-1].tofile(layout.samples[0].lidarseg_path)
    with pytest.raises(ValueError, match=rf"{layout.samples[0].lidarseg_path.name}: expected 200 labels"):
        open_source(_spec(tmp_path))[0]


def test_open_nuscenes_missing_image_named(tmp_path: Path) -> None:
    layout = write_nuscenes_tree(tmp_path, labels=False)
    layout.samples[0].images["CAM_BACK"].unlink()
    with pytest.raises(FileNotFoundError, match=layout.samples[0].images["CAM_BACK"].name):
        open_source(_spec(tmp_path))[0]
    assert open_source(_spec(tmp_path, "cameras=false"))[0].num_points == 200


def test_open_nuscenes_missing_table_named(tmp_path: Path) -> None:
    write_nuscenes_tree(tmp_path, labels=False)
    (tmp_path / VERSION / "ego_pose.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"ego_pose\.json"):
        open_source(_spec(tmp_path))


def test_open_nuscenes_missing_version_folder_lists_versions(layout: NuScenesLayout) -> None:
    with pytest.raises(FileNotFoundError, match=r"v1\.0-trainval.*\['v1\.0-mini'\]"):
        open_source(f"nuscenes:{layout.root}")


def test_open_nuscenes_renumbered_category_rejected(tmp_path: Path) -> None:
    write_nuscenes_tree(tmp_path)
    path = tmp_path / VERSION / "category.json"
    categories = json.loads(path.read_text())
    categories[17]["name"], categories[23]["name"] = categories[23]["name"], categories[17]["name"]
    path.write_text(json.dumps(categories))
    with pytest.raises(ValueError, match=r"category\.json: category index 17 is 'vehicle\.truck'"):
        open_source(_spec(tmp_path))


# ------------------------------------------------------------------------------------------ mmdet3d info JSON


@pytest.mark.data
def test_open_nuscenes_real_info_json(real_data: Path) -> None:
    info = real_data / "nuscenes_sample" / "info.json"
    source = open_source(f"nuscenes:{info}")
    assert len(source) == 1 and source.label_set == ""
    assert source.item_name(0).endswith("__LIDAR_TOP__1532402927647951.pcd.bin")
    scan = source[0]
    assert scan.num_points == 34688 and scan.frame_id == "LIDAR_TOP" and scan.labels is None
    assert len(scan.cameras) == 6


@pytest.mark.data
def test_open_nuscenes_real_info_json_lidarseg_dir(real_data: Path, tmp_path: Path) -> None:
    info = real_data / "nuscenes_sample" / "info.json"
    raw = (np.arange(34688) % 32).astype(np.uint8)
    raw.tofile(tmp_path / "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951_lidarseg.bin")
    source = open_source(f"nuscenes:{info}?lidarseg={tmp_path}")
    assert source.label_set == SEMANTIC_KITTI19.name
    scan = source[0]
    assert scan.label_set == SEMANTIC_KITTI19.name
    assert scan.labels[17] == SEMANTIC_KITTI19.class_names.index("car") and scan.labels[0] == IGNORE_LABEL
