"""The scannet: data source on a tiny ScanNet root in the real layout (test/layout_scannet.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from layout_scannet import (
    FRAMES,
    NYU40_BANDS,
    SCANNET20_OF_BAND,
    SCENES,
    VALID_PIXELS,
    WIDTH,
    nyu40_image,
    write_scannet_root,
    write_scene,
)
from PIL import Image

from ttt_kd_ros.data.sources import open_source
from ttt_kd_ros.labels import SCANNET20
from ttt_kd_ros.scan import IGNORE_LABEL


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_scannet_root(tmp_path / "scannet")


def test_open_scannet_every_scene_labels_in_scannet20(root: Path) -> None:
    source = open_source(f"scannet:{root}")
    assert source.kind == "scannet" and source.label_set == SCANNET20.name
    assert len(source) == len(SCENES) * FRAMES
    scan = source[0]
    assert scan.num_points == VALID_PIXELS and scan.label_set == SCANNET20.name
    band_width = WIDTH // len(NYU40_BANDS)
    counts = {train: int((scan.labels == train).sum()) for train in set(SCANNET20_OF_BAND)}
    for train in set(SCANNET20_OF_BAND):
        bands = sum(1 for t in SCANNET20_OF_BAND if t == train)
        assert counts[train] == bands * band_width * (VALID_PIXELS // WIDTH)
    assert SCANNET20.class_names[0] == "wall" and SCANNET20.class_names[4] == "chair"
    assert set(np.unique(scan.labels).tolist()) == {IGNORE_LABEL, 0, 4}
    # Geometry: the wall is 2 m ahead of a camera at x = 0.1 * frame.
    np.testing.assert_allclose(source[1].points_xyz_m[:, 2], 2.0, atol=1e-5)
    assert source.item_name(0) == str(root / "scans" / SCENES[0] / "color" / "0.jpg")
    assert source.item_name(FRAMES + 2) == str(root / "scans" / SCENES[1] / "color" / "2.jpg")


def test_open_scannet_scenes_file_relative_to_root(root: Path) -> None:
    (root / "val.txt").write_text(f"# validation\n{SCENES[1]}\n\n")
    source = open_source(f"scannet:{root}?scenes=val.txt")
    assert len(source) == FRAMES
    assert all(SCENES[1] in source.item_name(i) for i in range(len(source)))
    listed = open_source(f"scannet:{root}?scenes={SCENES[1]},{SCENES[0]}")
    assert SCENES[1] in listed.item_name(0) and SCENES[0] in listed.item_name(FRAMES)


def test_open_scannet_scenes_file_relative_to_working_directory(root: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text(f"{SCENES[0]}\n")
    monkeypatch.chdir(tmp_path)
    source = open_source(f"scannet:{root}?scenes=splits/train.txt")
    assert len(source) == FRAMES and SCENES[0] in source.item_name(0)


def test_open_scannet_scene_folders_directly_under_root_or_one_scene(root: Path) -> None:
    flat = open_source(f"scannet:{root / 'scans'}")
    assert len(flat) == len(SCENES) * FRAMES
    one = open_source(f"scannet:{root / 'scans' / SCENES[1]}")
    assert len(one) == FRAMES and one.item_name(0).endswith(f"{SCENES[1]}/color/0.jpg")


def test_open_scannet_scenes_file_missing_names_it(root: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        open_source(f"scannet:{root}?scenes=nope.txt")
    with pytest.raises(FileNotFoundError, match="scene9999_00"):
        open_source(f"scannet:{root}?scenes=scene9999_00")


def test_open_scannet_fuses_frames_and_caps_points(root: Path) -> None:
    source = open_source(f"scannet:{root}?frames_per_scan=3&frame_step=1")
    assert len(source) == len(SCENES)
    scan = source[1]
    assert scan.num_points == FRAMES * VALID_PIXELS and len(scan.cameras) == FRAMES
    # Three frames 0.1 m apart in x, fused in the world frame.
    single = open_source(f"scannet:{root}")[0]
    assert scan.points_xyz_m[:, 0].max() - single.points_xyz_m[:, 0].max() == pytest.approx(0.2, abs=1e-5)
    assert source.item_name(1).endswith(f"{SCENES[1]}/color/0.jpg")
    stepped = open_source(f"scannet:{root}?frame_step=2&max_points=100")
    assert len(stepped) == 2 * len(SCENES)
    assert stepped.item_name(1).endswith("color/2.jpg") and stepped[1].num_points == 100


def test_open_scannet_depth_scale(root: Path) -> None:
    scan = open_source(f"scannet:{root}?depth_scale=2000&max_scans=1")[0]
    np.testing.assert_allclose(scan.points_xyz_m[:, 2], 1.0, atol=1e-5)


def test_open_scannet_without_label_folder_is_unlabeled(tmp_path: Path) -> None:
    root = write_scannet_root(tmp_path / "scannet", labels=False)
    source = open_source(f"scannet:{root}")
    assert source.label_set == "" and not source.labeled
    scan = source[0]
    assert scan.labels is None and scan.label_set == ""


def test_open_scannet_mixed_labeled_and_unlabeled_scenes_raises(root: Path) -> None:
    write_scene(root / "scans" / "scene0002_00", labels=False)
    with pytest.raises(ValueError, match=r"scene0002_00.*no label folder"):
        open_source(f"scannet:{root}")


def test_scannet_missing_label_png_names_it(root: Path) -> None:
    (root / "scans" / SCENES[0] / "label-filt" / "1.png").unlink()
    source = open_source(f"scannet:{root}")
    source[0]
    with pytest.raises(FileNotFoundError, match=rf"{SCENES[0]}/label-filt/1\.png"):
        source[1]


def test_scannet_label_id_outside_nyu40_names_png(root: Path) -> None:
    bad = nyu40_image()
    bad[5, 5] = 200
    Image.fromarray(bad).save(root / "scans" / SCENES[1] / "label-filt" / "0.png")
    source = open_source(f"scannet:{root}")
    with pytest.raises(ValueError, match=rf"{SCENES[1]}/label-filt/0\.png: label id\(s\) \[200\]"):
        source[FRAMES]


def test_scannet_missing_intrinsic_names_file(root: Path) -> None:
    (root / "scans" / SCENES[1] / "intrinsic" / "intrinsic_depth.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"intrinsic_depth\.txt.*without calibration"):
        open_source(f"scannet:{root}")


@pytest.mark.parametrize(("folder", "name"), [("depth", "2.png"), ("pose", "2.txt")])
def test_scannet_missing_frame_file_names_it(root: Path, folder: str, name: str) -> None:
    (root / "scans" / SCENES[0] / folder / name).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{folder}/{name}"):
        open_source(f"scannet:{root}")[2]


def test_scannet_depth_without_colour_names_jpg(root: Path) -> None:
    (root / "scans" / SCENES[0] / "color" / "1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"color/1\.jpg"):
        open_source(f"scannet:{root}")


def test_open_scannet_unknown_option_raises(root: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['frames'\]"):
        open_source(f"scannet:{root}?frames=2")
