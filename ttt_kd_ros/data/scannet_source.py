"""The ``scannet:`` data source: scenes of a ScanNet root (SensReader exports) as one indexable sequence of Scans.

    scannet:/data/scannet?scenes=scannetv2_train.txt&frames_per_scan=4&frame_step=20&max_points=80000

ROOT holds ``scans/<scene_id>/`` (the ScanNet release layout), scene folders
directly, or is itself one scene folder (it has ``color/``). Each scene
folder is read by data.scannet.ScanNetFrames; the scans of the selected
scenes follow each other in the order the scenes are named (sorted when
none are named).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ttt_kd_ros.data.scannet import ScanNetFrames
from ttt_kd_ros.data.source_spec import SourceSpec
from ttt_kd_ros.data.sources import DataSource
from ttt_kd_ros.labels import SCANNET20
from ttt_kd_ros.scan import Scan

LOG = logging.getLogger(__name__)


class ScanNetSource(DataSource):
    """Scans of several ScanNet scenes, scene after scene; labeled (scannet20) when the scenes have label pngs.

    Scenes must agree: some with a label folder and some without is an error (an unlabeled scene in a
    training set would otherwise train as "ignore" everywhere).
    """

    kind = "scannet"

    def __init__(self, scenes: list[ScanNetFrames], spec: str) -> None:
        super().__init__(spec)
        self.scenes = scenes
        labeled = [s.has_labels for s in scenes]
        if any(labeled) and not all(labeled):
            unlabeled = [s.root.name for s in scenes if not s.has_labels]
            raise ValueError(f"data spec {spec!r}: scene(s) {unlabeled[:10]} have no label folder "
                             f"(label-filt/, label/ or label40/) while the others have one; select only labeled "
                             "or only unlabeled scenes")
        self.label_set = SCANNET20.name if scenes and all(labeled) else ""
        self._index = [(s, i) for s, scene in enumerate(scenes) for i in range(len(scene))]

    def __len__(self) -> int:
        return len(self._index)

    def load(self, index: int) -> Scan:
        scene, i = self._index[index]
        return self.scenes[scene][i]

    def item_name(self, index: int) -> str:
        scene, i = self._index[index]
        frames = self.scenes[scene]
        first = frames.frame_ids[i * frames.frames_per_scan]
        return str(frames.root / "color" / f"{first}.jpg")


def read_scene_ids(path: Path) -> list[str]:
    """Scene ids of a split file: one per line; blank lines and ``#`` comments are skipped."""
    ids = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [i for i in ids if i]


def scene_ids_option(value: str, root: Path, where: str) -> list[str]:
    """``scenes=``: a split file (relative paths resolve against ROOT, then the working directory) or a comma
    list of scene ids."""
    given = Path(value).expanduser()
    candidates = [given] if given.is_absolute() else [root / given, Path.cwd() / given]
    for candidate in candidates:
        if candidate.is_file():
            ids = read_scene_ids(candidate)
            if not ids:
                raise ValueError(f"{where}: scene list {candidate} names no scene")
            return ids
    if "/" in value or value.endswith(".txt"):
        raise FileNotFoundError(f"{where}: scene list file {value!r} not found (looked for "
                                f"{', '.join(str(c) for c in candidates)})")
    ids = [i.strip() for i in value.split(",") if i.strip()]
    if not ids:
        raise ValueError(f"{where}: expected a scene list file or comma-separated scene ids, got {value!r}")
    return ids


def _is_scene(folder: Path) -> bool:
    return (folder / "color").is_dir()


def scannet_scene_folders(root: Path, scene_ids: list[str] | None, where: str) -> list[Path]:
    """The scene folders a ScanNet ROOT and an optional id list name (see the module docstring)."""
    if not root.is_dir():
        raise FileNotFoundError(f"{where}: folder {root} not found")
    if _is_scene(root):
        if scene_ids is not None:
            raise ValueError(f"{where}: scenes= given but {root} is itself a scene folder (it has color/)")
        return [root]
    base = root / "scans" if (root / "scans").is_dir() else root
    if scene_ids is not None:
        missing = [str(base / s) for s in scene_ids if not _is_scene(base / s)]
        if missing:
            raise FileNotFoundError(f"{where}: scene folder(s) with color/ not found: {missing[:10]}"
                                    f"{f' and {len(missing) - 10} more' if len(missing) > 10 else ''}")
        return [base / s for s in scene_ids]
    folders = sorted(p for p in base.iterdir() if p.is_dir())
    scenes = [p for p in folders if _is_scene(p)]
    if not scenes:
        raise FileNotFoundError(f"{where}: no scene folder (one with color/) in {base}")
    if len(scenes) < len(folders):
        LOG.warning("%s: %d folder(s) in %s have no color/ (not exported?) and are left out: %s", where,
                    len(folders) - len(scenes), base, [p.name for p in folders if not _is_scene(p)][:5])
    return scenes


def open_scannet(spec: SourceSpec, defaults: dict[str, int]) -> DataSource:
    """``scannet:ROOT?scenes=FILE|id,id&frames_per_scan=1&frame_step=1&max_points=0&depth_scale=1000``."""
    where = f"data spec {spec.text!r}"
    scenes_value = spec.take_str("scenes")
    frames_per_scan = spec.take_int("frames_per_scan", 1, minimum=1)
    frame_step = spec.take_int("frame_step", 1, minimum=1)
    max_points = spec.take_int("max_points", 0, minimum=0)
    depth_scale = spec.take_float("depth_scale", 1000.0)
    if not depth_scale > 0:
        raise ValueError(f"{where}: option depth_scale={depth_scale}: expected > 0")
    root = spec.path
    scene_ids = None if scenes_value is None else scene_ids_option(scenes_value, root, where)
    folders = scannet_scene_folders(root, scene_ids, where)
    scenes = [ScanNetFrames(folder, frame_step=frame_step, frames_per_scan=frames_per_scan,
                            depth_scale=depth_scale, max_points=max_points or None) for folder in folders]
    return ScanNetSource(scenes, spec.text)
