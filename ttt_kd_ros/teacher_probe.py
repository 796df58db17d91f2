"""How good a teacher's patch features are, measured the way KD uses them.

A linear probe from frozen, L2-normalised patch features to each patch's
majority class, fitted on one domain and scored (mIoU) on others, says how
much class the features carry across domains without refitting: the property
a teacher needs for TTT-KD. Closed-form ridge regression to one-hot targets
keeps the probe deterministic and cheap (no optimiser, no seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ttt_kd_ros.metrics import miou


@dataclass
class PatchProbe:
    """weights: (D + 1, C), the last row is the bias; predict = argmax([x, 1] @ weights)."""

    weights: torch.Tensor

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(M, D) features -> (M,) int64 classes."""
        ones = torch.ones(len(features), 1, dtype=features.dtype)
        return (torch.cat([features, ones], dim=1) @ self.weights).argmax(-1)


def fit_patch_probe(features: torch.Tensor, classes: torch.Tensor, num_classes: int,
                    ridge: float = 1e-2) -> PatchProbe:
    """Ridge regression from (M, D) features to one-hot (M,) classes; ``ridge`` is scaled by M."""
    if features.ndim != 2 or len(features) != len(classes):
        raise ValueError(f"probe: expected (M, D) features and (M,) classes, got {tuple(features.shape)} and "
                         f"{tuple(classes.shape)}")
    x = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
    gram = x.T @ x + ridge * len(x) * torch.eye(x.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, x.T @ F.one_hot(classes, num_classes).double())
    return PatchProbe(weights.to(features.dtype))


def patch_miou(probe: PatchProbe, features: torch.Tensor, classes: torch.Tensor, num_classes: int) -> float:
    """mIoU (fraction) of the probe's predictions against the true patch classes."""
    return miou(classes.numpy(), probe.predict(features).numpy(), num_classes)


__all__ = ["PatchProbe", "fit_patch_probe", "patch_miou"]
