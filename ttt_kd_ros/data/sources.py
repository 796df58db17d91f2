"""One data-source interface for every offline tool: a spec string -> an indexable sequence of Scans.

``open_source("semantickitti:/data/skitti?sequences=00-07,09-10")`` gives a
``DataSource``: ``len()``, ``source[i] -> Scan`` (labels in the source's
label set, or None when the data set has none), ``item_name(i)`` (the file
or frame, for error messages and skip logs) and ``label_set``. Training,
evaluation and the feature cache read nothing else, so a new data set is one
factory in ``SOURCE_KINDS`` (the spec grammar is in source_spec.py).

Options every kind takes: ``max_scans=N`` (the first N scans) and
``every=K`` (every K-th scan), applied after the kind's own selection.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ttt_kd_ros.data.semantic_kitti import SemanticKittiScans
from ttt_kd_ros.data.source_spec import SourceSpec, parse_source_spec
from ttt_kd_ros.data.synthetic import Domain, SyntheticDataset, scan_seed
from ttt_kd_ros.data.synthetic.domains import parse_domain
from ttt_kd_ros.labels import SEMANTIC_KITTI19, SYNTHETIC_INDOOR
from ttt_kd_ros.scan import Scan


class DataSource(ABC):
    """Scans of one data set (or a part of it) in a fixed order."""

    kind: str = ""
    label_set: str = ""  # the label set of the scans' labels; "" for an unlabeled source
    has_cameras: bool | None = None
    """Whether the scans carry camera images, when the source knows it without reading a scan (None: it does not).
    Why: joint training without an image has no distillation target, and a user should hear so before the first
    scan loads, not from an empty KD term at the end of an epoch."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def load(self, index: int) -> Scan:
        """Scan ``index`` (0 <= index < len); ValueError / FileNotFoundError naming the file when it is bad."""

    @abstractmethod
    def item_name(self, index: int) -> str:
        """What scan ``index`` is read from (a file, a frame id), as a person would look for it."""

    @property
    def labeled(self) -> bool:
        return bool(self.label_set)

    def __getitem__(self, index: int) -> Scan:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.spec}: scan {index} out of range for {len(self)} scans")
        return self.load(index % len(self))

    def __iter__(self) -> Iterator[Scan]:
        for i in range(len(self)):
            yield self[i]

    def describe(self) -> str:
        labels = f"labels {self.label_set}" if self.labeled else "no labels"
        return f"{self.spec} ({len(self)} scans, {labels})"


class SubsetSource(DataSource):
    """Some scans of another source, in its order (``max_scans`` / ``every`` options)."""

    def __init__(self, base: DataSource, indices: Sequence[int], spec: str) -> None:
        super().__init__(spec)
        self.base = base
        self.indices = list(indices)
        self.kind = base.kind
        self.label_set = base.label_set
        self.has_cameras = base.has_cameras

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> Scan:
        return self.base[self.indices[index]]

    def item_name(self, index: int) -> str:
        return self.base.item_name(self.indices[index])


# --------------------------------------------------------------------------------------------------- synthetic


class SyntheticSource(DataSource):
    """Scans of a synthetic domain: scan i is generated from scan_seed(seed, i), so any index is reproducible.

    Generated scans are kept (up to ``keep``) because an epoch revisits them and generation costs about as
    much as a training step on a CPU.
    """

    kind = "synthetic"
    label_set = SYNTHETIC_INDOOR.name
    has_cameras = True

    def __init__(self, domain: Domain, num_scans: int, seed: int, spec: str, keep: int = 256,
                 period_ns: int = 100_000_000) -> None:
        super().__init__(spec)
        self.world = SyntheticDataset(domain, num_scans, seed=seed, period_ns=period_ns)
        self.domain = domain
        self.seed = seed
        self.keep = keep
        self._kept: OrderedDict[int, Scan] = OrderedDict()

    def __len__(self) -> int:
        return len(self.world)

    def load(self, index: int) -> Scan:
        scan = self._kept.get(index)
        if scan is None:
            scan = self.world[index]
            if self.keep > 0:
                self._kept[index] = scan
                while len(self._kept) > self.keep:
                    self._kept.popitem(last=False)
        return scan

    def item_name(self, index: int) -> str:
        return f"synthetic {self.domain.name} scan {index} (seed {scan_seed(self.seed, index)})"


def synthetic_world(source: DataSource | None) -> SyntheticSource | None:
    """The synthetic world a source draws from (through a max_scans / every subset), or None for real data."""
    base = getattr(source, "base", source)
    return base if isinstance(base, SyntheticSource) else None


def _synthetic(spec: SourceSpec, defaults: dict[str, int]) -> DataSource:
    domain = parse_domain(spec.root)
    scans = spec.take_int("scans", defaults.get("scans", 64), minimum=0)
    seed = spec.take_int("seed", defaults.get("seed", 0))
    keep = spec.take_int("keep", defaults.get("keep", 256), minimum=0)
    return SyntheticSource(domain, scans, seed, spec.text, keep=keep)


# ---------------------------------------------------------------------------------------------- SemanticKITTI


class SemanticKittiSource(DataSource):
    """SemanticKITTI sequences (velodyne + labels, image_2 + calib.txt from KITTI odometry when present)."""

    kind = "semantickitti"
    label_set = SEMANTIC_KITTI19.name

    def __init__(self, folders: Sequence[Path], spec: str, cameras: bool = True) -> None:
        super().__init__(spec)
        self.sequences = [SemanticKittiScans(folder, cameras=cameras) for folder in folders]
        self.has_cameras = any(sequence.use_cameras for sequence in self.sequences)
        self._index = [(s, i) for s, seq in enumerate(self.sequences) for i in range(len(seq))]
        if not any(seq.has_labels for seq in self.sequences):
            self.label_set = ""

    def __len__(self) -> int:
        return len(self._index)

    def load(self, index: int) -> Scan:
        seq, i = self._index[index]
        return self.sequences[seq][i]

    def item_name(self, index: int) -> str:
        seq, i = self._index[index]
        return str(self.sequences[seq].scan_path(i))


def semantickitti_folders(root: Path, sequences: list[str] | None, where: str) -> list[Path]:
    """The sequence folders a SemanticKITTI root names: ROOT/sequences/<seq>, or ROOT itself when it is one
    sequence (velodyne/) or a flat folder of .bin files."""
    if not root.is_dir():
        raise FileNotFoundError(f"{where}: folder {root} not found")
    base = root / "sequences" if (root / "sequences").is_dir() else None
    if base is None:
        if sequences is not None:
            raise ValueError(f"{where}: sequences= given but {root} has no sequences/ folder")
        return [root]
    names = sequences or sorted(p.name for p in base.iterdir() if p.is_dir())
    missing = [n for n in names if not (base / n).is_dir()]
    if missing:
        raise FileNotFoundError(f"{where}: sequence folder(s) {[str(base / n) for n in missing]} not found")
    return [base / n for n in names]


def _semantickitti(spec: SourceSpec, defaults: dict[str, int]) -> DataSource:
    folders = semantickitti_folders(spec.path, spec.take_list("sequences"), f"data spec {spec.text!r}")
    return SemanticKittiSource(folders, spec.text, cameras=spec.take_bool("cameras", True))


# -------------------------------------------------------------------------------------------- KITTI (unlabeled)


class KittiSource(DataSource):
    """KITTI object-benchmark frames (velodyne, image_2, calib): no point labels, for adaptation-only runs."""

    kind = "kitti"
    label_set = ""

    def __init__(self, root: Path, spec: str) -> None:
        from ttt_kd_ros.data.kitti_object import KittiObjectFrames

        super().__init__(spec)
        if not root.is_dir():
            raise FileNotFoundError(f"data spec {spec!r}: folder {root} not found")
        self.frames = KittiObjectFrames(root)

    def __len__(self) -> int:
        return len(self.frames)

    def load(self, index: int) -> Scan:
        return self.frames[index]

    def item_name(self, index: int) -> str:
        return str(self.frames.root / "velodyne" / f"{self.frames.frame_ids[index]}.bin")


def _kitti(spec: SourceSpec, defaults: dict[str, int]) -> DataSource:
    return KittiSource(spec.path, spec.text)


# ------------------------------------------------------------------------------------------------- the registry

SourceFactory = Callable[[SourceSpec, dict[str, int]], DataSource]


def _lazy(module: str, name: str) -> SourceFactory:
    """A factory imported on first use: readers with heavy imports (rosbags) cost nothing until named."""

    def factory(spec: SourceSpec, defaults: dict[str, int]) -> DataSource:
        return getattr(importlib.import_module(module), name)(spec, defaults)

    return factory


SOURCE_KINDS: dict[str, SourceFactory] = {
    "synthetic": _synthetic,
    "semantickitti": _semantickitti,
    "kitti": _kitti,
    "nuscenes": _lazy("ttt_kd_ros.data.nuscenes_source", "open_nuscenes"),
    "scannet": _lazy("ttt_kd_ros.data.scannet_source", "open_scannet"),
    "bag": _lazy("ttt_kd_ros.data.bag_source", "open_bag"),
}


def is_source_spec(text: str) -> bool:
    """Whether ``text`` starts with a known ``KIND:`` (a bare synthetic domain spec does not)."""
    kind, colon, _ = text.strip().partition(":")
    return bool(colon) and kind in SOURCE_KINDS


def open_source(text: str, **defaults: int) -> DataSource:
    """The DataSource a spec names. ``defaults`` fill options the spec leaves out (a tool's ``--scans`` /
    ``--seed`` for synthetic data); ValueError / FileNotFoundError name the spec and what is wrong."""
    spec = parse_source_spec(text, tuple(SOURCE_KINDS))
    max_scans = spec.take_int("max_scans", None, minimum=1)
    every = spec.take_int("every", 1, minimum=1)
    source = SOURCE_KINDS[spec.kind](spec, defaults)
    spec.finish()
    if len(source) == 0:
        raise ValueError(f"data spec {text!r}: no scans found")
    if every > 1 or (max_scans is not None and max_scans < len(source)):
        indices = list(range(0, len(source), every))[:max_scans]
        source = SubsetSource(source, indices, source.spec)
    return source
