"""Named domains: a scene style paired with a sensor, and nothing else.

Domain shift experiments compare models across these names, so a domain must
differ from another only in the parameters it declares; there is no code
path per domain.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ttt_kd_ros.config_edits import pairs, replace_fields
from ttt_kd_ros.data.synthetic.scene import SceneStyle
from ttt_kd_ros.data.synthetic.sensors import SensorConfig

HOME = SceneStyle()

OFFICE = SceneStyle(
    name="office",
    room_width_m=(5.0, 8.0),
    room_depth_m=(4.0, 6.5),
    room_height_m=(2.6, 3.2),
    counts={
        "door": (1, 2), "window": (2, 3), "cabinet": (2, 4), "bed": (0, 0), "sofa": (0, 1),
        "table": (2, 3), "chairs_per_table": (1, 3), "chair": (1, 2),
        "clutter_per_table": (2, 5), "clutter_on_floor": (0, 2),
    },
    palette={
        "floor": ((110, 110, 115), (90, 95, 110), (130, 125, 120)),
        "wall": ((245, 245, 245), (225, 230, 235), (200, 210, 220)),
        "ceiling": ((250, 250, 250),),
        "table": ((230, 230, 225), (180, 180, 185), (60, 60, 65)),
        "chair": ((40, 40, 45), (30, 60, 120), (90, 90, 95)),
        "sofa": ((70, 70, 80), (40, 70, 110)),
        "bed": ((200, 200, 200),),
        "cabinet": ((170, 175, 180), (220, 220, 220), (90, 95, 100)),
        "door": ((200, 200, 205), (150, 150, 160)),
        "window": ((140, 180, 220),),
        "clutter": ((240, 240, 240), (30, 30, 30), (200, 50, 40), (50, 120, 200)),
    },
    colour_jitter=0.05,
    texture_strength=0.15,
    yaw_jitter_deg=5.0,
    ambient=(0.45, 0.6),
    light_intensity=(0.5, 0.65),
    light_rgb=(0.9, 0.95, 1.0),
    table_height_m=(0.72, 0.76),
)

RGBD = SensorConfig(kind="rgbd")
LIDAR = SensorConfig(kind="lidar", hfov_deg=90.0, camera_depth=False, num_cameras=3)


@dataclass(frozen=True)
class Domain:
    """A kind of building seen by a kind of sensor."""

    name: str
    style: SceneStyle = field(default_factory=SceneStyle)
    sensor: SensorConfig = field(default_factory=SensorConfig)


DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in (
        Domain("source", HOME, RGBD),
        Domain("office", OFFICE, RGBD),
        Domain("lidar", HOME, LIDAR),
        Domain("office_lidar", OFFICE, LIDAR),
        # Same rooms as "source"; the sensor is worse: noisier depth, a coarser grid, lost points, grainy images.
        Domain("noisy", HOME, replace(RGBD, depth_noise_m=0.01, depth_noise_quad=0.008, voxel_size_m=0.05,
                                      max_points=20000, dropout=0.3, image_noise=0.05)),
    )
}


def get_domain(domain: str | Domain) -> Domain:
    """``domain`` itself, or the named entry of DOMAINS (a ValueError lists the names)."""
    if isinstance(domain, Domain):
        return domain
    try:
        return DOMAINS[domain]
    except KeyError:
        raise ValueError(f"synthetic domain: expected one of {sorted(DOMAINS)}, got {domain!r}") from None


def parse_domain(spec: str) -> Domain:
    """``DOMAIN[:part.field=value,...]`` -> Domain; part is ``sensor`` (SensorConfig) or ``style`` (SceneStyle).

    Values are JSON (numbers, true/false, [lists] for tuples) or bare strings.
    A ValueError names the spec, the field, and what was expected.
    """
    base, _, overrides = spec.partition(":")
    domain = get_domain(base.strip())
    where = f"domain spec {spec!r}"
    changes: dict[str, dict[str, str]] = {"sensor": {}, "style": {}}
    for key, value in pairs(overrides, where):
        part, dot, field_name = key.partition(".")
        if not dot or part not in changes or not field_name:
            raise ValueError(f"{where}: expected sensor.<field>=<value> or style.<field>=<value>, got {key!r}")
        changes[part][field_name] = value
    sensor = replace_fields(domain.sensor, changes["sensor"], where) if changes["sensor"] else domain.sensor
    style = replace_fields(domain.style, changes["style"], where) if changes["style"] else domain.style
    return Domain(name=domain.name, style=style, sensor=sensor)
