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
                    ridge: float = 1e-4) -> PatchProbe:
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




@dataclass
class SimilarityReport:
    """Cosine statistics of L2-normalised patch features of one domain against the reference (source) domain.

    within: mean cosine between two patches of the same class; between: of two patches of different classes
    (a semantic teacher has within >> between). centroid_agreement: mean over classes present in both domains
    of the cosine between the class's mean feature here and in the reference domain (a domain-robust teacher
    keeps it near 1: the class looks the same to it whatever the palette or sensor).
    """

    within: float
    between: float
    centroid_agreement: float


def _class_means(features: torch.Tensor, classes: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, D) sum of features per class and (C,) counts."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
    sums.index_add_(0, classes, features.double())
    return sums, torch.bincount(classes, minlength=num_classes).double()


def similarity_report(features: torch.Tensor, classes: torch.Tensor, reference: torch.Tensor,
                      reference_classes: torch.Tensor, num_classes: int) -> SimilarityReport:
    """Within / between class cosines of ``features`` and their class centroids' agreement with ``reference``.

    Exact means over all ordered pairs of distinct patches, computed from per-class sums (no M x M matrix):
    sum over pairs of x_i . x_j = |sum x|^2 - sum |x_i|^2 for unit vectors.
    """
    x = F.normalize(features.double(), dim=1)
    sums, counts = _class_means(x, classes, num_classes)
    same_pairs = float((counts * (counts - 1)).sum())
    same_dot = float((sums * sums).sum() - counts.sum())  # sum over same-class pairs i != j
    total = x.sum(dim=0)
    all_pairs = float(len(x) * (len(x) - 1))
    all_dot = float(total @ total - len(x))
    within = same_dot / same_pairs if same_pairs else float("nan")
    between = (all_dot - same_dot) / (all_pairs - same_pairs) if all_pairs > same_pairs else float("nan")
    ref_sums, ref_counts = _class_means(F.normalize(reference.double(), dim=1), reference_classes, num_classes)
    both = (counts > 0) & (ref_counts > 0)
    agreement = F.cosine_similarity(sums[both], ref_sums[both], dim=1).mean() if both.any() else torch.tensor(
        float("nan"))
    return SimilarityReport(round(within, 4), round(between, 4), round(float(agreement), 4))


__all__ = ["PatchProbe", "SimilarityReport", "fit_patch_probe", "patch_miou", "similarity_report"]
