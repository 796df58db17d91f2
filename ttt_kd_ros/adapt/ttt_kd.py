"""TTT-KD per scan, the method this package exists for: distil the 2D teacher's features into psi_3D, then reset.

Only the KD loss, its point sampling and the targets check live here; the
step loop, the restore and the predict are shared (gradient.py, base.py).
"""

from __future__ import annotations

from typing import Any

import torch

from ttt_kd_ros.adapt.config import Targets
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

    def usable(self, targets: Targets | None) -> str:
        if targets is None or targets.point_index.numel() == 0:
            return "no visible points"
        if targets.features.shape[0] != targets.point_index.shape[0]:
            raise ValueError(f"targets: {targets.point_index.shape[0]} point indices but {targets.features.shape[0]} "
                             "feature rows")
        return ""

    def _sample(self, num_visible: int, device: torch.device) -> torch.Tensor | None:
        """(S,) rows of the targets to use this step, or None for all of them."""
        per_step = self.config.kd_points_per_step
        if per_step == 0 or per_step >= num_visible:
            return None
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.config.seed)
        return torch.randint(0, num_visible, (per_step,), generator=self._generator, device=device)

    def loss(self, prepared: Any, targets: Targets | None) -> torch.Tensor:
        assert targets is not None  # usable() returned "" only with targets
        rows = self._sample(int(targets.point_index.numel()), targets.features.device)
        point_index = targets.point_index if rows is None else targets.point_index.index_select(0, rows)
        teacher = targets.features if rows is None else targets.features.index_select(0, rows)
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
