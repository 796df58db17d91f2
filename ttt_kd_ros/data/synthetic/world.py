"""Scans of the synthetic world, deterministic from (domain, seed).

The room and the sensor draw from two independent random streams of the
seed, so two domains with the same scene style and the same seed show the
same room: "source" vs "noisy" differ only in what the sensor does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ttt_kd_ros.data.synthetic.domains import Domain, get_domain
from ttt_kd_ros.data.synthetic.scene import Scene, generate_scene
from ttt_kd_ros.data.synthetic.sensors import sense
from ttt_kd_ros.labels import SYNTHETIC_INDOOR
from ttt_kd_ros.scan import Scan

_SCENE_STREAM, _SENSOR_STREAM = 0, 1


@dataclass
class SyntheticSample:
    """A scan with the world it was taken in, for tests and visualisation."""

    scan: Scan
    scene: Scene
    primitive: np.ndarray  # (N,) int64, Scene row of each point
    world_from_cloud: np.ndarray  # (4, 4): room frame <- scan frame


def generate_sample(domain: str | Domain, seed: int) -> SyntheticSample:
    """One scan of ``domain``, with its scene; equal seeds give equal arrays."""
    dom = get_domain(domain)
    if seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed}")
    scene = generate_scene(dom.style, np.random.default_rng([seed, _SCENE_STREAM]))
    cloud = sense(scene, dom.sensor, np.random.default_rng([seed, _SENSOR_STREAM]))
    scan = Scan(
        points_xyz_m=cloud.points_m,
        intensity=cloud.intensity,
        rgb=cloud.rgb,
        cameras=cloud.cameras,
        labels=scene.class_id[cloud.primitive],
        stamp_ns=0,
        frame_id=cloud.frame_id,
        label_set=SYNTHETIC_INDOOR.name,
    )
    return SyntheticSample(scan, scene, cloud.primitive, cloud.world_from_cloud)


def generate_scan(domain: str | Domain, seed: int) -> Scan:
    """One labelled scan with its camera views (see generate_sample)."""
    return generate_sample(domain, seed).scan


def scan_seed(base_seed: int, index: int) -> int:
    """Seed of scan ``index`` of a data set; distinct data set seeds never share scans."""
    return int(np.random.SeedSequence([base_seed, index]).generate_state(1, dtype=np.uint32)[0])


class SyntheticDataset:
    """``num_scans`` scans of one domain, generated on access (nothing is cached).

    Indexable and iterable; scan i has stamp i * ``period_ns`` so replayed
    sequences look like a sensor stream.
    """

    def __init__(self, domain: str | Domain, num_scans: int, seed: int = 0, period_ns: int = 100_000_000) -> None:
        if num_scans < 0:
            raise ValueError(f"num_scans: expected >= 0, got {num_scans}")
        self.domain = get_domain(domain)
        self.num_scans = num_scans
        self.seed = seed
        self.period_ns = period_ns

    def __len__(self) -> int:
        return self.num_scans

    def __getitem__(self, index: int) -> Scan:
        if not -self.num_scans <= index < self.num_scans:
            raise IndexError(f"SyntheticDataset index {index} out of range for {self.num_scans} scans")
        index %= self.num_scans
        scan = generate_scan(self.domain, scan_seed(self.seed, index))
        scan.stamp_ns = index * self.period_ns
        return scan

    def __iter__(self) -> Iterator[Scan]:
        for i in range(self.num_scans):
            yield self[i]
