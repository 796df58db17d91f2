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
import json
import time
from dataclasses import dataclass, field

import numpy as np

from ttt_kd_ros.data.synthetic import DOMAINS, Domain, generate_scan, get_domain, scan_seed
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


def _parse_value(text: str, current: object, where: str) -> object:
    """A command-line value for a dataclass field, typed like the field's current value."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    if isinstance(current, tuple):
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a JSON list like [1.0, 2.0] for a tuple field, got {text!r}")
        return tuple(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {text!r}")
        return value
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {text!r}")
        if isinstance(current, float):
            return float(value)
        if not float(value).is_integer():
            raise ValueError(f"{where}: expected an integer, got {text!r}")
        return int(value)
    if isinstance(current, str):
        return str(value)
    raise ValueError(f"{where}: field of type {type(current).__name__} cannot be set from the command line")


def _replace(obj: object, changes: dict[str, str], where: str) -> object:
    """One dataclasses.replace with every change (typed like the current values), so validation sees them together."""
    names = {f.name for f in dataclasses.fields(obj)}
    typed = {}
    for key, text in changes.items():
        if key not in names:
            raise ValueError(f"{where}: unknown field {key!r} of {type(obj).__name__}; known: {sorted(names)}")
        typed[key] = _parse_value(text, getattr(obj, key), f"{where}, field {key!r}")
    try:
        return dataclasses.replace(obj, **typed)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def _pairs(text: str, where: str) -> list[tuple[str, str]]:
    pairs = []
    for item in _split_overrides(text):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{where}: expected field=value, got {item!r}")
        pairs.append((key.strip(), value.strip()))
    return pairs


def apply_overrides(obj: object, text: str, where: str) -> object:
    """A copy of dataclass ``obj`` with ``field=value,...`` (JSON values) applied; ValueError names ``where``."""
    return _replace(obj, dict(_pairs(text, where)), where)


def parse_domain(spec: str) -> Domain:
    """``DOMAIN[:part.field=value,...]`` -> Domain; part is ``sensor`` (SensorConfig) or ``style`` (SceneStyle).

    Values are JSON (numbers, true/false, [lists] for tuples) or bare strings.
    A ValueError names the spec, the field, and what was expected.
    """
    base, _, overrides = spec.partition(":")
    domain = get_domain(base.strip())
    where = f"domain spec {spec!r}"
    changes: dict[str, dict[str, str]] = {"sensor": {}, "style": {}}
    for key, value in _pairs(overrides, where):
        part, dot, field_name = key.partition(".")
        if not dot or part not in changes or not field_name:
            raise ValueError(f"{where}: expected sensor.<field>=<value> or style.<field>=<value>, got {key!r}")
        changes[part][field_name] = value
    sensor = _replace(domain.sensor, changes["sensor"], where) if changes["sensor"] else domain.sensor
    style = _replace(domain.style, changes["style"], where) if changes["style"] else domain.style
    return Domain(name=domain.name, style=style, sensor=sensor)


def _split_overrides(text: str) -> list[str]:
    """Split ``a=1,b=[1,2],c=x`` on the commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item for item in items if item.strip()]


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
