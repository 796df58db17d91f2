"""Knowledge-distillation targets: the teacher's feature at the pixel each visible point projects to.

These are the labels of TTT-KD's self-supervised task (L_2D in METHOD.md):
computed once per scan (the teacher is frozen, its feature maps are cached)
and reused by every adaptation step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ttt_kd_ros.geometry import project_tensor
from ttt_kd_ros.scan import CameraView, Scan
from ttt_kd_ros.teachers.teacher import FeatureMap, Teacher


@dataclass
class DistillTargets:
    """Teacher features for the points some camera sees.

    point_index: (M,) int64, ascending and unique, rows of scan.points_xyz_m.
    features: (M, C) float32 on the teacher's device, L2-normalised.
    visible_per_camera: camera name -> number of points it contributed (diagnostics).
    """

    point_index: torch.Tensor
    features: torch.Tensor
    visible_per_camera: dict[str, int] = field(default_factory=dict)

    @property
    def num_targets(self) -> int:
        return int(self.point_index.shape[0])

    def __len__(self) -> int:
        return self.num_targets


def center_features(features: torch.Tensor, center: Sequence[float] | torch.Tensor | None) -> torch.Tensor:
    """(M, D) features minus the (D,) center, L2-normalised again; unchanged when center is None or empty.

    Why: patch features of a ViT share a large common component (the stand-in's mean pairwise cosine is 0.68),
    so the raw cosine KD loss is near zero for any prediction close to that component and carries little
    per-point signal. Subtracting a fixed mean (estimated once on training targets, stored in the checkpoint's
    NetConfig.kd_target_center) leaves what distinguishes points. The same function runs at training and at
    test time, so the two cannot drift apart.
    """
    if center is None or len(center) == 0:
        return features
    c = torch.as_tensor(center, dtype=features.dtype, device=features.device)
    if c.shape != (features.shape[1],):
        raise ValueError(f"kd_target_center: expected {features.shape[1]} values (the teacher's feature dim), got "
                         f"{tuple(c.shape)}")
    return F.normalize(features - c, dim=1)


@dataclass
class ProjectedViews:
    """The cameras some point of a scan projects into: (camera, visible rows, their (M, 2) pixels) each, on the
    device the projection ran on, and the number of visible points of every camera (0 for those left out)."""

    seen: list[tuple[CameraView, torch.Tensor, torch.Tensor]]
    counts: dict[str, int]

    @property
    def views(self) -> list[CameraView]:
        return [view for view, _, _ in self.seen]


def project_views(scan: Scan, device: torch.device | str, occlusion: bool = True) -> ProjectedViews:
    """Project the scan into every camera on ``device`` (the teacher's, where its feature maps are: only the points
    go over, once, and no pixel comes back to the host). Cameras nothing projects into are left out, so they cost
    no teacher forward."""
    counts: dict[str, int] = {}
    seen = []
    points = torch.from_numpy(np.array(scan.points_xyz_m, dtype=np.float64)).to(device)
    for view in scan.cameras:
        projection = project_tensor(points, view, occlusion=occlusion)
        visible = torch.nonzero(projection.visible).squeeze(1)
        counts[view.name] = int(visible.numel())
        if counts[view.name]:
            seen.append((view, visible, projection.uv_px.index_select(0, visible)))
    return ProjectedViews(seen, counts)


def distillation_targets(scan: Scan, teacher: Teacher, occlusion: bool = True,
                         center: Sequence[float] | torch.Tensor | None = None) -> DistillTargets:
    """Project the scan into every camera, keep visible points, sample the teacher there: ``project_views``, the
    teacher's maps of the cameras that see a point (one batched forward per image size, cached maps reused:
    ``Teacher.view_feature_maps``), then ``sample_targets``. A scan with no cameras, or whose points no camera
    sees, gives empty targets (M = 0), which the adapters treat as "skip adaptation". center: the checkpoint's
    NetConfig.kd_target_center, applied last (``center_features``).
    """
    projected = project_views(scan, teacher.device, occlusion)
    return sample_targets(projected, teacher.view_feature_maps(projected.views), teacher, center)


def sample_targets(projected: ProjectedViews, fmaps: Sequence[FeatureMap], teacher: Teacher,
                   center: Sequence[float] | torch.Tensor | None = None) -> DistillTargets:
    """The targets from a scan's projection and the feature maps of its ``projected.views`` (in that order).

    Why a phase of its own: the Segmenter times projection, teacher and sampling apart and runs each once. A
    point seen by several cameras gets the mean of their features, re-normalised (i.e. the normalised sum), so
    overlapping cameras agree on one target instead of pulling the point two ways.
    """
    seen, counts = projected.seen, projected.counts
    features = [teacher.sample(fmap, uv) for fmap, (_, _, uv) in zip(fmaps, seen, strict=True)]
    indices = [visible for _, visible, _ in seen]
    if not indices:
        return DistillTargets(
            point_index=torch.zeros(0, dtype=torch.long, device=teacher.device),
            features=torch.zeros((0, teacher.feature_dim), dtype=torch.float32, device=teacher.device),
            visible_per_camera=counts,
        )
    if len(indices) == 1:
        return DistillTargets(point_index=indices[0], features=center_features(features[0], center),
                              visible_per_camera=counts)
    unique, inverse = torch.unique(torch.cat(indices), sorted=True, return_inverse=True)
    summed = torch.zeros((len(unique), teacher.feature_dim), dtype=torch.float32, device=teacher.device)
    summed.index_add_(0, inverse, torch.cat(features))
    return DistillTargets(point_index=unique, features=center_features(F.normalize(summed, dim=1), center),
                          visible_per_camera=counts)
