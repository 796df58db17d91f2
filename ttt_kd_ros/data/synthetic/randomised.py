"""Domains drawn at random: what the stand-in teacher's pre-training sees beside the named domains.

A foundation model such as DINOv2 is worth distilling because its patch
features stay semantic across palettes, lighting, cameras and buildings it
was never tuned for. The stand-in teacher gets that property the way
domain-randomised training gets it: every room it learns from may have its own
palette (any hue), light colour and strength, room size, camera height, pitch
and field of view, and sensor noise. ``Randomisation`` holds the ranges as
data; ``BEYOND_TRAINING`` lies outside every training range and is used only
to report how the features hold up on shifts the teacher never saw.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, replace

import numpy as np

from ttt_kd_ros.data.synthetic.domains import HOME, OFFICE, Domain
from ttt_kd_ros.data.synthetic.scene import SceneStyle
from ttt_kd_ros.data.synthetic.sensors import SensorConfig

Range = tuple[float, float]


@dataclass(frozen=True)
class Randomisation:
    """(low, high) ranges every randomised room and camera is drawn from (uniformly)."""

    saturation: Range = (0.0, 0.75)
    value: Range = (0.2, 0.95)
    colours_per_class: tuple[int, int] = (1, 3)
    colour_jitter: Range = (0.02, 0.1)
    texture_strength: Range = (0.0, 0.45)
    room_width_m: Range = (3.5, 9.0)
    room_depth_m: Range = (3.0, 7.0)
    room_height_m: Range = (2.4, 3.4)
    ambient: Range = (0.25, 0.65)
    light_intensity: Range = (0.35, 0.85)
    light_tint: Range = (0.0, 0.25)  # how far one channel of the light colour drops below 1
    hfov_deg: Range = (50.0, 85.0)
    camera_height_m: Range = (0.5, 1.8)
    camera_pitch_deg: Range = (-35.0, 8.0)
    image_noise: Range = (0.0, 0.05)
    lidar_fraction: float = 0.3  # share of rooms seen from a robot-mounted camera (LiDAR rigs)


TRAINING = Randomisation()

BEYOND_TRAINING = Randomisation(
    saturation=(0.75, 1.0),
    value=(0.1, 0.2),
    colour_jitter=(0.1, 0.15),
    texture_strength=(0.45, 0.6),
    room_width_m=(9.0, 12.0),
    room_depth_m=(7.0, 9.0),
    room_height_m=(3.4, 4.0),
    ambient=(0.65, 0.8),
    light_intensity=(0.85, 1.0),
    light_tint=(0.25, 0.45),
    hfov_deg=(85.0, 100.0),
    camera_height_m=(1.8, 2.2),
    image_noise=(0.05, 0.08),
)
"""Every range past the training one (very saturated or dark palettes, strong colour casts, halls, wide lenses)."""


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(*bounds))


def random_palette(classes: tuple[str, ...], ranges: Randomisation,
                   rng: np.random.Generator) -> dict[str, tuple[tuple[int, int, int], ...]]:
    """Per class 1-3 base colours of any hue, saturation and value within ``ranges``: colour says nothing of class."""
    palette = {}
    for cls in classes:
        count = int(rng.integers(ranges.colours_per_class[0], ranges.colours_per_class[1] + 1))
        colours = []
        for _ in range(count):
            rgb = colorsys.hsv_to_rgb(rng.uniform(), _uniform(rng, ranges.saturation), _uniform(rng, ranges.value))
            colours.append(tuple(round(255 * c) for c in rgb))
        palette[cls] = tuple(colours)
    return palette


def random_style(ranges: Randomisation, rng: np.random.Generator) -> SceneStyle:
    """A building: furniture counts of a home or an office, everything that shows in an image randomised."""
    base = HOME if rng.uniform() < 0.5 else OFFICE
    tint = np.ones(3)
    tint[rng.integers(3)] -= _uniform(rng, ranges.light_tint)
    tint[rng.integers(3)] -= 0.5 * _uniform(rng, ranges.light_tint)
    intensity = _uniform(rng, ranges.light_intensity)
    ambient = _uniform(rng, ranges.ambient)
    return replace(
        base,
        name="randomised",
        room_width_m=(ranges.room_width_m[0], ranges.room_width_m[1]),
        room_depth_m=(ranges.room_depth_m[0], ranges.room_depth_m[1]),
        room_height_m=(ranges.room_height_m[0], ranges.room_height_m[1]),
        palette=random_palette(tuple(base.palette), ranges, rng),
        colour_jitter=_uniform(rng, ranges.colour_jitter),
        texture_strength=_uniform(rng, ranges.texture_strength),
        ambient=(ambient, ambient),
        light_intensity=(intensity, intensity),
        light_rgb=tuple(float(c) for c in np.clip(tint, 0.3, 1.0)),
    )


def random_sensor(ranges: Randomisation, rng: np.random.Generator) -> SensorConfig:
    """A camera: hand-held (RGB-D kind) or robot-mounted (LiDAR rig), with its lens, height, pitch and noise."""
    hfov = _uniform(rng, ranges.hfov_deg)
    noise = _uniform(rng, ranges.image_noise)
    if rng.uniform() < ranges.lidar_fraction:
        height = _uniform(rng, ranges.camera_height_m)
        return SensorConfig(kind="lidar", hfov_deg=hfov, camera_depth=False, image_noise=noise,
                            mount_height_m=(height, height))
    pitch = _uniform(rng, ranges.camera_pitch_deg)
    return SensorConfig(kind="rgbd", hfov_deg=hfov, image_noise=noise, camera_height_m=ranges.camera_height_m,
                        camera_pitch_deg=(pitch, pitch))


def random_domain(ranges: Randomisation, seed: int) -> Domain:
    """One randomised domain, deterministic in ``seed`` (a room and its camera are then drawn from it)."""
    rng = np.random.default_rng([seed, 77])
    return Domain("randomised", random_style(ranges, rng), random_sensor(ranges, rng))


__all__ = ["BEYOND_TRAINING", "TRAINING", "Randomisation", "random_domain", "random_palette", "random_sensor",
           "random_style"]
