"""The synthetic world: labels agree with geometry, seeds are deterministic, domains differ as declared."""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import numpy as np
import pytest

from ttt_kd_ros.data.synthetic import (
    DOMAINS,
    Domain,
    SensorConfig,
    SyntheticDataset,
    generate_sample,
    generate_scan,
    get_domain,
    scan_seed,
)
from ttt_kd_ros.data.synthetic.scene import CLASS_ID, NUM_ROOM_SURFACES, Scene
from ttt_kd_ros.geometry import project_points
from ttt_kd_ros.labels import SYNTHETIC_INDOOR

SEED = 7


def _clean(name: str) -> Domain:
    """The named domain with every noise source switched off, so geometry checks can be exact."""
    dom = DOMAINS[name]
    sensor = replace(dom.sensor, depth_noise_m=0.0, depth_noise_quad=0.0, image_noise=0.0, range_noise_m=0.0,
                     camera_depth=True)
    return replace(dom, name=f"{name}_clean", sensor=sensor)


@cache
def _sample(name: str, seed: int = SEED, clean: bool = False):
    return generate_sample(_clean(name) if clean else name, seed)


def _in_room(sample) -> np.ndarray:
    pts = sample.scan.points_xyz_m.astype(np.float64)
    return pts @ sample.world_from_cloud[:3, :3].T + sample.world_from_cloud[:3, 3]


def _distance_to_boxes(scene: Scene, points: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(N,) distance from each point to the nearest of the boxes ``rows`` (0 inside)."""
    rel = points[:, None, :2] - scene.center_m[rows, :2]
    c, s = np.cos(scene.yaw_rad[rows]), np.sin(scene.yaw_rad[rows])
    local = np.stack([c * rel[..., 0] + s * rel[..., 1], -s * rel[..., 0] + c * rel[..., 1],
                      points[:, None, 2] - scene.center_m[rows, 2]], axis=-1)
    outside = np.maximum(np.abs(local) - scene.half_size_m[rows], 0.0)
    return np.linalg.norm(outside, axis=-1).min(axis=1)


@pytest.mark.parametrize("name", ["source", "office", "lidar"])
def test_generate_sample_furniture_points_lie_on_boxes_of_their_class(name: str) -> None:
    sample = _sample(name, clean=True)
    pts, labels = _in_room(sample), sample.scan.labels
    checked = 0
    for cls in ("table", "chair", "sofa", "bed", "cabinet", "door", "window", "clutter"):
        mine = labels == CLASS_ID[cls]
        if not mine.any():
            continue
        dist = _distance_to_boxes(sample.scene, pts[mine], sample.scene.boxes_of_class(cls))
        assert dist.max() < 1e-3, f"{cls}: a point lies {dist.max():.3f} m from every {cls} box"
        checked += 1
    assert checked >= 4


def test_generate_sample_table_top_points_are_inside_a_table_top() -> None:
    sample = _sample("source", clean=True)
    scene, pts = sample.scene, _in_room(sample)
    tables = scene.boxes_of_class("table")
    tops = tables[scene.half_size_m[tables, 2] < 0.05]  # the 4 cm slabs; legs are tall
    assert len(tops) >= 1
    top_z = scene.center_m[tops, 2] + scene.half_size_m[tops, 2]
    on_top = (sample.scan.labels == CLASS_ID["table"]) & (np.abs(pts[:, 2] - top_z.max()) < 1e-3)
    if not on_top.any():
        on_top = (sample.scan.labels == CLASS_ID["table"]) & (np.abs(pts[:, 2] - top_z.min()) < 1e-3)
    assert on_top.sum() > 20
    assert _distance_to_boxes(scene, pts[on_top], tops).max() < 1e-3


@pytest.mark.parametrize("name", ["source", "lidar"])
def test_generate_sample_shell_points_on_floor_ceiling_walls(name: str) -> None:
    sample = _sample(name, clean=True)
    pts, labels = _in_room(sample), sample.scan.labels
    w, d, h = sample.scene.room_size_m
    floor, ceiling, wall = (labels == CLASS_ID[c] for c in ("floor", "ceiling", "wall"))
    assert floor.sum() > 100 and wall.sum() > 100
    np.testing.assert_allclose(pts[floor, 2], 0.0, atol=1e-3)
    if ceiling.any():
        np.testing.assert_allclose(pts[ceiling, 2], h, atol=1e-3)
    on_wall = np.minimum(np.abs(np.abs(pts[wall, 0]) - w / 2), np.abs(np.abs(pts[wall, 1]) - d / 2))
    assert on_wall.max() < 1e-3


def test_generate_sample_noisy_floor_stays_near_zero() -> None:
    sample = _sample("source")
    floor_z = sample.scan.points_xyz_m[sample.scan.labels == CLASS_ID["floor"], 2]
    assert abs(float(np.median(floor_z))) < 0.01
    assert 0.001 < float(np.std(floor_z)) < 0.1


def test_generate_scan_same_seed_gives_equal_arrays() -> None:
    a, b = generate_scan("source", 3), _sample("source", 3).scan
    np.testing.assert_array_equal(a.points_xyz_m, b.points_xyz_m)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    for ca, cb in zip(a.cameras, b.cameras, strict=True):
        np.testing.assert_array_equal(ca.image_rgb, cb.image_rgb)
        np.testing.assert_array_equal(ca.cam_from_cloud, cb.cam_from_cloud)


def test_generate_scan_different_seeds_differ() -> None:
    a, b = _sample("source", 3).scan, _sample("source", 4).scan
    assert a.num_points != b.num_points or not np.array_equal(a.points_xyz_m, b.points_xyz_m)
    assert not np.array_equal(a.cameras[0].image_rgb, b.cameras[0].image_rgb)


def test_generate_scan_fields_and_types() -> None:
    for name in ("source", "lidar"):
        scan = _sample(name).scan
        assert scan.label_set == SYNTHETIC_INDOOR.name
        assert scan.points_xyz_m.dtype == np.float32 and scan.labels.dtype == np.int64
        assert 5_000 <= scan.num_points <= 60_000
        assert scan.labels.min() >= 0 and scan.labels.max() < SYNTHETIC_INDOOR.num_classes
        assert len(scan.cameras) == DOMAINS[name].sensor.num_cameras
        for cam in scan.cameras:
            assert cam.image_rgb.dtype == np.uint8 and cam.image_rgb.shape == (120, 160, 3)
    assert _sample("source").scan.rgb.shape == (_sample("source").scan.num_points, 3)
    lidar = _sample("lidar").scan
    assert lidar.frame_id == "lidar" and lidar.rgb is None
    assert lidar.intensity.min() >= 0.0 and lidar.intensity.max() <= 1.0


def _label_histogram(labels: np.ndarray) -> np.ndarray:
    counts = np.bincount(labels, minlength=SYNTHETIC_INDOOR.num_classes).astype(np.float64)
    return counts / counts.sum()


def test_domains_noisy_changes_sensor_statistics_not_labels() -> None:
    src, noisy = _sample("source"), _sample("noisy")
    np.testing.assert_array_equal(src.scene.room_size_m, noisy.scene.room_size_m)  # same room
    assert noisy.scan.num_points < 0.7 * src.scan.num_points
    spread = [np.std(s.scan.points_xyz_m[s.scan.labels == CLASS_ID["floor"], 2]) for s in (src, noisy)]
    assert spread[1] > 2 * spread[0]
    roughness = [np.median(np.abs(np.diff(s.scan.cameras[0].image_rgb.astype(np.int16), axis=1)))
                 for s in (src, noisy)]
    assert roughness[1] > 2 * roughness[0]
    # The coarser grid thins near (dense) surfaces more than far ones, so the mix may move a little.
    l1 = np.abs(_label_histogram(src.scan.labels) - _label_histogram(noisy.scan.labels)).sum()
    assert l1 < 0.25


def test_domains_noise_alone_keeps_label_distribution() -> None:
    src = DOMAINS["source"]
    louder = replace(src, name="louder", sensor=replace(src.sensor, depth_noise_m=0.01, depth_noise_quad=0.008,
                                                        image_noise=0.05, dropout=0.3))
    a, b = _sample("source").scan, generate_scan(louder, SEED)
    l1 = np.abs(_label_histogram(a.labels) - _label_histogram(b.labels)).sum()
    assert l1 < 0.1  # noise spreads far surfaces over more voxels, which shifts the mix slightly


def test_domains_office_changes_colours_not_sensor() -> None:
    seeds = (1, 2, 3)
    home = [_sample("source", s).scan for s in seeds]
    office = [_sample("office", s).scan for s in seeds]

    def blue_minus_red(scans) -> float:
        return float(np.mean([s.rgb[:, 2].mean() - s.rgb[:, 0].mean() for s in scans]))

    assert blue_minus_red(office) > blue_minus_red(home) + 0.05
    assert DOMAINS["office"].sensor == DOMAINS["source"].sensor  # the same sensor, declared
    assert {s.num_points for s in home} == {s.num_points for s in office} == {DOMAINS["source"].sensor.max_points}
    for a, b in zip(home, office, strict=True):  # ... and seen: the same cameras, image sizes and lenses
        assert [(c.name, c.image_rgb.shape) for c in a.cameras] == [(c.name, c.image_rgb.shape) for c in b.cameras]
        for ca, cb in zip(a.cameras, b.cameras, strict=True):
            np.testing.assert_array_equal(ca.intrinsics.K, cb.intrinsics.K)
            assert (ca.intrinsics.distortion_model, ca.depth_m is None) == (cb.intrinsics.distortion_model,
                                                                            cb.depth_m is None)


def _min_filter3(depth: np.ndarray) -> np.ndarray:
    """Smallest rendered depth in each pixel's 3x3 neighbourhood (rounding to a pixel can cross an edge)."""
    h, w = depth.shape
    pad = np.pad(depth, 1, mode="edge")
    return np.min([pad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)


@pytest.mark.parametrize("name", ["source", "lidar"])
def test_generate_sample_points_project_onto_matching_depth(name: str) -> None:
    scan = _sample(name, clean=True).scan
    for cam in scan.cameras:
        proj = project_points(scan.points_xyz_m, cam, occlusion=False)
        inside = proj.visible
        assert inside.sum() > 500
        px = np.round(proj.uv_px[inside]).astype(np.int64)
        z_in = proj.depth_m[inside]
        nearest = _min_filter3(cam.depth_m)[px[:, 1], px[:, 0]]
        # No point floats in front of every surface the camera sees around its pixel ...
        assert np.mean(z_in > nearest - 0.02) > 0.995
        # ... and many points are the very surface rendered at their pixel.
        rendered = cam.depth_m[px[:, 1], px[:, 0]]
        assert np.mean(np.abs(rendered - z_in) < 0.02 + 0.01 * z_in) > 0.3


def test_lidar_points_lie_on_rings() -> None:
    sample = _sample("lidar", clean=True)
    pts = sample.scan.points_xyz_m.astype(np.float64)
    elevation = np.degrees(np.arctan2(pts[:, 2], np.linalg.norm(pts[:, :2], axis=1)))
    sensor = DOMAINS["lidar"].sensor
    rings = np.linspace(*sensor.vertical_fov_deg, sensor.rings)
    assert np.abs(elevation[:, None] - rings).min(axis=1).max() < 0.01
    window = sample.scan.labels == CLASS_ID["window"]
    wall = sample.scan.labels == CLASS_ID["wall"]
    if window.any():
        assert sample.scan.intensity[window].mean() < sample.scan.intensity[wall].mean()


def test_synthetic_dataset_index_iter_and_stamps() -> None:
    data = SyntheticDataset("lidar", num_scans=2, seed=5)
    scans = list(data)
    assert len(data) == 2 and len(scans) == 2
    assert [s.stamp_ns for s in scans] == [0, data.period_ns]
    np.testing.assert_array_equal(data[-1].points_xyz_m, scans[1].points_xyz_m)
    with pytest.raises(IndexError):
        data[2]
    assert scan_seed(5, 0) != scan_seed(6, 0) and scan_seed(5, 0) != scan_seed(5, 1)


def test_get_domain_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError, match="source"):
        get_domain("nowhere")
    assert get_domain(DOMAINS["office"]) is DOMAINS["office"]


def test_sensor_config_rejects_bad_kind_and_view_count() -> None:
    with pytest.raises(ValueError, match="kind"):
        SensorConfig(kind="sonar")
    with pytest.raises(ValueError, match="num_views"):
        SensorConfig(kind="rgbd", num_views=2, num_cameras=3)


def test_scene_rows_start_with_room_shell() -> None:
    scene = _sample("office").scene
    names = [SYNTHETIC_INDOOR.class_names[c] for c in scene.class_id[:NUM_ROOM_SURFACES]]
    assert names == ["floor", "ceiling", "wall", "wall", "wall", "wall"]
    assert scene.num_primitives > NUM_ROOM_SURFACES + 5
