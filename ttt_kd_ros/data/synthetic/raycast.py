"""Batched ray casting against a Scene: the one routine every synthetic sensor uses.

Rays are tested against all boxes at once with the slab method in each box's
own frame (boxes rotate about z only, so the frame change is a 2D rotation),
and against the inside of the room shell, which every ray leaves. Rays are
processed in chunks so that the (rays x boxes) temporaries stay a few MB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttt_kd_ros.data.synthetic.scene import NUM_ROOM_SURFACES, Scene

_EPS = 1e-6


@dataclass
class Hits:
    """Where N rays first hit the scene (every ray hits: the room is closed)."""

    t_m: np.ndarray  # (N,) float32, distance along the unit direction
    primitive: np.ndarray  # (N,) int64, Scene row
    normal: np.ndarray  # (N, 3) float32, unit, facing the ray origin
    local_m: np.ndarray  # (N, 3) float32, hit point in the primitive's frame (texture coordinates)


def _room_exit(scene: Scene, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the shell and its row (0 floor, 1 ceiling, 2..5 walls) for rays inside the room."""
    w, dep, h = scene.room_size_m
    lo = np.array([-w / 2, -dep / 2, 0.0], dtype=np.float32)
    hi = np.array([w / 2, dep / 2, h], dtype=np.float32)
    safe = np.where(np.abs(d) < _EPS, _EPS, d)
    t_axis = np.where(d > 0, (hi - o) / safe, (lo - o) / safe)  # (N, 3)
    t_axis = np.where(np.abs(d) < _EPS, np.inf, t_axis)
    axis = np.argmin(t_axis, axis=1)
    t = t_axis[np.arange(len(o)), axis]
    positive = d[np.arange(len(o)), axis] > 0
    # axis x -> walls 2 (-x) / 3 (+x); y -> 4 / 5; z -> floor 0 / ceiling 1.
    row = np.where(axis == 2, np.where(positive, 1, 0), 2 + 2 * axis + positive.astype(np.int64))
    return t, row


def cast_rays(scene: Scene, origins: np.ndarray, directions: np.ndarray, chunk: int = 8192) -> Hits:
    """First hit of each ray.

    origins (N, 3) or (3,), directions (N, 3) unit vectors, both in the room frame.
    A box containing a ray's origin is not hit by that ray.
    """
    d_all = np.asarray(directions, dtype=np.float32).reshape(-1, 3)
    n = len(d_all)
    o_all = np.broadcast_to(np.asarray(origins, dtype=np.float32).reshape(-1, 3), (n, 3))
    boxes = slice(NUM_ROOM_SURFACES, None)
    bc = scene.center_m[boxes].astype(np.float32)
    bh = scene.half_size_m[boxes].astype(np.float32)
    cos = np.cos(scene.yaw_rad[boxes]).astype(np.float32)
    sin = np.sin(scene.yaw_rad[boxes]).astype(np.float32)

    t_out = np.empty(n, dtype=np.float32)
    prim_out = np.empty(n, dtype=np.int64)
    for start in range(0, n, chunk):
        o, d = o_all[start:start + chunk], d_all[start:start + chunk]
        t_room, row_room = _room_exit(scene, o, d)
        if len(bc):
            # Ray in each box's frame: p_local = R(yaw)^T (p - c).
            rx, ry = o[:, :1] - bc[:, 0], o[:, 1:2] - bc[:, 1]  # (n, M)
            lox, loy = cos * rx + sin * ry, -sin * rx + cos * ry
            loz = o[:, 2:3] - bc[:, 2]
            ldx, ldy = cos * d[:, :1] + sin * d[:, 1:2], -sin * d[:, :1] + cos * d[:, 1:2]
            ldz = np.broadcast_to(d[:, 2:3], lox.shape)
            t_near = np.full(lox.shape, -np.inf, dtype=np.float32)
            t_far = np.full(lox.shape, np.inf, dtype=np.float32)
            for lo, ld, half in ((lox, ldx, bh[:, 0]), (loy, ldy, bh[:, 1]), (loz, ldz, bh[:, 2])):
                inv = 1.0 / np.where(np.abs(ld) < _EPS, _EPS, ld)
                t1, t2 = (-half - lo) * inv, (half - lo) * inv
                np.maximum(t_near, np.minimum(t1, t2), out=t_near)
                np.minimum(t_far, np.maximum(t1, t2), out=t_far)
            t_box = np.where((t_near <= t_far) & (t_near > _EPS), t_near, np.inf)
            best = np.argmin(t_box, axis=1)
            t_best = t_box[np.arange(len(o)), best]
            use_box = t_best < t_room
            t_out[start:start + chunk] = np.where(use_box, t_best, t_room)
            prim_out[start:start + chunk] = np.where(use_box, best + NUM_ROOM_SURFACES, row_room)
        else:
            t_out[start:start + chunk] = t_room
            prim_out[start:start + chunk] = row_room
    normal, local = surface_frame(scene, o_all + d_all * t_out[:, None], prim_out, d_all)
    return Hits(t_m=t_out, primitive=prim_out, normal=normal, local_m=local)


def surface_frame(scene: Scene, points: np.ndarray, primitive: np.ndarray,
                  directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normals (facing against ``directions``) and primitive-frame coordinates of surface points.

    The face is the one whose slab the point is closest to relative to the
    box size, which is exact for points on a box surface and stable for the
    room shell (seen from the inside).
    """
    c = scene.center_m[primitive].astype(np.float32)
    half = scene.half_size_m[primitive].astype(np.float32)
    yaw = scene.yaw_rad[primitive]
    cos, sin = np.cos(yaw).astype(np.float32), np.sin(yaw).astype(np.float32)
    rel = points - c
    local = np.stack([cos * rel[:, 0] + sin * rel[:, 1], -sin * rel[:, 0] + cos * rel[:, 1], rel[:, 2]], axis=1)
    gap = np.abs(half - np.abs(local))  # distance to each face pair
    axis = np.argmin(gap, axis=1)
    n_local = np.zeros_like(local)
    n_local[np.arange(len(points)), axis] = np.sign(local[np.arange(len(points)), axis])
    # Local normal back to the room frame; then flip to face the viewer (shell normals point inward).
    normal = np.stack([cos * n_local[:, 0] - sin * n_local[:, 1], sin * n_local[:, 0] + cos * n_local[:, 1],
                       n_local[:, 2]], axis=1)
    flip = np.sum(normal * directions, axis=1) > 0
    normal[flip] *= -1
    return normal.astype(np.float32), local.astype(np.float32)
