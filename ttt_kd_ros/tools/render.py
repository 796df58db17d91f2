"""ttt_kd_render: draw a scan's points over its camera images and from above, to one PNG.

The picture is the quickest check that a data source is right: labels that
sit on the wrong objects, a calibration that puts points beside the car, or a
frame convention flipped by 90 degrees are obvious at a glance.

    ttt_kd_render --domain source --seed 3 --out scan.png
    ttt_kd_render --kitti-object /data/kitti/training --frame 000008 --out frame.png
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ttt_kd_ros.geometry import project_points
from ttt_kd_ros.labels import LABEL_SETS, LabelSet
from ttt_kd_ros.scan import IGNORE_LABEL, CameraView, Scan

BACKGROUND = (32, 32, 36)
IGNORE_COLOUR = (110, 110, 110)


def point_colours(scan: Scan, color_by: str) -> tuple[np.ndarray, LabelSet | None]:
    """(N, 3) uint8 colours by label (palette of the scan's label set) or by distance from the sensor."""
    if color_by == "auto":
        color_by = "label" if scan.labels is not None and scan.label_set in LABEL_SETS else "depth"
    if color_by == "label":
        if scan.labels is None or scan.label_set not in LABEL_SETS:
            raise ValueError(f"--color-by label: the scan has no labels of a known set (label_set={scan.label_set!r})")
        label_set = LABEL_SETS[scan.label_set]
        colours = label_set.colorize(scan.labels)
        colours[scan.labels == IGNORE_LABEL] = IGNORE_COLOUR
        return colours, label_set
    import matplotlib  # only the colour map; imported here to keep the module light

    distance = np.linalg.norm(scan.points_xyz_m, axis=1)
    scale = np.clip(distance / max(float(np.percentile(distance, 95)), 1e-6), 0.0, 1.0)
    return (matplotlib.colormaps["turbo"](scale)[:, :3] * 255).astype(np.uint8), None


def _splat(canvas: np.ndarray, uv: np.ndarray, colours: np.ndarray, radius: int) -> None:
    """Paint square dots at integer pixel centres ``uv`` (N, 2), later points over earlier ones."""
    h, w = canvas.shape[:2]
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            u, v = uv[:, 0] + dx, uv[:, 1] + dy
            ok = (u >= 0) & (u < w) & (v >= 0) & (v < h)
            canvas[v[ok], u[ok]] = colours[ok]


def camera_panel(scan: Scan, cam: CameraView, colours: np.ndarray, height_px: int, radius: int) -> np.ndarray:
    """The camera image scaled to ``height_px`` rows with the visible points drawn far to near."""
    proj = project_points(scan.points_xyz_m, cam)
    scale = height_px / cam.intrinsics.height_px
    width_px = max(1, round(cam.intrinsics.width_px * scale))
    image = Image.fromarray(cam.image_rgb).resize((width_px, height_px), Image.BILINEAR)
    canvas = (np.asarray(image, dtype=np.float32) * 0.75).astype(np.uint8)  # dim so points stand out
    idx = np.flatnonzero(proj.visible)
    idx = idx[np.argsort(-proj.depth_m[idx])]
    uv = np.round((proj.uv_px[idx] + 0.5) * scale - 0.5).astype(np.int64)
    _splat(canvas, uv, colours[idx], radius)
    return canvas


def top_down_panel(scan: Scan, colours: np.ndarray, size_px: int, radius: int) -> np.ndarray:
    """Points seen from above (x right, y up), lower points drawn first; cameras as white ticks."""
    xyz = scan.points_xyz_m
    lo, hi = np.percentile(xyz[:, :2], 1, axis=0), np.percentile(xyz[:, :2], 99, axis=0)
    centre, half = (lo + hi) / 2, max(float(np.max(hi - lo)) / 2 * 1.1, 1e-3)
    to_px = (size_px - 1) / (2 * half)

    def pixels(xy: np.ndarray) -> np.ndarray:
        return np.stack([(xy[:, 0] - centre[0] + half) * to_px, (centre[1] + half - xy[:, 1]) * to_px], 1)

    canvas = np.full((size_px, size_px, 3), BACKGROUND, dtype=np.uint8)
    order = np.argsort(xyz[:, 2])
    _splat(canvas, np.round(pixels(xyz[order, :2])).astype(np.int64), colours[order], radius)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for cam in scan.cameras:
        cloud_from_cam = np.linalg.inv(cam.cam_from_cloud)
        ends = np.stack([cloud_from_cam[:3, 3], cloud_from_cam[:3, 3] + cloud_from_cam[:3, 2] * half * 0.15])
        (u0, v0), (u1, v1) = pixels(ends[:, :2])
        draw.line([(u0, v0), (u1, v1)], fill=(255, 255, 255), width=2)
        draw.ellipse([u0 - 3, v0 - 3, u0 + 3, v0 + 3], fill=(255, 255, 255))
    return np.asarray(image)


def legend_strip(label_set: LabelSet, labels: np.ndarray, width_px: int) -> np.ndarray:
    """One row of colour swatches and names for the classes present in ``labels``."""
    present = [i for i in range(label_set.num_classes) if np.any(labels == i)]
    image = Image.new("RGB", (width_px, 18), BACKGROUND)
    draw = ImageDraw.Draw(image)
    x = 4
    for i in present:
        name = label_set.class_names[i]
        draw.rectangle([x, 4, x + 10, 14], fill=label_set.colors_rgb[i])
        draw.text((x + 14, 3), name, fill=(230, 230, 230))
        x += 14 + int(draw.textlength(name)) + 10
    return np.asarray(image)


def render_scan(scan: Scan, color_by: str = "auto", height_px: int = 240, radius: int = 1,
                max_cameras: int = 3) -> np.ndarray:
    """(H, W, 3) uint8 picture: each camera with its points, then the top-down view; legend below."""
    colours, label_set = point_colours(scan, color_by)
    panels = [camera_panel(scan, cam, colours, height_px, radius) for cam in scan.cameras[:max_cameras]]
    panels.append(top_down_panel(scan, colours, height_px, radius))
    gap = np.full((height_px, 4, 3), BACKGROUND, dtype=np.uint8)
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    if label_set is not None:
        row = np.concatenate([row, legend_strip(label_set, scan.labels, row.shape[1])], axis=0)
    return row


def load_scan(args: argparse.Namespace) -> Scan:
    if args.kitti_object is not None:
        from ttt_kd_ros.data.kitti_object import load_kitti_object_frame

        return load_kitti_object_frame(args.kitti_object, args.frame)
    from ttt_kd_ros.data.synthetic import generate_scan

    return generate_scan(args.domain, args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttt_kd_render", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--domain", default="source", help="synthetic domain name (default: source)")
    source.add_argument("--kitti-object", type=Path, help="KITTI object folder (velodyne/, image_2/, calib/)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic scan seed")
    parser.add_argument("--frame", default="000000", help="KITTI frame id")
    parser.add_argument("--color-by", choices=("auto", "label", "depth"), default="auto",
                        help="auto: labels when the scan has them, else distance")
    parser.add_argument("--height", type=int, default=240, help="panel height in pixels")
    parser.add_argument("--radius", type=int, default=1, help="point dot radius in pixels")
    parser.add_argument("--max-cameras", type=int, default=3)
    parser.add_argument("--colors", type=int, default=0, help="quantise the PNG to this many colours (0: off)")
    parser.add_argument("--out", type=Path, required=True, help="output PNG")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    scan = load_scan(args)
    picture = Image.fromarray(render_scan(scan, args.color_by, args.height, args.radius, args.max_cameras))
    if args.colors > 0:
        picture = picture.quantize(colors=args.colors, method=Image.Quantize.MEDIANCUT)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out, optimize=True)
    print(f"wrote {args.out} ({picture.width}x{picture.height}, {scan.num_points} points, "
          f"{len(scan.cameras)} cameras)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
