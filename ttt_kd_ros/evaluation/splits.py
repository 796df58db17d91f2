"""Evaluation splits: a name and a data source, and the scans drawn from it once.

A shift is data, never a code path. A split is either a synthetic ``Domain``
(scene style x sensor) from ``data.synthetic.DOMAINS``, optionally with some
of its parameters changed on the command line, or any data-source spec
(data/sources.py), so anyone can evaluate a shift or a data set this module
never heard of:

    office                                   the named domain, split called "office"
    heavy=noisy:sensor.dropout=0.6           "noisy" with a field changed, split called "heavy"
    dim=source:style.ambient=[0.1,0.2],sensor.image_noise=0.1
    kitti08=semantickitti:/data/skitti?sequences=08&every=20     a real data set

A split's scans are its source's first ``--scans`` (synthetic: generated from
the evaluation seed). They are streamed, never held together: opening a split
reads each scan once to learn which load (the others are counted as skipped)
and what they hold, then keeps only the source and those indices; every pass
over ``SplitData.scans`` reads them again, one at a time (real sources read
their files or scan cache, synthetic scans are regenerated from their seed,
so every pass sees the same scans). A split of 400 real scans would otherwise
hold about 12 GB. When a split's labels are in another label set than the
checkpoint's, both sides are scored on the classes they share
(labels.common_classes), as the paper's cross-data-set tables are.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np

from ttt_kd_ros.data.sources import DataSource, SubsetSource, SyntheticSource, is_source_spec, open_source
from ttt_kd_ros.data.synthetic import DOMAINS, Domain, scan_seed
from ttt_kd_ros.data.synthetic.domains import parse_domain
from ttt_kd_ros.scan import Scan

LOG = logging.getLogger("ttt_kd_evaluate")

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
    """A named split: where its scans come from and the text it was parsed from (for reports).

    domain: the synthetic Domain (renamed to the split) when the split is synthetic, else None;
    source_spec: the data-source spec otherwise.
    """

    name: str
    spec: str
    domain: Domain | None = None
    source_spec: str = ""

    def describe(self) -> str:
        return self.spec if self.spec != self.name else f"{self.name} (synthetic domain)"

    def open(self, num_scans: int, base_seed: int) -> DataSource:
        """The split's first ``num_scans`` scans as a DataSource (synthetic: generated from ``base_seed``)."""
        if self.domain is not None:
            return SyntheticSource(self.domain, num_scans, base_seed, spec=self.spec, keep=0)
        # A synthetic source spec without scans= / seed= takes the evaluation's, never the training tool's seed 0,
        # and keeps no generated scan (keep=0) unless it says so: a split streams its scans.
        source = open_source(self.source_spec, scans=num_scans, seed=base_seed, keep=0)
        return source if len(source) <= num_scans else SubsetSource(source, range(num_scans), source.spec)


def parse_split(text: str) -> SplitSpec:
    """``NAME=SPEC`` or a bare synthetic domain name (the split takes its name); SPEC is a synthetic domain spec
    (``DOMAIN[:part.field=value,...]``) or a data-source spec (``KIND:ROOT?options``)."""
    name, eq, spec = text.partition("=")
    if not eq or (is_source_spec(text) and not is_source_spec(spec)):
        name, spec = text, text
    name, spec = name.strip(), spec.strip()
    if is_source_spec(spec) and name == spec:
        raise ValueError(f"split {text!r}: a data-source split needs a name: NAME={spec}")
    if not name or not spec:
        raise ValueError(f"split {text!r}: expected NAME=SPEC (a domain from {sorted(DOMAINS)} with optional "
                         "overrides, or a data-source spec KIND:ROOT?options) or a domain name")
    if not all(ch.isalnum() or ch in "_-" for ch in name):
        raise ValueError(f"split {text!r}: name {name!r} may only hold letters, digits, '_' and '-'")
    if is_source_spec(spec):
        return SplitSpec(name=name, spec=text.strip(), source_spec=spec)
    domain = parse_domain(spec)
    return SplitSpec(name=name, spec=text.strip(), domain=dataclasses.replace(domain, name=name))


class SplitScans(Sequence[Scan]):
    """The loadable scans of a split, read from the source on every access: one scan in memory at a time.

    ``indices``: the source indices that loaded when the split was opened. Each access runs split_scan again, so
    a scan is the same on every pass (same points, cap and stamp) but a new object: keep one only while using it.
    """

    def __init__(self, source: DataSource, indices: Sequence[int], base_seed: int, max_points: int = 0,
                 subsample: str = "random") -> None:
        self.source = source
        self.indices = list(indices)
        self.base_seed = base_seed
        self.max_points = max_points
        self.subsample = subsample

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, i: int) -> Scan: ...

    @overload
    def __getitem__(self, i: slice) -> SplitScans: ...

    def __getitem__(self, i: int | slice) -> Scan | SplitScans:
        if isinstance(i, slice):
            return SplitScans(self.source, self.indices[i], self.base_seed, self.max_points, self.subsample)
        return split_scan(self.source, self.indices[i], self.base_seed, self.max_points, self.subsample)

    def __iter__(self) -> Iterator[Scan]:
        for index in self.indices:
            yield split_scan(self.source, index, self.base_seed, self.max_points, self.subsample)


@dataclass
class SplitData:
    """One split: its scans (streamed from the source, SplitScans; a list only after ``kept()``), their seeds and
    what opening it found; generation_s is the time that first pass over the source took.

    label_set: the label set of the scans' labels; notes["skipped"]: scans that failed to load (file -> reason in
    notes["skipped_files"]), notes["scans"]: the scans that did, which every row then runs on.
    """

    spec: SplitSpec
    scans: Sequence[Scan]
    seeds: list[int]
    generation_s: float = 0.0
    notes: dict[str, object] = field(default_factory=dict)
    label_set: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    def kept(self) -> SplitData:
        """The split with its scans loaded once and held in a list: for a few scans visited many times (a sweep,
        the demo), where the same arrays let the teacher's feature cache hit."""
        return dataclasses.replace(self, scans=list(self.scans))


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


def split_scan(source: DataSource, index: int, base_seed: int, max_points: int = 0,
               subsample: str = "random") -> Scan:
    """Scan ``index`` of a split's source, capped: deterministic in (source, base_seed, index)."""
    scan = source[index]
    scan.stamp_ns = index * 100_000_000
    return limit_points(scan, max_points, subsample, scan_seed(base_seed, index))


def generate_split(spec: SplitSpec, num_scans: int, base_seed: int = DEFAULT_EVAL_SEED, max_points: int = 0,
                   subsample: str = "random", progress: bool = False) -> SplitData:
    """The split's first ``num_scans`` scans, each read once now (one at a time) to learn which load.

    A scan that fails to load is logged and left out (counted in ``notes["skipped"]``); a split left with no
    scans is an error naming the source. The scans themselves are not kept: ``SplitData.scans`` reads them
    again on each pass, so every strategy sees the same ones. ``progress``: a tqdm bar over this first pass.
    """
    if num_scans < 1:
        raise ValueError(f"scans per split: expected >= 1, got {num_scans}")
    from tqdm import tqdm

    start = time.perf_counter()
    source = spec.open(num_scans, base_seed)
    if not source.labeled:
        raise ValueError(f"split {spec.name}: {source.spec} has no labels; evaluation scores against labels (an "
                         "unlabeled source can still adapt: ttt_kd_replay, or training with --data)")
    indices, points, cameras, skipped = [], [], [], {}
    for i in tqdm(range(min(num_scans, len(source))), desc=f"opening split {spec.name}", unit="scan",
                  disable=not progress):
        try:
            scan = split_scan(source, i, base_seed, max_points, subsample)
        except (ValueError, FileNotFoundError, OSError) as err:
            skipped[source.item_name(i)] = str(err)
            LOG.warning("split %s: skipping %s: %s", spec.name, source.item_name(i), err)
            continue
        indices.append(i)
        points.append(scan.num_points)
        cameras.append(len(scan.cameras))
        del scan  # one scan alive at a time
    if not indices:
        raise ValueError(f"split {spec.name}: no scan of {source.spec} could be loaded")
    return SplitData(spec, SplitScans(source, indices, base_seed, max_points, subsample),
                     [scan_seed(base_seed, i) for i in indices], time.perf_counter() - start,
                     {"scans": len(indices), "mean_points": float(np.mean(points)), "cameras": int(np.mean(cameras)),
                      "source": source.describe(), "skipped": len(skipped), "skipped_files": skipped},
                     label_set=source.label_set)
