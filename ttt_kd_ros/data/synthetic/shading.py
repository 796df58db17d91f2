"""Colour of a ray hit: albedo x procedural texture x (ambient + Lambert point light).

Textures matter because the 2D teacher sees them: without them every object
would be a flat colour and image features would carry no more than the
class palette. Patterns are functions of the hit point in the primitive's
own frame, so they stick to the object when the camera moves. No shadows:
they would cost a second ray per pixel.
"""

from __future__ import annotations

import numpy as np

from ttt_kd_ros.data.synthetic.raycast import Hits
from ttt_kd_ros.data.synthetic.scene import TEXTURE_CHECKER, TEXTURE_SPECKLE, TEXTURE_STRIPES, Scene


def _cell_hash(cells: np.ndarray) -> np.ndarray:
    """(N, 3) integer cells -> (N,) pseudo-random values in [0, 1)."""
    v = np.sin(cells @ np.array([12.9898, 78.233, 37.719])) * 43758.5453
    return v - np.floor(v)


def texture_pattern(hits: Hits, scene: Scene) -> np.ndarray:
    """(N,) pattern value in [0, 1]; 0.5 means no change to the albedo."""
    kind = scene.texture[hits.primitive]
    freq = scene.texture_freq[hits.primitive][:, None]
    p = hits.local_m * freq  # (N, 3) pattern coordinates
    out = np.full(len(kind), 0.5, dtype=np.float32)
    cells = np.floor(p)
    checker = kind == TEXTURE_CHECKER
    if checker.any():
        out[checker] = (cells[checker].sum(axis=1) % 2).astype(np.float32)
    stripes = kind == TEXTURE_STRIPES
    if stripes.any():
        # Grain along the primitive's longer horizontal axis: vary across the other one.
        half = scene.half_size_m[hits.primitive[stripes]]
        across = np.where(half[:, 0] >= half[:, 1], p[stripes, 1], p[stripes, 0]) * 3.0 + p[stripes, 2]
        out[stripes] = 0.5 + 0.5 * np.sin(2 * np.pi * across)
    speckle = kind == TEXTURE_SPECKLE
    if speckle.any():
        out[speckle] = _cell_hash(np.floor(p[speckle] * 4.0))
    return out


def shade(scene: Scene, hits: Hits, points: np.ndarray) -> np.ndarray:
    """(N, 3) float32 linear colour in [0, 1] of hits at room-frame ``points`` (N, 3)."""
    albedo = scene.albedo[hits.primitive]
    pattern = texture_pattern(hits, scene)
    albedo = albedo * (1.0 + scene.texture_strength * (pattern[:, None] - 0.5))
    to_light = scene.light_pos_m.astype(np.float32) - points
    dist = np.linalg.norm(to_light, axis=1, keepdims=True)
    lambert = np.clip(np.sum(hits.normal * to_light / np.maximum(dist, 1e-6), axis=1, keepdims=True), 0.0, None)
    falloff = 1.0 / (1.0 + 0.05 * dist**2)
    light = scene.ambient + lambert * falloff * scene.light_rgb[None, :] * 1.6
    return np.clip(albedo * light, 0.0, 1.0).astype(np.float32)
