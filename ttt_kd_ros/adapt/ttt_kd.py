"""TTT-KD per scan, the method this package exists for: distil the 2D teacher's features into psi_3D, then reset.

Only the KD loss, its point sampling and the targets check live here; the
step loop, the restore and the predict are shared (gradient.py, base.py).
"""

from __future__ import annotations

from typing import Any

import torch

from ttt_kd_ros.adapt.config import Targets
from ttt_kd_ros.adapt.crops import Crop, ScanCrops
from ttt_kd_ros.adapt.gradient import GradientStrategy
from ttt_kd_ros.losses import kd_loss


class TTTKD(GradientStrategy):
    """TTT-KD (per scan): k KD steps on the visible points update psi_3D; reset() restores it.

    The heads are frozen but the gradient flows through rho_2D into the
    backbone. Each step samples ``kd_points_per_step`` of the visible points
    with a torch.Generator reseeded by reset(), so a scan adapts the same way
    whatever came before it.
    """

    name = "ttt_kd"
    loss_name = "KD loss"
    needs_targets = True
    episodic = True
    _crops: ScanCrops | None = None
    _crop_step = 0

    def reset(self) -> None:
        """The base's restore, and the scan's crops dropped: a scan adapted again gets the same crops and samples
        from the reseeded generator, step for step."""
        super().reset()
        self._crops = None

    def usable(self, targets: Targets | None) -> str:
        if targets is None or targets.point_index.numel() == 0:
            return "no visible points"
        if targets.features.shape[0] != targets.point_index.shape[0]:
            raise ValueError(f"targets: {targets.point_index.shape[0]} point indices but {targets.features.shape[0]} "
                             "feature rows")
        return ""

    def _rng(self, device: torch.device) -> torch.Generator:
        """The strategy's generator on ``device``, seeded from the config (reset() reseeds it)."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.config.seed)
        return self._generator

    def _sample(self, num_visible: int, device: torch.device) -> torch.Tensor | None:
        """(S,) rows of the targets to use this step, or None for all of them."""
        per_step = self.config.kd_points_per_step
        if per_step == 0 or per_step >= num_visible:
            return None
        return torch.randint(0, num_visible, (per_step,), generator=self._rng(device), device=device)

    def _cuts(self, voxels: int | None) -> bool:
        """Whether steps on a scan of ``voxels`` voxels (None: a prepared scan that does not say) run on crops:
        crop_voxels set, a model that crops, and a scan larger than a crop."""
        limit = self.config.crop_voxels
        return voxels is not None and limit > 0 and hasattr(self.model, "crop") and voxels > limit

    def _scan_crops(self, prepared: Any, targets: Targets) -> ScanCrops | None:
        """The crops of this scan (cut on first use), or None when steps run on the whole scan (_cuts)."""
        if not self._cuts(super().step_voxels(prepared, targets)):
            return None
        limit = self.config.crop_voxels
        if self._crops is None or not self._crops.belongs_to(prepared, targets):
            self._crops = ScanCrops(self.model, prepared, targets, limit, self.config.crops_per_scan,
                                    self._rng(targets.point_index.device))
            self._crop_step = 0
        return self._crops

    def _crop(self, prepared: Any, targets: Targets) -> Crop | None:
        """This step's crop of the scan, or None when steps run on the whole scan."""
        crops = self._scan_crops(prepared, targets)
        if crops is None:
            return None
        crop = crops.for_step(self._crop_step)
        self._crop_step += 1
        return crop

    def guard_crop(self, prepared: Any, targets: Targets) -> Crop | None:
        """The region the output guard measures on: ``guard_voxels`` voxels around the scan's first crop (the one
        its first step runs on; the crop itself when it is no smaller), or None when steps run on the whole scan.

        The output guard measures the KD loss before and after the steps on it when a whole-scan reference
        forward would cost more than the steps themselves (segmenter.py); the first crop is cut here, before the
        steps, with the same generator draws the first step would make, so the steps are the same either way.
        """
        crops = self._scan_crops(prepared, targets)
        return None if crops is None else crops.around_first(self.guard_voxels(prepared, targets))

    def guard_voxels(self, prepared: Any, targets: Targets | None) -> int | None:
        """The voxels the guard's region holds on this scan (at most the scan's; None: the scan does not say)."""
        voxels = super().step_voxels(prepared, targets)
        if voxels is None:
            return None
        return min(voxels, max(self.step_voxels(prepared, targets) or 0, self.config.guard_voxels))

    def step_voxels(self, prepared: Any, targets: Targets | None) -> int | None:
        """A crop's voxels at most (steps on a bigger scan run on crops), else the scan's."""
        voxels = super().step_voxels(prepared, targets)
        return self.config.crop_voxels if self._cuts(voxels) else voxels

    @torch.no_grad()
    def crop_kd_loss(self, crop: Crop, targets: Targets) -> float:
        """The KD loss over every target inside ``crop`` with the weights as they are, normalised as predict()
        normalises: the guard's measure of a scan too large for a whole-scan reference."""
        self.predict_mode()
        pred = self.model.kd_features(crop.prepared, crop.crop_rows).float()
        teacher = targets.features.index_select(0, crop.target_rows.to(targets.features.device)).float()
        return float(kd_loss(pred, teacher, self.config.loss))

    def loss(self, prepared: Any, targets: Targets | None) -> torch.Tensor:
        assert targets is not None  # usable() returned "" only with targets
        crop = self._crop(prepared, targets)
        if crop is not None:  # the step's forward and backward cover the crop's voxels only
            prepared, target_rows, point_index = crop.prepared, crop.target_rows, crop.crop_rows
        else:
            target_rows, point_index = None, targets.point_index
        count = int(point_index.numel())
        rows = self._sample(count, targets.features.device)
        if rows is not None:
            point_index = point_index.index_select(0, rows)
            target_rows = rows if target_rows is None else target_rows.index_select(0, rows)
        teacher = targets.features if target_rows is None else targets.features.index_select(0, target_rows)
        pred = self.model.kd_features(prepared, point_index)  # (S, D): rho_2D at the sampled points only
        return kd_loss(pred, teacher, self.config.loss)

    @torch.no_grad()
    def kd_loss_of(self, output: Any, targets: Targets) -> float:
        """The KD loss of a predict() output over every visible point: the scan's distillation error now.

        The strategy reports it (not the caller) because it knows its loss form; predict()'s point features
        are reused, so it costs the kd head on the visible points, not another forward.
        """
        # predict() may have run under bfloat16 autocast while this runs outside it: the head and the loss read
        # float32, so a mixed-precision scan reports the same loss form as a float32 one (and cannot crash on dtypes).
        points = output.point_features.index_select(0, targets.point_index).float()
        features = self.model.kd_head(points).float()
        return float(kd_loss(features, targets.features.float(), self.config.loss))
