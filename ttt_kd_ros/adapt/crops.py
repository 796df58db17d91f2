"""Bounded crops of a scan for adaptation steps: a step's cost stops growing with the scan.

Why: the KD loss of a step reads a few thousand sampled points, but a step used
to run the backbone forward and backward over every voxel of the scan: on a real
120k-point LiDAR scan one step cost more than the node's whole budget on a CPU,
so the node adapted nothing. A step now runs on a crop of at most
``AdaptConfig.crop_voxels`` voxels: the voxels nearest (in x-y) to a voxel that
holds distillation targets, so every crop lies where the cameras see and its
targets are all inside it. A scan gets ``crops_per_scan`` different crops,
cycled over its steps (the scan is covered, and the neighbour maps of each crop
are built once and reused by every step on it). The final prediction is still
one forward over the whole scan (segmenter.py).

A crop is a scan of its own whose "points" are its voxels: the model's
``crop(prepared, rows)`` keeps their features and coordinates and builds their
maps; targets map to crop rows through their voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ttt_kd_ros.adapt.config import Targets


@dataclass
class Crop:
    """One crop: its prepared sub-scan, the targets inside it and the crop row of each.

    prepared: the model's PreparedScan of the crop (one "point" per voxel).
    target_rows: (T,) rows of the scan's targets whose voxel is in the crop.
    crop_rows: (T,) the crop row (voxel) of each of those targets.
    """

    prepared: Any
    target_rows: torch.Tensor
    crop_rows: torch.Tensor

    @property
    def num_voxels(self) -> int:
        return int(self.prepared.num_voxels)


def nearest_voxels(coords: torch.Tensor, centre: int, count: int) -> torch.Tensor:
    """(count,) ascending rows of the ``count`` voxels nearest in x-y to voxel ``centre`` (the voxel order kept).

    x-y, not 3D: a crop is a column of the scene, floor to ceiling, as the training crops are (training/examples.py),
    so the network sees the context it learnt with.
    """
    offsets = (coords[:, :2] - coords[centre, :2]).float()
    distance = offsets.pow(2).sum(dim=1)
    rows = torch.topk(distance, count, largest=False).indices
    return torch.sort(rows).values


def crop_targets(point_to_voxel: torch.Tensor, targets: Targets, rows: torch.Tensor, num_voxels: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(target rows inside the crop, their crop rows): a target belongs to the crop that holds its voxel."""
    position = torch.full((num_voxels,), -1, dtype=torch.long, device=rows.device)
    position[rows] = torch.arange(rows.numel(), device=rows.device)
    target_voxels = point_to_voxel.index_select(0, targets.point_index.to(point_to_voxel.device))
    where = position.index_select(0, target_voxels)
    inside = torch.nonzero(where >= 0).squeeze(1)
    return inside, where.index_select(0, inside)


class ScanCrops:
    """The crops of one scan, built on first use and reused by later steps (their maps are built once).

    ``for_step(k)`` gives crop ``k mod count``. Crop centres are drawn from the targets' voxels with the
    strategy's generator, so a scan gets the same crops whatever came before it (reset reseeds it).
    """

    def __init__(self, model: Any, prepared: Any, targets: Targets, max_voxels: int, count: int,
                 generator: torch.Generator) -> None:
        self.model = model
        self.prepared = prepared
        self.targets = targets
        self.max_voxels = max_voxels
        self.count = max(1, count)
        self.generator = generator
        self._crops: list[Crop] = []
        self._centres: list[int] = []
        self._regions: dict[int, Crop] = {}

    def belongs_to(self, prepared: Any, targets: Targets) -> bool:
        """Whether these crops were cut from this very scan (the strategy keeps one set between steps)."""
        return prepared is self.prepared and targets is self.targets

    def for_step(self, step: int) -> Crop:
        index = step % self.count
        while len(self._crops) <= index:
            self._crops.append(self._cut())
        return self._crops[index]

    def around_first(self, voxels: int) -> Crop:
        """The ``voxels`` voxels nearest the first crop's centre (the first crop itself when no bigger), built once.
        The caller decides the size (``TTTKD.guard_voxels``: at least a crop, at most the scan).

        Why: the output guard judges the steps by the KD loss on this region before and after them; it holds the
        first step's crop, and enough targets to judge by when the steps' crops are small.
        """
        first = self.for_step(0)
        if voxels <= self.max_voxels:
            return first
        if voxels not in self._regions:
            self._regions[voxels] = self._crop_around(self._centres[0], voxels)
        return self._regions[voxels]

    def _cut(self) -> Crop:
        voxels = self.prepared.voxels
        pick = torch.randint(0, int(self.targets.point_index.numel()), (1,), generator=self.generator,
                             device=self.generator.device)
        centre = int(voxels.point_to_voxel[self.targets.point_index[pick.to(self.targets.point_index.device)]])
        self._centres.append(centre)
        return self._crop_around(centre, self.max_voxels)

    def _crop_around(self, centre: int, count: int) -> Crop:
        voxels = self.prepared.voxels
        rows = nearest_voxels(voxels.coords, centre, min(count, voxels.num_voxels))
        inside, crop_rows = crop_targets(voxels.point_to_voxel, self.targets, rows, voxels.num_voxels)
        return Crop(self.model.crop(self.prepared, rows), inside, crop_rows)


__all__ = ["Crop", "ScanCrops", "crop_targets", "nearest_voxels"]
