"""Data-source specs: parsing, the SemanticKITTI / KITTI / synthetic kinds, bad input named, real data loaded."""

from __future__ import annotations

import numpy as np
import pytest
from layout_semantickitti import FOCAL_PX, IMAGE_WH, write_semantickitti

from ttt_kd_ros.data.source_spec import expand_ranges, parse_source_spec
from ttt_kd_ros.data.sources import SOURCE_KINDS, is_source_spec, open_source
from ttt_kd_ros.geometry import project_points
from ttt_kd_ros.labels import SCANNET20, SEMANTIC_KITTI19, SYNTHETIC_INDOOR, common_classes, map_to_label_set
from ttt_kd_ros.scan import IGNORE_LABEL

KINDS = tuple(SOURCE_KINDS)


def test_spec_parses_kind_root_and_options() -> None:
    spec = parse_source_spec("semantickitti:/data/sk?sequences=00-02,09&every=2", KINDS)
    assert (spec.kind, spec.root) == ("semantickitti", "/data/sk")
    assert spec.take_list("sequences") == ["00", "01", "02", "09"]
    assert spec.take_int("every") == 2
    spec.finish()


def test_spec_refuses_unknown_kind_unknown_option_and_bad_values(tmp_path) -> None:
    with pytest.raises(ValueError, match="KIND from"):
        parse_source_spec("lidarz:/x", KINDS)
    write_semantickitti(tmp_path, {"00": 1})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['sequence'\]"):
        open_source(f"semantickitti:{tmp_path}?sequence=00")
    with pytest.raises(ValueError, match="expected an integer"):
        open_source(f"semantickitti:{tmp_path}?max_scans=many")
    with pytest.raises(ValueError, match="runs backwards"):
        expand_ranges("07-03", "here")


def test_is_source_spec_tells_data_sets_from_synthetic_domain_specs() -> None:
    assert is_source_spec("semantickitti:/d") and is_source_spec("synthetic:office")
    assert not is_source_spec("noisy:sensor.dropout=0.6") and not is_source_spec("office")


def test_semantickitti_sequences_load_with_labels_camera_and_names(tmp_path) -> None:
    root = write_semantickitti(tmp_path, {"00": 2, "01": 1, "02": 3}, points=400)
    source = open_source(f"semantickitti:{root}?sequences=00-01")
    assert len(source) == 3 and source.label_set == SEMANTIC_KITTI19.name
    assert source.item_name(2).endswith("sequences/01/velodyne/000000.bin")
    scan = source[0]
    assert scan.num_points == 400 and scan.label_set == SEMANTIC_KITTI19.name
    names = SEMANTIC_KITTI19.class_names
    assert set(np.unique(scan.labels)) == {names.index("road"), names.index("car"), names.index("building")}
    # A car point 7 m ahead at y = 0 lands in the image centre column (the layout's P2 and Tr).
    view = scan.cameras[0]
    car = np.array([[7.0, 0.0, -1.0]], dtype=np.float32)
    proj = project_points(car, view, occlusion=False)
    assert proj.visible[0] and proj.uv_px[0, 0] == pytest.approx(IMAGE_WH[0] / 2, abs=1e-3)
    assert proj.uv_px[0, 1] == pytest.approx(IMAGE_WH[1] / 2 + FOCAL_PX * 1.0 / 7.0, abs=1e-3)
    assert len(open_source(f"semantickitti:{root}?every=2")) == 3
    assert len(open_source(f"semantickitti:{root}?max_scans=4")) == 4


def test_semantickitti_missing_label_file_is_named(tmp_path) -> None:
    root = write_semantickitti(tmp_path, {"00": 2})
    (root / "sequences/00/labels/000001.label").unlink()
    source = open_source(f"semantickitti:{root}")
    source[0]
    with pytest.raises(FileNotFoundError, match=r"000001\.label"):
        source[1]


def test_semantickitti_unknown_raw_id_is_an_error_naming_the_file(tmp_path) -> None:
    root = write_semantickitti(tmp_path, {"00": 1}, points=100)
    raw = np.full(100, 40, dtype=np.uint32)
    raw[5] = 123  # no such SemanticKITTI class
    raw.tofile(root / "sequences/00/labels/000000.label")
    with pytest.raises(ValueError, match=r"000000.label: label id\(s\) \[123\]"):
        open_source(f"semantickitti:{root}")[0]


def test_semantickitti_images_without_calibration_are_refused_unless_left_out(tmp_path) -> None:
    root = write_semantickitti(tmp_path, {"00": 1})
    (root / "sequences/00/calib.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"calib\.txt"):
        open_source(f"semantickitti:{root}")
    assert open_source(f"semantickitti:{root}?cameras=false")[0].cameras == []


def test_missing_sequence_and_root_are_named(tmp_path) -> None:
    root = write_semantickitti(tmp_path, {"00": 1})
    with pytest.raises(FileNotFoundError, match="sequences/05"):
        open_source(f"semantickitti:{root}?sequences=05")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_source(f"semantickitti:{tmp_path / 'nowhere'}")


def test_synthetic_source_is_reproducible_by_index_and_takes_tool_defaults() -> None:
    a = open_source("synthetic:lidar?scans=3&seed=4")
    b = open_source("synthetic:lidar", scans=3, seed=4)
    assert len(a) == len(b) == 3 and a.label_set == SYNTHETIC_INDOOR.name
    np.testing.assert_array_equal(a[2].points_xyz_m, b[2].points_xyz_m)
    assert not np.array_equal(a[1].points_xyz_m, a[2].points_xyz_m)
    heavy = open_source("synthetic:noisy:sensor.dropout=0.6?scans=1")
    assert heavy.domain.sensor.dropout == 0.6


def test_label_bridge_maps_shared_classes_and_ignores_the_rest() -> None:
    common = common_classes("scannet20", "synthetic_indoor")
    assert "table" in common.names and "ceiling" not in common.names
    scannet = ("wall", "desk", "picture", "chair")
    ids = np.array([SCANNET20.class_names.index(n) for n in scannet])
    mapped = map_to_label_set(ids, "scannet20", "synthetic_indoor")
    expected = [SYNTHETIC_INDOOR.class_names.index("wall"), SYNTHETIC_INDOOR.class_names.index("table"),
                IGNORE_LABEL, SYNTHETIC_INDOOR.class_names.index("chair")]
    assert mapped.tolist() == expected
    with pytest.raises(ValueError, match="share no classes"):
        common_classes("semantic_kitti19", "synthetic_indoor")


def test_real_semantickitti_scan_loads_through_the_spec(real_data) -> None:
    source = open_source(f"semantickitti:{real_data / 'semantickitti'}")
    scan = source[0]
    assert scan.num_points == 123389 and scan.label_set == SEMANTIC_KITTI19.name
    names = SEMANTIC_KITTI19.class_names
    counts = np.bincount(scan.labels[scan.labels >= 0], minlength=len(names))
    # Sequence 00, scan 0 (a residential street): road, sidewalk, vegetation and terrain are each over 10 % of the
    # points, the raw ids map to 13 classes, and fewer than 10 % of the points are unlabelled / outliers.
    for name in ("road", "sidewalk", "vegetation", "terrain"):
        assert counts[names.index(name)] > 0.1 * scan.num_points, name
    assert (counts > 0).sum() == 13 and (scan.labels == IGNORE_LABEL).mean() < 0.1


def test_real_kitti_frames_load_unlabeled_with_their_camera(real_data) -> None:
    source = open_source(f"kitti:{real_data / 'kitti_object'}")
    assert len(source) == 3 and not source.labeled
    scan = source[1]
    assert scan.labels is None and len(scan.cameras) == 1 and scan.num_points > 100_000
    visible = project_points(scan.points_xyz_m, scan.cameras[0], occlusion=False).visible
    assert 0.05 < visible.mean() < 0.5  # the front camera sees a forward wedge of the 360-degree sweep


def test_a_synthetic_source_split_takes_the_evaluation_seed_unless_it_names_one() -> None:
    from ttt_kd_ros.data.synthetic import scan_seed
    from ttt_kd_ros.evaluation.splits import parse_split

    plain = parse_split("office2=synthetic:office").open(2, base_seed=20261121)
    assert plain.seed == 20261121 and len(plain) == 2
    assert plain.item_name(1).endswith(f"(seed {scan_seed(20261121, 1)})")
    named = parse_split("office3=synthetic:office?seed=5&scans=3").open(2, base_seed=20261121)
    assert named.base.seed == 5 and len(named) == 2
