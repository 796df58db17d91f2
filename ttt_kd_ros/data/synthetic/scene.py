"""Procedural indoor rooms built from labelled boxes.

A room is an axis-aligned shell (floor, ceiling, four walls) plus furniture
assembled from boxes that may be rotated about the vertical axis. Boxes are
the only primitive because one slab test then covers the whole world, which
keeps ray casting a handful of batched numpy operations. Every primitive
carries its class id (SYNTHETIC_INDOOR), colour, texture and LiDAR
reflectance, so any ray hit is labelled and shaded without a second lookup.

Room frame: origin at the centre of the floor, z up, walls at
x = +-width/2 and y = +-depth/2, ceiling at z = height.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ttt_kd_ros.labels import SYNTHETIC_INDOOR

CLASS_ID = {name: i for i, name in enumerate(SYNTHETIC_INDOOR.class_names)}

TEXTURE_PLAIN, TEXTURE_CHECKER, TEXTURE_STRIPES, TEXTURE_SPECKLE = 0, 1, 2, 3

NUM_ROOM_SURFACES = 6
"""Rows 0..5 of a Scene: floor, ceiling, wall -x, wall +x, wall -y, wall +y."""

# LiDAR reflectance per class: glass returns little, light walls a lot.
_REFLECTANCE = {
    "floor": 0.35, "wall": 0.7, "ceiling": 0.75, "table": 0.45, "chair": 0.4, "sofa": 0.3,
    "bed": 0.55, "cabinet": 0.5, "door": 0.45, "window": 0.08, "clutter": 0.6,
}

# Default texture kind per class (patterns only change colour, never geometry).
_TEXTURE = {
    "floor": TEXTURE_CHECKER, "wall": TEXTURE_SPECKLE, "ceiling": TEXTURE_PLAIN, "table": TEXTURE_STRIPES,
    "chair": TEXTURE_PLAIN, "sofa": TEXTURE_SPECKLE, "bed": TEXTURE_STRIPES, "cabinet": TEXTURE_STRIPES,
    "door": TEXTURE_STRIPES, "window": TEXTURE_PLAIN, "clutter": TEXTURE_CHECKER,
}

_HOME_PALETTE: dict[str, tuple[tuple[int, int, int], ...]] = {
    "floor": ((150, 105, 70), (170, 130, 90), (120, 85, 60)),
    "wall": ((235, 225, 200), (225, 205, 180), (210, 220, 200)),
    "ceiling": ((245, 240, 230),),
    "table": ((130, 85, 50), (160, 110, 70), (100, 70, 45)),
    "chair": ((110, 75, 45), (170, 60, 50), (60, 90, 60)),
    "sofa": ((150, 60, 60), (90, 110, 150), (180, 160, 120)),
    "bed": ((230, 230, 240), (200, 170, 200), (170, 200, 220)),
    "cabinet": ((200, 170, 120), (140, 100, 70), (240, 240, 235)),
    "door": ((120, 80, 50), (235, 235, 230)),
    "window": ((160, 200, 235), (180, 215, 240)),
    "clutter": ((220, 60, 60), (60, 160, 220), (240, 200, 60), (80, 180, 90), (200, 120, 200)),
}


@dataclass(frozen=True)
class SceneStyle:
    """What a kind of building looks like; a domain shift is a change here.

    Counts are (min, max) inclusive per object kind; colours are 0-255 RGB
    base colours per class, jittered per object by ``colour_jitter``.
    """

    name: str = "home"
    room_width_m: tuple[float, float] = (4.0, 6.5)
    room_depth_m: tuple[float, float] = (3.5, 5.5)
    room_height_m: tuple[float, float] = (2.5, 2.9)
    counts: dict[str, tuple[int, int]] = field(
        default_factory=lambda: {
            "door": (1, 1), "window": (1, 2), "cabinet": (1, 3), "bed": (0, 1), "sofa": (0, 1),
            "table": (1, 2), "chairs_per_table": (2, 4), "chair": (0, 1),
            "clutter_per_table": (1, 4), "clutter_on_floor": (1, 4),
        }
    )
    palette: dict[str, tuple[tuple[int, int, int], ...]] = field(default_factory=lambda: dict(_HOME_PALETTE))
    colour_jitter: float = 0.08
    texture_strength: float = 0.35
    yaw_jitter_deg: float = 25.0
    ambient: tuple[float, float] = (0.35, 0.5)
    light_intensity: tuple[float, float] = (0.5, 0.7)
    light_rgb: tuple[float, float, float] = (1.0, 0.92, 0.8)
    table_height_m: tuple[float, float] = (0.70, 0.78)
    clutter_scale: float = 1.0  # multiplies both clutter counts: a tidy (< 1) or a cluttered (> 1) building


@dataclass
class Scene:
    """All primitives of one room as parallel arrays (rows 0..5 are the room shell).

    P primitives; boxes are rows NUM_ROOM_SURFACES..P-1. ``object_id`` groups the
    parts of one piece of furniture (a table's top and legs share one id).
    """

    room_size_m: np.ndarray  # (3,) width (x), depth (y), height (z)
    center_m: np.ndarray  # (P, 3) float64
    half_size_m: np.ndarray  # (P, 3) float64
    yaw_rad: np.ndarray  # (P,) float64, rotation about z
    class_id: np.ndarray  # (P,) int64, SYNTHETIC_INDOOR ids
    albedo: np.ndarray  # (P, 3) float32 in [0, 1]
    texture: np.ndarray  # (P,) int64, TEXTURE_* kind
    texture_freq: np.ndarray  # (P,) float32, pattern cycles per metre
    reflectance: np.ndarray  # (P,) float32 in [0, 1]
    object_id: np.ndarray  # (P,) int64
    light_pos_m: np.ndarray  # (3,)
    light_rgb: np.ndarray  # (3,) float32, intensity included
    ambient: float
    texture_strength: float

    @property
    def num_primitives(self) -> int:
        return len(self.class_id)

    def boxes_of_class(self, name: str) -> np.ndarray:
        """Row indices of the furniture boxes labelled ``name``."""
        rows = np.flatnonzero(self.class_id == CLASS_ID[name])
        return rows[rows >= NUM_ROOM_SURFACES]


class _SceneBuilder:
    """Collects primitives row by row and footprints for collision-free placement."""

    def __init__(self, style: SceneStyle, rng: np.random.Generator, room: np.ndarray) -> None:
        self.style = style
        self.rng = rng
        self.room = room
        self.rows: list[tuple] = []
        self.footprints: list[tuple[float, float, float, float]] = []  # xmin, xmax, ymin, ymax
        self.next_object = 0

    def colour(self, cls: str) -> np.ndarray:
        choices = self.style.palette[cls]
        base = np.asarray(choices[self.rng.integers(len(choices))], dtype=np.float64) / 255.0
        return np.clip(base + self.rng.normal(0.0, self.style.colour_jitter, 3), 0.02, 1.0)

    def new_object(self) -> int:
        self.next_object += 1
        return self.next_object

    def add(self, cls: str, center, half, yaw: float, albedo: np.ndarray, obj: int, texture: int | None = None) -> None:
        freq = float(self.rng.uniform(2.0, 6.0))
        tex = _TEXTURE[cls] if texture is None else texture
        self.rows.append((center, half, yaw, CLASS_ID[cls], albedo, tex, freq, _REFLECTANCE[cls], obj))

    def add_part(self, cls: str, pose: tuple[float, float, float], offset, half, albedo: np.ndarray, obj: int) -> None:
        """A box given in an object's frame (x, y, yaw) -> room frame."""
        x, y, yaw = pose
        c, s = np.cos(yaw), np.sin(yaw)
        ox, oy, oz = offset
        self.add(cls, (x + c * ox - s * oy, y + s * ox + c * oy, oz), half, yaw, albedo, obj)

    def free(self, rect: tuple[float, float, float, float], margin: float = 0.05) -> bool:
        x0, x1, y0, y1 = rect
        w, d = self.room[0] / 2, self.room[1] / 2
        if x0 < -w or x1 > w or y0 < -d or y1 > d:
            return False
        return all(x1 + margin <= a0 or x0 - margin >= a1 or y1 + margin <= b0 or y0 - margin >= b1
                   for a0, a1, b0, b1 in self.footprints)

    def place_free(self, half_xy: tuple[float, float], yaw: float, tries: int = 30) -> tuple[float, float] | None:
        """A random spot in the room where an object of this footprint fits, or None."""
        c, s = abs(np.cos(yaw)), abs(np.sin(yaw))
        hx, hy = c * half_xy[0] + s * half_xy[1], s * half_xy[0] + c * half_xy[1]
        w, d = self.room[0] / 2, self.room[1] / 2
        for _ in range(tries):
            x = self.rng.uniform(-w + hx, w - hx) if w > hx else 0.0
            y = self.rng.uniform(-d + hy, d - hy) if d > hy else 0.0
            rect = (x - hx, x + hx, y - hy, y + hy)
            if self.free(rect):
                self.footprints.append(rect)
                return x, y
        return None

    def place_on_wall(self, width: float, depth: float, tries: int = 30) -> tuple[float, float, float] | None:
        """(x, y, yaw) of an object whose back touches a random wall; +x of the object faces the room."""
        w, d = self.room[0] / 2, self.room[1] / 2
        for _ in range(tries):
            wall = int(self.rng.integers(4))
            if wall < 2:  # walls at x = -w, +w
                along = d - width / 2
                if along <= 0:
                    continue
                y = self.rng.uniform(-along, along)
                sign = -1 if wall == 0 else 1
                x, yaw = sign * (w - depth / 2), (0.0 if wall == 0 else np.pi)
                rect = (x - depth / 2, x + depth / 2, y - width / 2, y + width / 2)
            else:
                along = w - width / 2
                if along <= 0:
                    continue
                x = self.rng.uniform(-along, along)
                sign = -1 if wall == 2 else 1
                y, yaw = sign * (d - depth / 2), (np.pi / 2 if wall == 2 else -np.pi / 2)
                rect = (x - width / 2, x + width / 2, y - depth / 2, y + depth / 2)
            if self.free(rect, margin=0.02):
                self.footprints.append(rect)
                return x, y, yaw
        return None

    def count(self, key: str) -> int:
        lo, hi = self.style.counts.get(key, (0, 0))
        if key.startswith("clutter") and self.style.clutter_scale != 1.0:
            lo, hi = round(lo * self.style.clutter_scale), round(hi * self.style.clutter_scale)
        return int(self.rng.integers(lo, hi + 1))

    def yaw(self) -> float:
        return float(np.deg2rad(self.rng.uniform(-self.style.yaw_jitter_deg, self.style.yaw_jitter_deg)))


def _add_shell(b: _SceneBuilder) -> None:
    w, d, h = b.room
    half = np.array([w / 2, d / 2, h / 2])
    centre = (0.0, 0.0, h / 2)
    floor, wall, ceiling = b.colour("floor"), b.colour("wall"), b.colour("ceiling")
    # The shell rows keep the room's centre and half size so texture coordinates are room-relative.
    for cls, albedo in (("floor", floor), ("ceiling", ceiling), *[("wall", wall)] * 4):
        b.add(cls, centre, half, 0.0, albedo, 0)


def _add_wall_openings(b: _SceneBuilder) -> None:
    """Doors and windows: 4 cm slabs centred on a wall plane, so 2 cm stand into the room."""
    for cls in ["door"] * b.count("door") + ["window"] * b.count("window"):
        width = b.rng.uniform(0.8, 1.0) if cls == "door" else b.rng.uniform(0.8, 1.6)
        # Doors keep a clearance in front so nothing blocks them.
        spot = b.place_on_wall(width, 0.6 if cls == "door" else 0.3)
        if spot is None:
            continue
        x, y, yaw = spot
        back = 0.3 if cls == "door" else 0.15  # from the placed footprint centre back to the wall plane
        x, y = x - np.cos(yaw) * back, y - np.sin(yaw) * back
        if cls == "door":
            z0, height = 0.0, b.rng.uniform(2.0, min(2.2, b.room[2] - 0.2))
        else:
            z0 = b.rng.uniform(0.8, 1.0)
            height = b.rng.uniform(0.8, min(1.4, b.room[2] - z0 - 0.25))
        b.add(cls, (x, y, z0 + height / 2), (0.02, width / 2, height / 2), yaw, b.colour(cls), b.new_object())


def _add_cabinet(b: _SceneBuilder) -> None:
    width, depth = b.rng.uniform(0.5, 1.2), b.rng.uniform(0.35, 0.6)
    height = b.rng.uniform(0.8, min(2.1, b.room[2] - 0.2))
    spot = b.place_on_wall(width, depth)
    if spot is not None:
        x, y, yaw = spot
        half = (depth / 2, width / 2, height / 2)
        b.add("cabinet", (x, y, height / 2), half, yaw, b.colour("cabinet"), b.new_object())


def _add_bed(b: _SceneBuilder) -> None:
    length, width = b.rng.uniform(1.9, 2.1), b.rng.uniform(0.9, 1.7)
    spot = b.place_on_wall(width, length)
    if spot is None:
        return
    pose, obj = spot, b.new_object()
    frame, sheets = b.colour("bed"), b.colour("bed")
    b.add_part("bed", pose, (0.0, 0.0, 0.2), (length / 2, width / 2, 0.2), frame, obj)
    b.add_part("bed", pose, (0.02, 0.0, 0.5), (length / 2 - 0.04, width / 2 - 0.03, 0.1), sheets, obj)
    b.add_part("bed", pose, (-length / 2 + 0.04, 0.0, 0.55), (0.04, width / 2, 0.55), frame, obj)


def _add_sofa(b: _SceneBuilder) -> None:
    length, depth = b.rng.uniform(1.6, 2.4), b.rng.uniform(0.8, 1.0)
    spot = b.place_on_wall(length, depth)
    if spot is None:
        return
    pose, obj, albedo = spot, b.new_object(), b.colour("sofa")
    b.add_part("sofa", pose, (0.05, 0.0, 0.21), (depth / 2 - 0.05, length / 2 - 0.15, 0.21), albedo, obj)
    b.add_part("sofa", pose, (-depth / 2 + 0.1, 0.0, 0.42), (0.1, length / 2, 0.42), albedo, obj)
    for side in (-1, 1):
        b.add_part("sofa", pose, (0.0, side * (length / 2 - 0.075), 0.3), (depth / 2, 0.075, 0.3), albedo, obj)


def _add_chair(b: _SceneBuilder, pose: tuple[float, float, float], obj: int) -> None:
    """Chair facing its +x; seat 45 cm high."""
    albedo = b.colour("chair")
    b.add_part("chair", pose, (0.0, 0.0, 0.45), (0.22, 0.22, 0.025), albedo, obj)
    b.add_part("chair", pose, (-0.2, 0.0, 0.72), (0.025, 0.22, 0.25), albedo, obj)
    for lx in (-0.19, 0.19):
        for ly in (-0.19, 0.19):
            b.add_part("chair", pose, (lx, ly, 0.2125), (0.02, 0.02, 0.2125), albedo, obj)


def _add_clutter(b: _SceneBuilder, x: float, y: float, z0: float, max_half: float) -> None:
    half = (b.rng.uniform(0.03, max_half), b.rng.uniform(0.03, max_half), b.rng.uniform(0.03, max_half * 1.5))
    b.add("clutter", (x, y, z0 + half[2]), half, float(b.rng.uniform(-np.pi, np.pi)), b.colour("clutter"),
          b.new_object())


def _add_table_group(b: _SceneBuilder) -> None:
    """A table with chairs around it and clutter on top."""
    length, width = b.rng.uniform(0.8, 1.6), b.rng.uniform(0.6, 0.9)
    height = b.rng.uniform(*b.style.table_height_m)
    yaw = b.yaw()
    # Reserve room for the chairs around the table in the footprint; shrink the table if the room is full.
    spot = None
    for shrink in (1.0, 0.8, 0.65):
        length, width = max(0.6, length * shrink), max(0.5, width * shrink)
        spot = b.place_free((length / 2 + 0.5, width / 2 + 0.5), yaw, tries=40)
        if spot is not None:
            break
    if spot is None:
        return
    pose, obj, albedo = (spot[0], spot[1], yaw), b.new_object(), b.colour("table")
    b.add_part("table", pose, (0.0, 0.0, height - 0.02), (length / 2, width / 2, 0.02), albedo, obj)
    for lx in (-1, 1):
        for ly in (-1, 1):
            b.add_part("table", pose, (lx * (length / 2 - 0.06), ly * (width / 2 - 0.06), (height - 0.04) / 2),
                       (0.03, 0.03, (height - 0.04) / 2), albedo, obj)
    c, s = np.cos(yaw), np.sin(yaw)
    sides = [(length / 2 + 0.3, 0.0, np.pi), (-length / 2 - 0.3, 0.0, 0.0),
             (0.0, width / 2 + 0.3, -np.pi / 2), (0.0, -width / 2 - 0.3, np.pi / 2)]
    order = b.rng.permutation(len(sides))
    for k in order[: b.count("chairs_per_table")]:
        ox, oy, face = sides[k]
        ox, oy = ox + b.rng.uniform(-0.05, 0.05), oy + b.rng.uniform(-0.05, 0.05)
        _add_chair(b, (spot[0] + c * ox - s * oy, spot[1] + s * ox + c * oy, yaw + face), b.new_object())
    for _ in range(b.count("clutter_per_table")):
        lx = b.rng.uniform(-length / 2 + 0.12, length / 2 - 0.12)
        ly = b.rng.uniform(-width / 2 + 0.12, width / 2 - 0.12)
        _add_clutter(b, spot[0] + c * lx - s * ly, spot[1] + s * lx + c * ly, height, 0.1)


def generate_scene(style: SceneStyle, rng: np.random.Generator) -> Scene:
    """One random room of ``style``; deterministic given the generator state."""
    room = np.array([rng.uniform(*style.room_width_m), rng.uniform(*style.room_depth_m),
                     rng.uniform(*style.room_height_m)])
    b = _SceneBuilder(style, rng, room)
    _add_shell(b)
    _add_wall_openings(b)
    # Tables first: they carry chairs and clutter, the classes a crowded room would otherwise lose.
    for _ in range(b.count("table")):
        _add_table_group(b)
    for _ in range(b.count("bed")):
        _add_bed(b)
    for _ in range(b.count("sofa")):
        _add_sofa(b)
    for _ in range(b.count("cabinet")):
        _add_cabinet(b)
    for _ in range(b.count("chair")):
        yaw = float(rng.uniform(-np.pi, np.pi))
        spot = b.place_free((0.25, 0.25), yaw)
        if spot is not None:
            _add_chair(b, (spot[0], spot[1], yaw), b.new_object())
    for _ in range(b.count("clutter_on_floor")):
        spot = b.place_free((0.25, 0.25), 0.0)
        if spot is not None:
            _add_clutter(b, spot[0], spot[1], 0.0, 0.22)

    cols = list(zip(*b.rows, strict=True))
    light_scale = rng.uniform(*style.light_intensity)
    light_xy = rng.uniform(-0.3, 0.3, 2) * room[:2]
    return Scene(
        room_size_m=room,
        center_m=np.asarray(cols[0], dtype=np.float64),
        half_size_m=np.asarray(cols[1], dtype=np.float64),
        yaw_rad=np.asarray(cols[2], dtype=np.float64),
        class_id=np.asarray(cols[3], dtype=np.int64),
        albedo=np.asarray(cols[4], dtype=np.float32),
        texture=np.asarray(cols[5], dtype=np.int64),
        texture_freq=np.asarray(cols[6], dtype=np.float32),
        reflectance=np.asarray(cols[7], dtype=np.float32),
        object_id=np.asarray(cols[8], dtype=np.int64),
        light_pos_m=np.array([light_xy[0], light_xy[1], room[2] - 0.1]),
        light_rgb=(np.asarray(style.light_rgb) * light_scale).astype(np.float32),
        ambient=float(rng.uniform(*style.ambient)),
        texture_strength=float(style.texture_strength),
    )
