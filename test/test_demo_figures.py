"""Demo pictures: exact colours where points of known label land, in the rasters and in the saved PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ttt_kd_ros.data.synthetic import generate_sample
from ttt_kd_ros.demo.figures import (
    ROW_CAMERA,
    ROW_TOP,
    TRUTH_COLUMN,
    UNKNOWN_RGB,
    ScanPanel,
    TopViewFrame,
    column_titles,
    label_colours,
    overlay_on_image,
    scan_figure_layout,
    scan_rasters,
    top_view,
    write_demo_figures,
    write_scan_figure,
    write_steps_plot,
)
from ttt_kd_ros.geometry import project_points
from ttt_kd_ros.labels import SYNTHETIC_INDOOR
from ttt_kd_ros.metrics import miou
from ttt_kd_ros.scan import IGNORE_LABEL, CameraIntrinsics, CameraView, Scan

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
WALL = SYNTHETIC_INDOOR.class_names.index("wall")


def pinhole_view(image_value: int = 200) -> CameraView:
    """64 x 48 camera at the cloud origin looking along +z: (x, y, z) lands at (50 x / z + 32, 50 y / z + 24)."""
    intrinsics = CameraIntrinsics(K=[[50.0, 0.0, 32.0], [0.0, 50.0, 24.0], [0.0, 0.0, 1.0]], width_px=64, height_px=48)
    image = np.full((48, 64, 3), image_value, dtype=np.uint8)
    return CameraView(image_rgb=image, intrinsics=intrinsics, cam_from_cloud=np.eye(4), name="pinhole")


def colours(*rgb: tuple[int, int, int]) -> np.ndarray:
    return np.array(rgb, dtype=np.uint8)


def png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def uniform_label_points(pixels: np.ndarray, labels: np.ndarray, candidates: np.ndarray, radius_px: int = 1) -> list:
    """Candidates whose pixel only points of their own label can paint (no other label within radius_px)."""
    chosen = []
    for i in candidates:
        near = np.abs(pixels - pixels[i]).max(axis=1) <= radius_px
        if (labels[near] == labels[i]).all():
            chosen.append(int(i))
    return chosen


# label_colours


def test_label_colours_known_ids_use_the_palette():
    labels = np.array([0, 3, 10], dtype=np.int64)
    expected = np.array([SYNTHETIC_INDOOR.colors_rgb[i] for i in labels], dtype=np.uint8)
    assert np.array_equal(label_colours(labels, SYNTHETIC_INDOOR), expected)


def test_label_colours_ignored_and_out_of_range_ids_are_grey():
    got = label_colours(np.array([IGNORE_LABEL, 11, 2], dtype=np.int64), SYNTHETIC_INDOOR)
    assert got.dtype == np.uint8
    assert np.array_equal(got[:2], colours(UNKNOWN_RGB, UNKNOWN_RGB))
    assert tuple(got[2]) == SYNTHETIC_INDOOR.colors_rgb[2]
    assert UNKNOWN_RGB != (0, 0, 0)


def test_label_colours_rejects_float_labels():
    with pytest.raises(ValueError, match="integer"):
        label_colours(np.array([0.0, 1.0]), SYNTHETIC_INDOOR)


# top_view


def test_top_view_point_lands_on_its_frame_pixel_in_its_colour_background_elsewhere():
    points = np.array([[0.0, 0.0, 0.0], [4.0, 2.0, 0.0], [1.0, 1.5, 0.0]])
    rgb = label_colours(np.array([0, 1, 3]), SYNTHETIC_INDOOR)
    raster = top_view(points, rgb, size_px=(60, 40), radius_px=0)
    pixels = TopViewFrame.fit(points, (60, 40)).to_pixels(points)
    assert raster.shape == (40, 60, 3) and raster.dtype == np.uint8
    for (col, row), colour in zip(pixels, rgb, strict=True):
        assert tuple(raster[row, col]) == tuple(colour)
    painted = np.zeros((40, 60), dtype=bool)
    painted[pixels[:, 1], pixels[:, 0]] = True
    assert (raster[~painted] == 255).all()


def test_top_view_radius_paints_a_square():
    points = np.array([[0.0, 0.0, 0.0], [10.0, 10.0, 0.0]])
    raster = top_view(points, colours(RED, BLUE), size_px=(50, 50), radius_px=2)
    col, row = TopViewFrame.fit(points, (50, 50)).to_pixels(points[:1])[0]
    assert (raster[row - 2:row + 3, col - 2:col + 3] == RED).all()
    assert tuple(raster[row - 3, col]) == WHITE and tuple(raster[row, col + 3]) == WHITE


def test_top_view_higher_point_wins_whatever_the_input_order():
    # The high point comes first; a low point at the same x, y and one a pixel away (whose square covers the high
    # point's pixel) come later and must still stay underneath.
    frame = TopViewFrame.fit(np.zeros((1, 3)), (21, 21), extent_m=(-1.05, 1.05, -1.05, 1.05))
    points = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 0.5], [0.1, 0.0, 0.0]])
    raster = top_view(points, colours(RED, BLUE, BLUE), (21, 21), extent_m=(-1.05, 1.05, -1.05, 1.05))
    col, row = frame.to_pixels(points[:1])[0]
    assert frame.to_pixels(points[2:])[0, 0] == col + 1
    assert tuple(raster[row, col]) == RED
    assert tuple(raster[row, col + 2]) == BLUE


def test_top_view_frame_has_equal_scale_x_right_y_up():
    points = np.array([[0.0, 0.0, 0.0], [4.0, 1.0, 0.0]])  # wide cloud, tall raster: y must not be stretched
    frame = TopViewFrame.fit(points, (30, 60))
    assert frame.m_per_px == pytest.approx(4.0 * (1 + 2 * 0.03) / 30)
    m = frame.m_per_px
    centre = [frame.x0_m + 10.5 * m, frame.y0_m + 20.5 * m, 0.0]  # the middle of pixel (10, 60 - 1 - 20)
    steps = np.array([centre, np.add(centre, [7 * m, 0, 0]), np.add(centre, [0, 7 * m, 0])])
    origin, right, up = frame.to_pixels(steps)
    assert tuple(origin) == (10, 39)
    assert tuple(right) == (17, 39)  # x to the right
    assert tuple(up) == (10, 32)  # larger y higher in the picture, by as many pixels as the same step along x
    inside = frame.to_pixels(points)
    assert (inside[:, 0] >= 0).all() and (inside[:, 0] < 30).all() and (inside[:, 1] >= 0).all()
    assert (inside[:, 1] < 60).all()


def test_top_view_drops_non_finite_points():
    points = np.array([[0.0, 0.0, 0.0], [np.nan, 1.0, 0.0], [1.0, np.inf, 0.0], [1.0, 1.0, 0.0]])
    raster = top_view(points, colours(RED, BLUE, BLUE, RED), size_px=(30, 30), radius_px=0)
    assert (raster != 255).any(axis=2).sum() == 2
    assert not (raster == BLUE).all(axis=2).any()


def test_top_view_empty_cloud_needs_an_extent():
    empty = np.zeros((0, 3))
    with pytest.raises(ValueError, match="extent_m"):
        top_view(empty, np.zeros((0, 3), dtype=np.uint8))
    blank = top_view(empty, np.zeros((0, 3), dtype=np.uint8), (8, 6), extent_m=(0, 1, 0, 1), background=(9, 9, 9))
    assert blank.shape == (6, 8, 3) and (blank == 9).all()


def test_top_view_rejects_colours_that_do_not_match_the_points():
    with pytest.raises(ValueError, match=r"colors_rgb: expected \(3, 3\)"):
        top_view(np.zeros((3, 3)), np.zeros((2, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        top_view(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"points_xyz_m: expected shape \(N, 3\)"):
        top_view(np.zeros((2, 2)), np.zeros((2, 3), dtype=np.uint8))


# overlay_on_image


def test_overlay_point_has_its_colour_at_the_hand_computed_pixel():
    # u = 50 * 0.4 / 2 + 32 = 42, v = 50 * -0.2 / 2 + 24 = 19
    overlay = overlay_on_image(pinhole_view(), np.array([[0.4, -0.2, 2.0]]), colours(RED), radius_px=0)
    assert tuple(overlay[19, 42]) == RED
    assert (overlay.reshape(-1, 3) == RED).all(axis=1).sum() == 1


def test_overlay_keeps_the_dimmed_image_away_from_points():
    overlay = overlay_on_image(pinhole_view(200), np.array([[0.4, -0.2, 2.0]]), colours(RED), image_alpha=0.5)
    assert tuple(overlay[19, 42]) == RED and tuple(overlay[18, 41]) == RED  # radius 1 by default
    assert (overlay[30:, :] == 100).all() and (overlay[:, :30] == 100).all()


def test_overlay_nearer_point_wins_at_the_same_pixel():
    near, far = [0.4, -0.2, 2.0], [0.8, -0.4, 4.0]  # the same ray, so the same pixel (42, 19)
    for occlusion in (False, True):
        for points, rgb in (([near, far], colours(RED, BLUE)), ([far, near], colours(BLUE, RED))):
            overlay = overlay_on_image(pinhole_view(), np.array(points), rgb, occlusion=occlusion)
            assert tuple(overlay[19, 42]) == RED


def test_overlay_skips_points_behind_the_camera_and_non_finite_ones():
    points = np.array([[0.4, -0.2, -2.0], [np.nan, 0.0, 2.0]])
    overlay = overlay_on_image(pinhole_view(200), points, colours(RED, RED))
    assert (overlay == 100).all()


def test_overlay_matches_project_points_on_a_synthetic_scan():
    scan = generate_sample("lidar", 5).scan
    view = scan.cameras[0]
    overlay = overlay_on_image(view, scan.points_xyz_m, label_colours(scan.labels, SYNTHETIC_INDOOR))
    projection = project_points(scan.points_xyz_m, view)
    seen = np.flatnonzero(projection.visible)
    pixels = np.floor(projection.uv_px[seen] + 0.5).astype(np.int64)
    checked = uniform_label_points(pixels, scan.labels[seen], np.arange(0, len(seen), max(1, len(seen) // 40)))
    assert len(checked) >= 10
    for i in checked:
        u, v = pixels[i]
        assert tuple(overlay[v, u]) == SYNTHETIC_INDOOR.colors_rgb[scan.labels[seen[i]]]


def test_overlay_rejects_mismatched_colours():
    with pytest.raises(ValueError, match="one colour per point"):
        overlay_on_image(pinhole_view(), np.zeros((4, 3)), np.zeros((3, 3), dtype=np.uint8))


# ScanPanel and titles


def tiny_scan() -> Scan:
    """Eight points in front of pinhole_view, classes 0 and 1 four each."""
    points = np.array([[x, y, 2.0] for x in (-0.3, -0.1, 0.1, 0.3) for y in (-0.2, 0.2)], dtype=np.float32)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=np.int64)
    return Scan(points_xyz_m=points, labels=labels, cameras=[pinhole_view()], label_set=SYNTHETIC_INDOOR.name)


def test_scan_panel_rejects_a_prediction_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"prediction 'adapted': expected \(8,\)"):
        ScanPanel("tiny", tiny_scan(), {"adapted": np.zeros(7, dtype=np.int64)})


def test_scan_panel_needs_ground_truth_and_a_file_name():
    scan = tiny_scan()
    scan.labels = None
    with pytest.raises(ValueError, match="no labels"):
        ScanPanel("tiny", scan, {})
    with pytest.raises(ValueError, match="panel name"):
        ScanPanel("a/b", tiny_scan(), {})


def test_column_titles_carry_the_per_scan_miou():
    scan = tiny_scan()
    one_wrong = np.array([0, 0, 0, 1, 1, 1, 1, 1], dtype=np.int64)  # IoU 3/4 and 4/5: mIoU 77.5 %
    panel = ScanPanel("tiny", scan, {"adapted": scan.labels.copy(), "unadapted": one_wrong})
    titles = column_titles(panel, SYNTHETIC_INDOOR)
    assert list(titles) == [TRUTH_COLUMN, "adapted", "unadapted"]
    assert "mIoU 100.0 %" in titles["adapted"]
    assert "mIoU 77.5 %" in titles["unadapted"]
    assert miou(scan.labels, one_wrong, SYNTHETIC_INDOOR.num_classes) == pytest.approx(0.775)


def test_layout_legend_lists_only_classes_present():
    scan = tiny_scan()
    scan.labels[0] = IGNORE_LABEL
    panel = ScanPanel("tiny", scan, {"p": np.full(8, 5, dtype=np.int64)})
    layout = scan_figure_layout(panel, SYNTHETIC_INDOOR)
    assert layout.legend_ids == (0, 1, 5)
    assert layout.legend_unknown


def test_layout_without_a_camera_has_one_row():
    scan = tiny_scan()
    scan.cameras = []
    layout = scan_figure_layout(ScanPanel("tiny", scan, {"p": scan.labels.copy()}), SYNTHETIC_INDOOR)
    assert set(layout.boxes) == {(ROW_TOP, TRUTH_COLUMN), (ROW_TOP, "p")}


# write_scan_figure


@pytest.fixture(scope="module")
def lidar_figure(tmp_path_factory: pytest.TempPathFactory):
    """A synthetic LiDAR scan drawn with its truth, an all-'wall' prediction and a perfect one."""
    scan = generate_sample("lidar", 5).scan
    predictions = {"all wall": np.full(scan.num_points, WALL, dtype=np.int64), "perfect": scan.labels.copy()}
    panel = ScanPanel("lidar5", scan, predictions)
    path = write_scan_figure(panel, SYNTHETIC_INDOOR, tmp_path_factory.mktemp("figure") / "scan.png")
    return panel, scan_figure_layout(panel, SYNTHETIC_INDOOR), png(path)


def test_write_scan_figure_png_has_the_layout_size_and_the_rasters_unresampled(lidar_figure):
    panel, layout, image = lidar_figure
    assert image.shape == (layout.size_px[1], layout.size_px[0], 3)
    assert {row for row, _ in layout.boxes} == {ROW_TOP, ROW_CAMERA}
    assert layout.boxes[(ROW_CAMERA, TRUTH_COLUMN)].scale == 2  # a 160 x 120 camera image shown twice as large
    rasters = scan_rasters(panel, SYNTHETIC_INDOOR, layout)
    for key, box in layout.boxes.items():
        crop = image[box.top_px:box.top_px + box.height_px, box.left_px:box.left_px + box.width_px]
        expected = np.repeat(np.repeat(rasters[key], box.scale, axis=0), box.scale, axis=1)
        assert np.array_equal(crop, expected), key


def test_write_scan_figure_top_views_show_known_points_in_their_class_colour(lidar_figure):
    panel, layout, image = lidar_figure
    points, labels = panel.scan.points_xyz_m, panel.scan.labels
    pixels = layout.top_frame.to_pixels(points)
    checked = uniform_label_points(pixels, labels, np.arange(0, len(points), 997))
    assert len(checked) >= 5
    for i in checked:
        for column in (TRUTH_COLUMN, "perfect"):
            x, y = layout.boxes[(ROW_TOP, column)].png_pixel(*pixels[i])
            assert tuple(image[y, x]) == SYNTHETIC_INDOOR.colors_rgb[labels[i]]
    for col, row in pixels[::500]:  # every point of the constant prediction is wall-coloured
        x, y = layout.boxes[(ROW_TOP, "all wall")].png_pixel(col, row)
        assert tuple(image[y, x]) == SYNTHETIC_INDOOR.colors_rgb[WALL]


def test_write_scan_figure_camera_row_shows_known_points_in_their_class_colour(lidar_figure):
    panel, layout, image = lidar_figure
    projection = project_points(panel.scan.points_xyz_m, panel.scan.cameras[0])
    seen = np.flatnonzero(projection.visible)
    pixels = np.floor(projection.uv_px[seen] + 0.5).astype(np.int64)
    labels = panel.scan.labels[seen]
    checked = uniform_label_points(pixels, labels, np.arange(0, len(seen), max(1, len(seen) // 40)))
    assert len(checked) >= 10
    for i in checked:
        x, y = layout.boxes[(ROW_CAMERA, TRUTH_COLUMN)].png_pixel(*pixels[i])
        assert tuple(image[y, x]) == SYNTHETIC_INDOOR.colors_rgb[labels[i]]
        x, y = layout.boxes[(ROW_CAMERA, "all wall")].png_pixel(*pixels[i])
        assert tuple(image[y, x]) == SYNTHETIC_INDOOR.colors_rgb[WALL]


def test_write_scan_figure_refuses_another_label_set(tmp_path):
    from ttt_kd_ros.labels import SCANNET20

    with pytest.raises(ValueError, match="synthetic_indoor"):
        write_scan_figure(ScanPanel("tiny", tiny_scan(), {}), SCANNET20, tmp_path / "x.png")


# steps plot and the folder


def test_write_steps_plot_writes_a_png_and_refuses_percent(tmp_path):
    path = write_steps_plot({"noisy": [(2, 0.5), (0, 0.4)], "source": [(0, 0.7)]}, tmp_path / "steps.png")
    assert png(path).shape[2] == 3
    with pytest.raises(ValueError, match="not percent"):
        write_steps_plot({"noisy": [(0, 45.0)]}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="at least one"):
        write_steps_plot({}, tmp_path / "empty.png")


def test_write_demo_figures_names_one_file_per_scan_and_the_curve(tmp_path):
    scan = tiny_scan()
    panels = [ScanPanel(name, scan, {"adapted": scan.labels.copy()}) for name in ("a", "b")]
    paths = write_demo_figures(panels, SYNTHETIC_INDOOR, tmp_path / "out", curve={"x": [(0, 0.5), (1, 0.6)]})
    assert [p.name for p in paths] == ["scan_a.png", "scan_b.png", "miou_over_steps.png"]
    assert all(p.is_file() for p in paths)
    assert len(write_demo_figures(panels, SYNTHETIC_INDOOR, tmp_path / "no_curve")) == 2
    with pytest.raises(ValueError, match="names must differ"):
        write_demo_figures([panels[0], panels[0]], SYNTHETIC_INDOOR, tmp_path / "dup")
