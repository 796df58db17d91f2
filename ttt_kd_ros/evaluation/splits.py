"""Evaluation splits: a name, a synthetic domain, and the scans drawn from it once.

A shift is data, never a code path: every split is a ``Domain`` (scene style x
sensor) from ``data.synthetic.DOMAINS``, optionally with some of its
parameters changed on the command line, so anyone can evaluate a shift this
module never heard of:

    office                                   the named domain, split called "office"
    heavy=noisy:sensor.dropout=0.6           "noisy" with a field changed, split called "heavy"
    dim=source:style.ambient=[0.1,0.2],sensor.image_noise=0.1

Scans are generated once per split and reused by every strategy.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from ttt_kd_ros.data.synthetic import DOMAINS, Domain, generate_scan, scan_seed
from ttt_kd_ros.data.synthetic.domains import parse_domain
from ttt_kd_ros.scan import Scan

IN_DISTRIBUTION = "source"
DEFAULT_SHIFTS = ("office", "lidar", "noisy")
"""Other scene style (same RGB-D sensor); LiDAR instead of the depth camera (same rooms);
heavy depth noise + coarser, thinner cloud + grainy images (same rooms, same sensor kind)."""

SUBSAMPLE_MODES = ("random", "crop")
DEFAULT_EVAL_SEED = 20261121
"""Base seed of evaluation scans: far from the training tool's small seeds, and scan_seed(base, i) never
repeats across base seeds, so evaluation rooms are not training rooms."""


@dataclass(frozen=True)
class SplitSpec:
    """A named split: the domain its scans come from and the text it was parsed from (for reports)."""

    name: str
    domain: Domain
    spec: str

    def describe(self) -> str:
        return self.spec if self.spec != self.name else f"{self.name} (synthetic domain)"


def parse_split(text: str) -> SplitSpec:
    """``NAME=DOMAIN_SPEC`` or a bare domain name (the split takes its name)."""
    name, eq, spec = text.partition("=")
    if not eq:
        name, spec = text, text
    name, spec = name.strip(), spec.strip()
    if not name or not spec:
        raise ValueError(f"split {text!r}: expected NAME=DOMAIN[:overrides] or a domain name from {sorted(DOMAINS)}")
    if not all(ch.isalnum() or ch in "_-" for ch in name):
        raise ValueError(f"split {text!r}: name {name!r} may only hold letters, digits, '_' and '-'")
    domain = parse_domain(spec)
    return SplitSpec(name=name, domain=dataclasses.replace(domain, name=name), spec=text.strip())


@dataclass
class SplitData:
    """The scans of one split, generated once; generation_s is their total generation time."""

    spec: SplitSpec
    scans: list[Scan]
    seeds: list[int]
    generation_s: float = 0.0
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


def limit_points(scan: Scan, max_points: int, mode: str, seed: int) -> Scan:
    """The scan with at most ``max_points`` points: a seeded random subset, or the nearest (x-y) to a random point.

    A data-level cap (the same scans for every strategy), for a CPU that cannot
    afford full scans; 0 keeps the scan as it is.
    """
    if mode not in SUBSAMPLE_MODES:
        raise ValueError(f"subsample mode: expected one of {SUBSAMPLE_MODES}, got {mode!r}")
    n = scan.num_points
    if max_points <= 0 or n <= max_points:
        return scan
    rng = np.random.default_rng([seed, 7])
    if mode == "random":
        keep = np.sort(rng.choice(n, max_points, replace=False))
    else:
        xy = scan.points_xyz_m[:, :2]
        dist2 = ((xy - xy[rng.integers(n)]) ** 2).sum(axis=1)
        keep = np.sort(np.argpartition(dist2, max_points - 1)[:max_points])
    return scan.select(keep)


def split_scan(spec: SplitSpec, index: int, base_seed: int, max_points: int = 0, subsample: str = "random") -> Scan:
    """Scan ``index`` of a split: deterministic in (domain, base_seed, index)."""
    seed = scan_seed(base_seed, index)
    scan = generate_scan(spec.domain, seed)
    scan.stamp_ns = index * 100_000_000
    return limit_points(scan, max_points, subsample, seed)


def generate_split(spec: SplitSpec, num_scans: int, base_seed: int = DEFAULT_EVAL_SEED, max_points: int = 0,
                   subsample: str = "random") -> SplitData:
    """``num_scans`` scans of the split, kept in memory so every strategy sees the same ones."""
    if num_scans < 1:
        raise ValueError(f"scans per split: expected >= 1, got {num_scans}")
    start = time.perf_counter()
    scans = [split_scan(spec, i, base_seed, max_points, subsample) for i in range(num_scans)]
    seeds = [scan_seed(base_seed, i) for i in range(num_scans)]
    return SplitData(spec, scans, seeds, time.perf_counter() - start,
                     {"mean_points": float(np.mean([s.num_points for s in scans])),
                      "cameras": int(np.mean([len(s.cameras) for s in scans]))})
