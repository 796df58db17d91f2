"""Teacher feature maps on disk: each image's ViT forward runs once per data set and teacher, never per epoch.

Joint training revisits every scan each epoch and every evaluation row sees
the same images, while the teacher is frozen: recomputing its features is
pure waste (a ViT-S/14 forward costs more than a training step of the 3D
network on a CPU). The cache is a folder:

    teacher.json                   the teacher id, input resolution and feature width it belongs to
    ab/abcdef....safetensors       one feature map, float16 (C, Hp, Wp), keyed by sha256 of the image content

Keys hash what the features depend on (the image bytes and shape, or the
rendered class image for the oracle control), so a renamed or re-read file
hits and an edited image misses. A folder made for another teacher or
resolution is refused with both named. Entries are written to a temporary
file and renamed, so an interrupted run leaves complete entries only and a
rerun resumes; an unreadable entry is recomputed (and counted), never
trusted. Safetensors holds tensors and strings only: no pickle is read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ttt_kd_ros.scan import CameraView
from ttt_kd_ros.teachers.teacher import FeatureMap, Teacher

LOG = logging.getLogger(__name__)

MANIFEST = "teacher.json"
FORMAT_VERSION = 1


@dataclass
class CacheStats:
    """What a run did with the cache: entries read, computed and written, and broken entries replaced."""

    hits: int = 0
    computed: int = 0
    rebuilt: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "computed": self.computed, "rebuilt": self.rebuilt}


def teacher_identity(teacher: Teacher) -> dict[str, object]:
    """What a cached feature depends on besides the image: the manifest of a cache folder."""
    resolution = teacher.resolution if isinstance(teacher.resolution, int) else list(teacher.resolution)
    return {"format": FORMAT_VERSION, "teacher_id": teacher.teacher_id, "resolution": resolution,
            "feature_dim": teacher.feature_dim, "patch_size": teacher.patch_size}


def content_key(arrays: tuple[np.ndarray, ...]) -> str:
    """sha256 over each array's dtype, shape and bytes: the same content gives the same key in any process."""
    digest = hashlib.sha256()
    for array in arrays:
        a = np.ascontiguousarray(array)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


class FeatureCache:
    """A cache folder bound to one teacher; ``view_feature_map`` is the teacher's, served from disk when it can.

    read_only: a missing entry is an error instead of a teacher forward (DataLoader workers, which must never
    run the ViT themselves). device: where served maps live (the teacher's by default; the CPU in workers).
    """

    def __init__(self, root: str | Path, teacher: Teacher, read_only: bool = False,
                 device: str | torch.device | None = None) -> None:
        self.root = Path(root)
        self.teacher = teacher
        self.read_only = read_only
        self.device = teacher.device if device is None else torch.device(device)
        self.stats = CacheStats()
        self._bind()

    def _bind(self) -> None:
        identity = teacher_identity(self.teacher)
        manifest = self.root / MANIFEST
        if manifest.is_file():
            try:
                stored = json.loads(manifest.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"feature cache {manifest}: not valid JSON ({err}); delete the folder to rebuild it"
                                 ) from None
            if stored != identity:
                only_resolution = {k: v for k, v in stored.items() if k != "resolution"} == {
                    k: v for k, v in identity.items() if k != "resolution"}
                fix = (f"run with the cache's resolution (--teacher-resolution "
                       f"{' '.join(map(str, np.atleast_1d(stored.get('resolution'))))}) or give another cache folder"
                       if only_resolution else "give another cache folder")
                raise ValueError(f"feature cache {self.root} belongs to teacher {stored.get('teacher_id')!r} at "
                                 f"resolution {stored.get('resolution')} ({stored.get('feature_dim')}-dim); this run "
                                 f"uses {identity['teacher_id']!r} at {identity['resolution']} "
                                 f"({identity['feature_dim']}-dim): {fix}")
            return
        if self.read_only:
            raise ValueError(f"feature cache {self.root}: no {MANIFEST}; fill it first with ttt_kd_cache_features")
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(manifest, json.dumps(identity, indent=1))

    def key(self, view: CameraView) -> str:
        return content_key(self.teacher.view_inputs(view))

    def entry_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def view_feature_map(self, view: CameraView) -> FeatureMap:
        """The teacher's FeatureMap of ``view``: read from the cache, or computed, stored and returned."""
        path = self.entry_path(self.key(view))
        if path.is_file():
            fmap = self._read(path)
            if fmap is not None:
                self.stats.hits += 1
                return fmap
            self.stats.rebuilt += 1
        if self.read_only:
            raise ValueError(f"feature cache {self.root}: no entry for camera {view.name!r} ({path.name}); fill the "
                             "cache with ttt_kd_cache_features before reading it read-only")
        fmap = self.teacher.view_feature_map(view)
        self._write(path, fmap)
        self.stats.computed += 1
        # Serve what later reads will serve: float16, so a cold and a warm run train on the same numbers.
        return _as_stored(fmap, self.device)

    def _read(self, path: Path) -> FeatureMap | None:
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                features = f.get_tensor("features")
            image_size = tuple(int(v) for v in meta["image_size"].split(","))
            input_size = tuple(int(v) for v in meta["input_size"].split(","))
        except (SafetensorError, OSError, KeyError, ValueError) as err:
            LOG.warning("feature cache entry %s is unreadable (%s): recomputing it", path, err)
            return None
        if features.ndim != 3 or features.shape[0] != self.teacher.feature_dim:
            LOG.warning("feature cache entry %s holds %s features, the teacher gives %d channels: recomputing it",
                        path, tuple(features.shape), self.teacher.feature_dim)
            return None
        return FeatureMap(features.to(self.device, torch.float32), image_size_px=image_size,
                          input_size_px=input_size)

    def _write(self, path: Path, fmap: FeatureMap) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        save_file({"features": fmap.features.detach().to("cpu", torch.float16).contiguous()}, str(tmp),
                  metadata={"image_size": ",".join(map(str, fmap.image_size_px)),
                            "input_size": ",".join(map(str, fmap.input_size_px))})
        tmp.replace(path)


def _as_stored(fmap: FeatureMap, device: torch.device) -> FeatureMap:
    features = fmap.features.detach().to("cpu", torch.float16).to(device, torch.float32)
    return FeatureMap(features, image_size_px=fmap.image_size_px, input_size_px=fmap.input_size_px)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class CachedTeacher(Teacher):
    """A Teacher whose feature maps come through a FeatureCache: what training and evaluation hand to
    ``distillation_targets`` and the Segmenter, so neither knows a cache exists."""

    def __init__(self, inner: Teacher, cache_dir: str | Path, read_only: bool = False,
                 device: str | torch.device | None = None) -> None:
        self._init_runtime(inner.teacher_id, feature_dim=inner.feature_dim, patch_size=inner.patch_size,
                           resolution=inner.resolution, device=inner.device if device is None else device,
                           cache_size=inner.cache_size)
        self.inner = inner
        self.cache = FeatureCache(cache_dir, inner, read_only=read_only, device=self.device)

    def __repr__(self) -> str:
        return f"CachedTeacher({self.inner!r}, cache={self.cache.root})"

    def input_size(self, width_px: int, height_px: int) -> tuple[int, int]:
        return self.inner.input_size(width_px, height_px)

    def view_inputs(self, view: CameraView) -> tuple[np.ndarray, ...]:
        return self.inner.view_inputs(view)

    def feature_map(self, image_rgb: np.ndarray) -> FeatureMap:
        raise ValueError("CachedTeacher: ask for a camera's features with view_feature_map(view)")

    def view_feature_map(self, view: CameraView) -> FeatureMap:
        return self.cache.view_feature_map(view)


    def view_feature_maps(self, views: list[CameraView]) -> list[FeatureMap]:
        """One camera at a time: each entry is read from (or written to) disk on its own."""
        return [self.view_feature_map(view) for view in views]
