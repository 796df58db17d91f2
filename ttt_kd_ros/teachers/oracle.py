"""The oracle teacher: the upper bound of the teacher bracket, for synthetic scans only.

Each pixel's feature is a fixed random unit vector of its rendered class,
averaged over the teacher's patches (so boundary patches mix classes as a
ViT's do) and L2-normalised; optionally a fraction of patches get the vector
of a random class (``corrupt``), to see how much per-patch noise the
distillation tolerates. No image model can be this good, and no robot has a
class image, so the node never offers it: only the offline tools
(``ttt_kd_train``, ``ttt_kd_evaluate``, the sweep) build it, through
``teachers.resolve(spec, offline=True)``. The random-weight ViT (``tiny``) is the lower bound.

Spec: ``oracle`` or ``oracle:corrupt=0.5,dim=96,seed=0,patch=8``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ttt_kd_ros.scan import CameraView
from ttt_kd_ros.teachers.teacher import DEFAULT_CACHE_SIZE, FeatureMap, Teacher

ORACLE = "oracle"


@dataclass(frozen=True)
class OracleSpec:
    """What ``oracle:...`` asks for: feature dim, share of corrupted patches, seed of the class vectors, patch."""

    dim: int = 96
    corrupt: float = 0.0
    seed: int = 0
    patch: int = 8

    def __post_init__(self) -> None:
        if self.dim < 2 or self.patch < 1:
            raise ValueError(f"oracle teacher: dim must be >= 2 and patch >= 1, got dim={self.dim} patch={self.patch}")
        if not 0.0 <= self.corrupt <= 1.0:
            raise ValueError(f"oracle teacher: corrupt must be in [0, 1], got {self.corrupt}")

    @property
    def teacher_id(self) -> str:
        return f"oracle:dim={self.dim},corrupt={self.corrupt:g},seed={self.seed},patch={self.patch}"


def is_oracle(spec: str) -> bool:
    return spec == ORACLE or spec.startswith(ORACLE + ":")


def parse_oracle(spec: str) -> OracleSpec:
    """``oracle[:key=value,...]`` -> OracleSpec; a ValueError names the spec and the known keys."""
    if not is_oracle(spec):
        raise ValueError(f"oracle teacher spec: expected 'oracle' or 'oracle:key=value,...', got {spec!r}")
    fields: dict[str, float | int] = {}
    types = {"dim": int, "corrupt": float, "seed": int, "patch": int}
    for item in filter(None, (p.strip() for p in spec[len(ORACLE) + 1:].split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in types:
            raise ValueError(f"oracle teacher spec {spec!r}: expected key=value with keys {sorted(types)}, "
                             f"got {item!r}")
        try:
            fields[key] = types[key](value)
        except ValueError:
            raise ValueError(f"oracle teacher spec {spec!r}: {key} must be a {types[key].__name__}, "
                             f"got {value!r}") from None
    return OracleSpec(**fields)


class OracleTeacher(Teacher):
    """Class vectors pooled to patches, from the camera's ``pixel_labels``; same interface as a ViT Teacher."""

    def __init__(self, spec: OracleSpec, num_classes: int, resolution: int | tuple[int, int] = (120, 160),
                 device: str | torch.device = "cpu", cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        # Teacher.__init__ reads a network's config; the oracle has no network, only the runtime part.
        self._init_runtime(spec.teacher_id, feature_dim=spec.dim, patch_size=spec.patch, resolution=resolution,
                           device=device, cache_size=cache_size)
        self.spec = spec
        self.model = None
        generator = torch.Generator().manual_seed(spec.seed)
        self.num_classes = int(num_classes)
        self.class_vectors = F.normalize(torch.randn(num_classes, spec.dim, generator=generator), dim=1).to(self.device)

    def __repr__(self) -> str:
        return f"OracleTeacher({self.teacher_id!r}, classes={self.num_classes}, resolution={self.resolution})"

    def feature_map(self, image_rgb: np.ndarray) -> FeatureMap:
        raise ValueError("oracle teacher: features come from a camera's rendered class image, not from pixels; "
                         "call view_feature_map(camera)")

    def view_inputs(self, view: CameraView) -> tuple[np.ndarray, ...]:
        """The rendered class image, not the pixels: what this control's features depend on."""
        if view.pixel_labels is None:
            raise ValueError(f"oracle teacher: camera {view.name!r} has no pixel_labels (rendered class image)")
        return (np.asarray(view.pixel_labels),)

    def view_feature_map(self, view: CameraView) -> FeatureMap:
        if view.pixel_labels is None:
            raise ValueError(f"oracle teacher: camera {view.name!r} has no pixel_labels (rendered class image); "
                             "the oracle is a control for synthetic scans only")
        labels = np.asarray(view.pixel_labels)
        if labels.shape != view.image_rgb.shape[:2]:
            raise ValueError(f"oracle teacher: camera {view.name!r} pixel_labels are {labels.shape}, the image is "
                             f"{view.image_rgb.shape[:2]}")
        return self._cached(labels, self._class_features)


    def view_feature_maps(self, views: list[CameraView]) -> list[FeatureMap]:
        """One camera at a time: class images are cheap to pool and each has its own label array."""
        return [self.view_feature_map(view) for view in views]

    @torch.no_grad()
    def _class_features(self, labels: np.ndarray) -> FeatureMap:
        h, w = labels.shape
        w_in, h_in = self.input_size(w, h)
        classes = torch.from_numpy(labels.astype(np.int64)).clamp(0, self.num_classes - 1).to(self.device)
        onehot = F.one_hot(classes, self.num_classes).permute(2, 0, 1).float().unsqueeze(0)  # (1, C, H, W)
        if (h_in, w_in) != (h, w):
            onehot = F.interpolate(onehot, size=(h_in, w_in), mode="nearest")
        histogram = F.avg_pool2d(onehot, self.patch_size)[0]  # (C, Hp, Wp), fractions per patch
        if self.spec.corrupt > 0:
            histogram = self._corrupt(histogram, labels)
        features = torch.einsum("chw,cd->dhw", histogram, self.class_vectors)
        self.forward_count += 1
        return FeatureMap(F.normalize(features, dim=0), image_size_px=(w, h), input_size_px=(w_in, h_in))

    def _corrupt(self, histogram: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
        """A ``corrupt`` share of patches replaced by one random class; the same image always gets the same draw."""
        seed = zlib.crc32(np.ascontiguousarray(labels).tobytes()) ^ self.spec.seed
        generator = torch.Generator().manual_seed(seed)
        _, hp, wp = histogram.shape
        hit = (torch.rand(hp, wp, generator=generator) < self.spec.corrupt).to(histogram.device)
        wrong = torch.randint(0, self.num_classes, (hp, wp), generator=generator).to(histogram.device)
        replaced = F.one_hot(wrong, self.num_classes).permute(2, 0, 1).to(histogram.dtype)
        return torch.where(hit.unsqueeze(0), replaced, histogram)


__all__ = ["ORACLE", "OracleSpec", "OracleTeacher", "is_oracle", "parse_oracle"]
