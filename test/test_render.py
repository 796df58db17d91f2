"""ttt_kd_render: PNGs of scans with points in label / depth colours over their images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ttt_kd_ros.data.synthetic import generate_scan
from ttt_kd_ros.labels import SYNTHETIC_INDOOR
from ttt_kd_ros.tools.render import main, render_scan


def test_main_synthetic_writes_png_with_label_colours(tmp_path: Path) -> None:
    out = tmp_path / "scan.png"
    assert main(["--domain", "lidar", "--seed", "1", "--height", "120", "--out", str(out)]) == 0
    picture = np.asarray(Image.open(out).convert("RGB"))
    # Three camera panels at the image aspect (160 px wide at 120 high), the square top view, 4 px gaps, a legend.
    assert picture.shape == (120 + 18, 3 * 160 + 120 + 3 * 4, 3)
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    scan = generate_scan("lidar", 1)
    present = {SYNTHETIC_INDOOR.colors_rgb[i] for i in np.unique(scan.labels)}
    assert present <= colours


def test_render_scan_points_land_on_their_pixels() -> None:
    scan = generate_scan("source", 2)
    scan.cameras = scan.cameras[:1]
    picture = render_scan(scan, color_by="label", height_px=120, radius=0, max_cameras=1)
    panel = picture[:120, :160]
    floor = np.array(SYNTHETIC_INDOOR.colors_rgb[0])
    # The floor fills the lower image rows of a downward-looking camera: many floor-coloured dots there.
    lower = (panel[80:] == floor).all(axis=-1).mean()
    upper = (panel[:20] == floor).all(axis=-1).mean()
    assert lower > 0.05 and lower > upper


def test_main_kitti_object_depth_colours(real_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "kitti.png"
    main(["--kitti-object", str(real_data / "kitti_object"), "--frame", "000001", "--out", str(out)])
    picture = Image.open(out)
    assert picture.height == 240 and picture.width > 700  # no labels: no legend strip
    with pytest.raises(ValueError, match="no labels"):
        main(["--kitti-object", str(real_data / "kitti_object"), "--color-by", "label", "--out", str(out)])
