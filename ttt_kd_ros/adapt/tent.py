"""TENT, the teacher-free baseline: entropy minimisation on the normalisation affine parameters.

Kept as a strategy of the same loop so the comparison with TTT-KD differs
only in the loss, the parameter set and the BN mode, which is all this module
says (``predict_bn_train``: TENT also predicts with the scan's batch statistics).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ttt_kd_ros.adapt.config import AdaptConfig, Targets
from ttt_kd_ros.adapt.gradient import GradientStrategy
from ttt_kd_ros.losses import entropy_loss


class Tent(GradientStrategy):
    """TENT: entropy minimisation of the predictions on the normalisation affine parameters.

    The normalisation layers run in train mode (the scan's batch statistics),
    for the steps and for predict(), as in the reference. With
    ``reset_per_scan`` the source state comes back before every scan;
    otherwise updates accumulate (the reference's default).
    """

    name = "tent"
    loss_name = "entropy"
    needs_targets = False
    predict_bn_train = True

    def __init__(self, model: nn.Module, config: AdaptConfig, optimizer: torch.optim.Optimizer | None = None) -> None:
        super().__init__(model, config, optimizer)
        self.episodic = config.reset_per_scan

    @staticmethod
    def param_set(config: AdaptConfig) -> str:
        return "norm"

    @staticmethod
    def bn_train(config: AdaptConfig) -> bool:
        return True

    def loss(self, prepared: Any, targets: Targets | None) -> torch.Tensor:
        """Entropy of the predictions; targets are not used (TENT needs no teacher)."""
        return entropy_loss(self.model.seg_head(self.model.backbone_features(prepared)))
