"""Demo pictures for a new user: labelled clouds from above and on the camera image, before and after adaptation.

A number such as "mIoU 41 % -> 55 %" means little to someone new to test-time adaptation; the same scan coloured
by ground truth, by the unadapted network and by the adapted one, side by side, shows what changed. So there are
two layers here:

* rasters, pure numpy and deterministic, so tests can check colours exactly: ``top_view`` / ``render_top_view``
  (bird's-eye, with the ``TopViewFrame`` that says where a point lands), ``overlay_on_image`` (points on the
  camera image), ``label_colours`` and ``scan_rasters`` (all rasters of one scan figure);
* figures, drawn with matplotlib on the Agg backend only inside the functions that save them: ``write_scan_figure``
  (one PNG per scan), ``write_steps_plot`` (mIoU over adaptation steps) and ``write_demo_figures`` (both, in a
  folder).

A scan figure shows every raster unresampled, at an integer scale, at a pixel box that ``scan_figure_layout``
computes before anything is drawn: a raster pixel (column i, row j) of box ``b`` is the PNG block of ``b.scale`` x
``b.scale`` pixels whose top-left corner is (``b.left_px + i * b.scale``, ``b.top_px + j * b.scale``); the PNG is
``layout.size_px`` (width, height) pixels. Titles, row labels and the legend sit outside those boxes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ttt_kd_ros.geometry import project_points
from ttt_kd_ros.labels import LabelSet
from ttt_kd_ros.metrics import miou
from ttt_kd_ros.replay.plots import _pyplot
from ttt_kd_ros.scan import CameraView, Scan

UNKNOWN_RGB = (160, 160, 160)
"""Colour of points without a known class: a neutral grey reads as "unknown", black would read as a class."""

TOP_VIEW_PX = (320, 320)
"""(width, height) of the bird's-eye raster in a scan figure."""

EXTENT_MARGIN = 0.03
"""Fraction of the cloud's larger horizontal span left free around it when the top view picks its own extent."""

TRUTH_COLUMN = "ground truth"
ROW_TOP = "top"
ROW_CAMERA = "camera"

# Scan figure geometry, in PNG pixels. DPI only sets how large the text is (points -> pixels).
FIGURE_DPI = 100
CELL_PX = 320  # a raster is scaled up by the largest integer that keeps its longer side within this
MARGIN_PX = 8
HEADER_PX = 30  # the scan's name
TITLE_PX = 40  # two-line column titles above the first row
ROW_LABEL_PX = 24  # rotated row labels left of the rasters
ROW_GAP_PX = 12
COL_GAP_PX = 10
LEGEND_PX = 170
LEGEND_ROW_PX = 20

_PANEL_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def label_colours(
    labels: np.ndarray, label_set: LabelSet, unknown_rgb: tuple[int, int, int] = UNKNOWN_RGB
) -> np.ndarray:
    """(N,) training ids -> (N, 3) uint8 class colours; IGNORE_LABEL and ids outside the set get ``unknown_rgb``."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    colours = label_set.colorize(labels)
    colours[(labels < 0) | (labels >= label_set.num_classes)] = unknown_rgb
    return colours


@dataclass(frozen=True)
class TopViewFrame:
    """Where a bird's-eye raster sits in the cloud frame, with one scale for both axes so rooms keep their shape.

    Pixel (column i, row j) covers x in [x0_m + i * m_per_px, x0_m + (i + 1) * m_per_px) and the y band
    ``size_px[1] - 1 - j`` steps above y0_m: x grows to the right, y upwards (row 0 is the largest y).
    """

    x0_m: float  # x of the raster's left edge
    y0_m: float  # y of the raster's bottom edge
    m_per_px: float
    size_px: tuple[int, int]  # (width, height)

    @classmethod
    def fit(
        cls,
        points_xyz_m: np.ndarray,
        size_px: tuple[int, int] = TOP_VIEW_PX,
        extent_m: tuple[float, float, float, float] | None = None,
    ) -> TopViewFrame:
        """The frame that shows ``extent_m`` (xmin, xmax, ymin, ymax), centred, or else the finite points' bounds
        plus a margin; ValueError when there is neither an extent nor a finite point to take one from."""
        width, height = _check_size(size_px)
        if extent_m is None:
            xy = _finite_rows(_check_points(points_xyz_m))[:, :2]
            if len(xy) == 0:
                raise ValueError("top view: no finite points to take an extent from; pass extent_m for a blank raster")
            low, high = xy.min(axis=0), xy.max(axis=0)
            span = float(max(high - low)) or 1.0  # one point, or all at one spot: show a metre around it
            low, high = low - EXTENT_MARGIN * span, high + EXTENT_MARGIN * span
            extent_m = (float(low[0]), float(high[0]), float(low[1]), float(high[1]))
        xmin, xmax, ymin, ymax = (float(v) for v in extent_m)
        if not (np.isfinite([xmin, xmax, ymin, ymax]).all() and xmax > xmin and ymax > ymin):
            raise ValueError(f"extent_m: expected finite (xmin, xmax, ymin, ymax) with max > min, got {extent_m}")
        m_per_px = max((xmax - xmin) / width, (ymax - ymin) / height)
        return cls(
            x0_m=(xmin + xmax) / 2 - width * m_per_px / 2,
            y0_m=(ymin + ymax) / 2 - height * m_per_px / 2,
            m_per_px=m_per_px,
            size_px=(width, height),
        )

    def to_pixels(self, points_xyz_m: np.ndarray) -> np.ndarray:
        """(M, 3) finite points -> (M, 2) int64 (column, row); points outside the raster get indices outside it."""
        points = _check_points(points_xyz_m)
        if not np.isfinite(points).all():
            raise ValueError("to_pixels: points must be finite (drop non-finite rows first)")
        col = np.floor((points[:, 0] - self.x0_m) / self.m_per_px)
        row = self.size_px[1] - 1 - np.floor((points[:, 1] - self.y0_m) / self.m_per_px)
        return np.stack([col, row], axis=1).astype(np.int64)


def top_view(
    points_xyz_m: np.ndarray,
    colors_rgb: np.ndarray,
    size_px: tuple[int, int] = TOP_VIEW_PX,
    extent_m: tuple[float, float, float, float] | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    radius_px: int = 1,
) -> np.ndarray:
    """(H, W, 3) uint8 orthographic view from above, framed by ``TopViewFrame.fit(points_xyz_m, size_px,
    extent_m)`` (so a caller can find where a point lands); drawn as ``render_top_view`` says.

    With no finite point and no ``extent_m`` there is nothing to frame, and a ValueError says so.
    """
    frame = TopViewFrame.fit(points_xyz_m, size_px, extent_m)
    return render_top_view(frame, points_xyz_m, colors_rgb, background, radius_px)


def render_top_view(
    frame: TopViewFrame,
    points_xyz_m: np.ndarray,
    colors_rgb: np.ndarray,
    background: tuple[int, int, int] = (255, 255, 255),
    radius_px: int = 1,
) -> np.ndarray:
    """(H, W, 3) uint8 view from above in a given frame: each point a square of side 2 * radius_px + 1 in its colour.

    Where squares overlap the higher point (larger z) is shown, as a camera above the scene would see it; equal
    heights go to the later point. Non-finite points are skipped; the rest of the raster is ``background``.
    Several rasters in one frame line up pixel for pixel (the columns of a scan figure).
    """
    points, colours = _check_cloud(points_xyz_m, colors_rgb)
    finite = np.isfinite(points).all(axis=1)
    width, height = frame.size_px
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = background
    _splat(canvas, frame.to_pixels(points[finite]), colours[finite], points[finite, 2], radius_px)
    return canvas


def overlay_on_image(
    view: CameraView,
    points_xyz_m: np.ndarray,
    colors_rgb: np.ndarray,
    image_alpha: float = 0.5,
    radius_px: int = 1,
    occlusion: bool = True,
) -> np.ndarray:
    """(H, W, 3) uint8: the camera image dimmed to ``image_alpha`` of its brightness (rounded), so the point colours
    stand out, with every point the camera sees drawn as an opaque square in its colour, nearest on top.

    Pixels are geometry.project_points' (the pixel of a point is round(uv)); with ``occlusion`` its z-buffer also
    drops points hidden behind nearer ones, so background points do not shine through gaps of a sparse cloud.
    """
    if not 0.0 <= image_alpha <= 1.0:
        raise ValueError(f"image_alpha: expected a value in [0, 1], got {image_alpha}")
    points, colours = _check_cloud(points_xyz_m, colors_rgb)
    projection = project_points(points, view, occlusion=occlusion)
    seen = projection.visible
    canvas = np.round(view.image_rgb.astype(np.float64) * image_alpha).astype(np.uint8)
    pixels = np.floor(projection.uv_px[seen].astype(np.float64) + 0.5).astype(np.int64)
    _splat(canvas, pixels, colours[seen], -projection.depth_m[seen], radius_px)
    return canvas


@dataclass
class ScanPanel:
    """One scan of the demo and its labellings to compare with the ground truth, in column order.

    name: used in the figure's heading and its file name (letters, digits, '.', '_', '-').
    predictions: column title -> (N,) training ids, e.g. {"unadapted": ..., "adapted": ...}.
    """

    name: str
    scan: Scan
    predictions: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        if not _PANEL_NAME.match(self.name):
            raise ValueError(f"panel name: expected letters, digits, '.', '_' or '-', got {self.name!r}")
        if self.scan.labels is None:
            raise ValueError(f"panel {self.name}: the scan has no labels, so there is no ground truth to compare with")
        if TRUTH_COLUMN in self.predictions:
            raise ValueError(f"panel {self.name}: {TRUTH_COLUMN!r} is the truth column, not a prediction name")
        for column, labels in self.predictions.items():
            if np.shape(labels) != (self.scan.num_points,):
                raise ValueError(f"panel {self.name}, prediction {column!r}: expected ({self.scan.num_points},) "
                                 f"labels, one per point, got shape {np.shape(labels)}")

    def labellings(self) -> dict[str, np.ndarray]:
        """Column title -> labels, ground truth first."""
        return {TRUTH_COLUMN: np.asarray(self.scan.labels), **{k: np.asarray(v) for k, v in self.predictions.items()}}


@dataclass(frozen=True)
class RasterBox:
    """Where one raster lies in a scan figure's PNG: its top-left pixel and the integer factor it is scaled by."""

    left_px: int
    top_px: int
    width_px: int  # raster width x scale
    height_px: int
    scale: int

    def png_pixel(self, column: int, row: int) -> tuple[int, int]:
        """(x, y) of the PNG pixel at the centre of the block showing raster pixel (column, row)."""
        return self.left_px + column * self.scale + self.scale // 2, self.top_px + row * self.scale + self.scale // 2


@dataclass(frozen=True)
class ScanFigureLayout:
    """Everything a scan figure shows except the rasters themselves, fixed before drawing so callers and tests can
    find a raster in the PNG: ``boxes[(row, column)]`` with row ROW_TOP or ROW_CAMERA and column TRUTH_COLUMN or a
    prediction name; ``top_frame`` maps points to top-view raster pixels."""

    size_px: tuple[int, int]  # (width, height) of the PNG
    boxes: dict[tuple[str, str], RasterBox]
    top_frame: TopViewFrame
    column_titles: dict[str, str]
    row_labels: dict[str, str]
    legend_ids: tuple[int, ...]  # classes present in the truth or a prediction
    legend_unknown: bool  # whether some point has no known class


def column_titles(panel: ScanPanel, label_set: LabelSet) -> dict[str, str]:
    """Column -> title; a prediction's title carries its mIoU on this scan in % with one decimal ("n/a" when the
    scan has no labelled point)."""
    titles = {TRUTH_COLUMN: f"{TRUTH_COLUMN}\n{label_set.name}"}
    for column, predicted in panel.predictions.items():
        value = miou(panel.scan.labels, predicted, label_set.num_classes)
        titles[column] = f"{column}\nmIoU {100.0 * value:.1f} %" if np.isfinite(value) else f"{column}\nmIoU n/a"
    return titles


def scan_figure_layout(
    panel: ScanPanel, label_set: LabelSet, top_view_px: tuple[int, int] = TOP_VIEW_PX
) -> ScanFigureLayout:
    """The pixel plan of ``write_scan_figure``: a row of top views, then (when the scan has a camera) a row of
    overlays on its first camera, one column per labelling, a legend on the right."""
    columns = list(panel.labellings())
    raster_sizes = {ROW_TOP: _check_size(top_view_px)}
    row_labels = {ROW_TOP: "from above"}
    if panel.scan.cameras:
        camera = panel.scan.cameras[0]
        raster_sizes[ROW_CAMERA] = (camera.intrinsics.width_px, camera.intrinsics.height_px)
        row_labels[ROW_CAMERA] = f"camera {camera.name}"
    scales = {row: max(1, CELL_PX // max(size)) for row, size in raster_sizes.items()}
    cell_w = max(size[0] * scales[row] for row, size in raster_sizes.items())
    boxes = {}
    top = HEADER_PX + TITLE_PX
    for row, (width, height) in raster_sizes.items():
        scale = scales[row]
        for i, column in enumerate(columns):
            left = MARGIN_PX + ROW_LABEL_PX + i * (cell_w + COL_GAP_PX) + (cell_w - width * scale) // 2
            boxes[(row, column)] = RasterBox(left, top, width * scale, height * scale, scale)
        top += height * scale + ROW_GAP_PX
    legend_ids, legend_unknown = _present_classes(panel, label_set)
    legend_h = HEADER_PX + TITLE_PX + LEGEND_ROW_PX * (len(legend_ids) + legend_unknown + 1)
    size_px = (
        MARGIN_PX + ROW_LABEL_PX + len(columns) * cell_w + (len(columns) - 1) * COL_GAP_PX + LEGEND_PX + MARGIN_PX,
        max(top - ROW_GAP_PX + MARGIN_PX, legend_h),
    )
    return ScanFigureLayout(
        size_px=size_px,
        boxes=boxes,
        top_frame=TopViewFrame.fit(panel.scan.points_xyz_m, top_view_px),
        column_titles=column_titles(panel, label_set),
        row_labels=row_labels,
        legend_ids=legend_ids,
        legend_unknown=legend_unknown,
    )


def scan_rasters(
    panel: ScanPanel, label_set: LabelSet, layout: ScanFigureLayout, top_max_z_m: float | None = None
) -> dict[tuple[str, str], np.ndarray]:
    """The rasters of a scan figure, keyed like ``layout.boxes``; every top view shares ``layout.top_frame``.

    ``top_max_z_m`` leaves points above it out of the top views only: indoors the ceiling would hide the room.
    """
    points = panel.scan.points_xyz_m
    below = np.ones(len(points), dtype=bool) if top_max_z_m is None else points[:, 2] <= top_max_z_m
    rasters = {}
    for column, labels in panel.labellings().items():
        colours = label_colours(labels, label_set)
        rasters[(ROW_TOP, column)] = render_top_view(layout.top_frame, points[below], colours[below])
        if (ROW_CAMERA, column) in layout.boxes:
            rasters[(ROW_CAMERA, column)] = overlay_on_image(panel.scan.cameras[0], points, colours)
    return rasters


def write_scan_figure(
    panel: ScanPanel,
    label_set: LabelSet,
    path: Path,
    top_view_px: tuple[int, int] = TOP_VIEW_PX,
    top_max_z_m: float | None = None,
) -> Path:
    """One PNG comparing the panel's labellings (see the module docstring and ``scan_figure_layout`` for where each
    raster lies in it); returns ``path``."""
    if panel.scan.label_set and panel.scan.label_set != label_set.name:
        raise ValueError(f"panel {panel.name}: the scan is labelled in {panel.scan.label_set!r}, "
                         f"the figure was asked for {label_set.name!r}")
    layout = scan_figure_layout(panel, label_set, top_view_px)
    rasters = scan_rasters(panel, label_set, layout, top_max_z_m)
    plt = _pyplot()
    width, height = layout.size_px
    fig = plt.figure(figsize=(width / FIGURE_DPI, height / FIGURE_DPI), dpi=FIGURE_DPI, facecolor="white")
    for key, box in layout.boxes.items():
        ax = fig.add_axes(_figure_rect(box, layout.size_px))
        ax.imshow(rasters[key], interpolation="nearest", aspect="auto")
        ax.set_axis_off()
    _draw_text(fig, panel, layout)
    _draw_legend(fig, layout, label_set)
    path = Path(path)
    fig.savefig(path, dpi=FIGURE_DPI, facecolor="white")
    plt.close(fig)
    return path


def write_steps_plot(
    curve: dict[str, Sequence[tuple[int, float]]], path: Path, title: str = "mIoU over adaptation steps"
) -> Path:
    """mIoU (%) against adaptation steps, one line with markers per split or strategy; returns ``path``.

    Values are fractions in [0, 1] as metrics.miou gives them (NaN points are left out); percentages are refused,
    since plotting 45.0 as 4500 % would go unnoticed.
    """
    if not curve:
        raise ValueError("curve: expected at least one named series of (step, mIoU) points, got none")
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=FIGURE_DPI)
    for name, measured in curve.items():
        steps, values = _check_series(name, measured)
        ax.plot(steps, 100.0 * values, marker="o", linewidth=1.5, label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("adaptation steps")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_demo_figures(
    panels: Sequence[ScanPanel],
    label_set: LabelSet,
    out_dir: Path,
    curve: dict[str, Sequence[tuple[int, float]]] | None = None,
    top_max_z_m: float | None = None,
) -> list[Path]:
    """``scan_<name>.png`` per panel and, when a curve is given, ``miou_over_steps.png``, in ``out_dir``."""
    names = [panel.name for panel in panels]
    if len(set(names)) != len(names):
        raise ValueError(f"panels: names must differ (each names a file), got {names}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [write_scan_figure(p, label_set, out_dir / f"scan_{p.name}.png", top_max_z_m=top_max_z_m) for p in panels]
    if curve is not None:
        paths.append(write_steps_plot(curve, out_dir / "miou_over_steps.png"))
    return paths


def _splat(canvas: np.ndarray, pixels: np.ndarray, colours: np.ndarray, priority: np.ndarray, radius_px: int) -> None:
    """Paint a square of ``radius_px`` around each (column, row) pixel into ``canvas`` (H, W, 3), in place; where
    squares overlap the larger ``priority`` wins (ties: the later point), whatever the order of the offsets."""
    if radius_px < 0:
        raise ValueError(f"radius_px: expected >= 0, got {radius_px}")
    height, width = canvas.shape[:2]
    order = np.argsort(priority, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    winner = np.full(height * width, -1, dtype=np.int64)  # rank of the point shown at each pixel
    for dy in range(-radius_px, radius_px + 1):
        for dx in range(-radius_px, radius_px + 1):
            col, row = pixels[:, 0] + dx, pixels[:, 1] + dy
            inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
            np.maximum.at(winner, row[inside] * width + col[inside], rank[inside])
    painted = winner >= 0
    canvas.reshape(-1, 3)[painted] = colours[order[winner[painted]]]


def _check_points(points_xyz_m: np.ndarray) -> np.ndarray:
    points = np.asarray(points_xyz_m, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points_xyz_m: expected shape (N, 3), got {points.shape}")
    return points


def _check_cloud(points_xyz_m: np.ndarray, colors_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    points = _check_points(points_xyz_m)
    colours = np.asarray(colors_rgb)
    if colours.shape != (len(points), 3):
        raise ValueError(f"colors_rgb: expected ({len(points)}, 3), one colour per point, got {colours.shape}")
    if colours.dtype != np.uint8:
        raise ValueError(f"colors_rgb: expected uint8 (e.g. from label_colours), got {colours.dtype}")
    return points, colours


def _check_size(size_px: tuple[int, int]) -> tuple[int, int]:
    width, height = (int(v) for v in size_px)
    if width <= 0 or height <= 0:
        raise ValueError(f"size_px: expected a positive (width, height), got {size_px}")
    return width, height


def _finite_rows(points: np.ndarray) -> np.ndarray:
    return points[np.isfinite(points).all(axis=1)]


def _present_classes(panel: ScanPanel, label_set: LabelSet) -> tuple[tuple[int, ...], bool]:
    """Classes that some labelling of the panel uses, and whether some point is unknown (ignored or out of range)."""
    used = np.unique(np.concatenate([np.asarray(labels).reshape(-1) for labels in panel.labellings().values()]))
    known = (used >= 0) & (used < label_set.num_classes)
    return tuple(int(v) for v in used[known]), bool((~known).any())


def _figure_rect(box: RasterBox, size_px: tuple[int, int]) -> list[float]:
    """A box in PNG pixels (origin top-left) as matplotlib's figure fractions (origin bottom-left)."""
    width, height = size_px
    return [box.left_px / width, (height - box.top_px - box.height_px) / height,
            box.width_px / width, box.height_px / height]


def _draw_text(fig: Any, panel: ScanPanel, layout: ScanFigureLayout) -> None:
    """Heading, column titles above the first row and row labels left of each row, all outside the raster boxes."""
    width, height = layout.size_px
    fig.text(MARGIN_PX / width, 1 - (HEADER_PX / 2) / height, f"scan {panel.name}", fontsize=12,
             fontweight="bold", va="center", ha="left")
    first_row = next(iter(layout.row_labels))
    for (row, column), box in layout.boxes.items():
        if row == first_row:
            x = (box.left_px + box.width_px / 2) / width
            fig.text(x, 1 - (box.top_px - 4) / height, layout.column_titles[column], fontsize=10, ha="center",
                     va="bottom", linespacing=1.2)
    for row, label in layout.row_labels.items():
        box = next(b for (r, _), b in layout.boxes.items() if r == row)
        fig.text((MARGIN_PX + ROW_LABEL_PX / 2) / width, 1 - (box.top_px + box.height_px / 2) / height, label,
                 fontsize=10, rotation=90, ha="center", va="center")


def _draw_legend(fig: Any, layout: ScanFigureLayout, label_set: LabelSet) -> None:
    """Class colours for the classes the figure shows, in the column reserved right of the rasters."""
    from matplotlib.patches import Patch

    palette = label_set.palette()
    handles = [Patch(facecolor=palette[i] / 255.0, label=label_set.class_names[i]) for i in layout.legend_ids]
    if layout.legend_unknown:
        handles.append(Patch(facecolor=np.array(UNKNOWN_RGB) / 255.0, label="unknown"))
    width, height = layout.size_px
    fig.legend(handles=handles, loc="upper left", fontsize=9, frameon=False, title="classes", title_fontsize=9,
               bbox_to_anchor=((width - MARGIN_PX - LEGEND_PX + 6) / width, 1 - (HEADER_PX + TITLE_PX) / height))


def _check_series(name: str, measured: Sequence[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one series, sorted by step, without NaN values; ValueError on empty or percent input."""
    points = np.asarray(list(measured), dtype=np.float64).reshape(-1, 2)
    points = points[np.argsort(points[:, 0], kind="stable")]
    points = points[np.isfinite(points[:, 1])]
    if len(points) == 0:
        raise ValueError(f"curve {name!r}: expected (step, mIoU) points, got none with a finite mIoU")
    if ((points[:, 1] < 0) | (points[:, 1] > 1)).any():
        raise ValueError(f"curve {name!r}: expected mIoU fractions in [0, 1] (metrics.miou), got values up to "
                         f"{points[:, 1].max():g}; pass fractions, not percent")
    return points[:, 0], points[:, 1]
