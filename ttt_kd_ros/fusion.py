"""Cross-modal fusion: the 3D network's class probabilities and the teacher's, on the points a camera sees.

Why: the two modalities fail on different shifts (METHOD.md, "Using both
modalities"): the teacher's projected features hold up under light, sensor
and LiDAR shifts where the 3D network collapses, and the 3D network holds up
under camera-pose, room-size and image-grain shifts where the teacher's
features drift. A linear head rho_F on teacher features (fitted on labelled
source scans at training time, stored in the checkpoint as
``TTTKDNet.fusion_head``) turns a teacher feature into class probabilities
for any teacher, DINOv2 included: it never reads a teacher's own class
output. Points no camera sees keep the 3D prediction.

Fusion rules (``FUSION_MODES``), all per point on the visible points:
- ``off``: the 3D prediction alone;
- ``mean``: the average of the two distributions (xMUDA's "xM");
- ``entropy``: a weighted average whose weights fall with each modality's
  normalised entropy on that point, so the confident modality leads (in the
  spirit of Latte's entropy weighting, per point rather than over a window);
- ``geometric``: the weighted geometric mean p3^(1-w) * p2^w, renormalised
  (log-linear pooling, a product of experts). A class either modality rules
  out stays out, and where the teacher's head is flat (a degraded image) it
  shifts little, where a mean would still pull every class towards 1/K. On
  both validation suites it beat ``mean`` and ``entropy`` at every teacher
  share (docs/EVALUATION.md, session 7) and is what both shipped models use.
``weight_2d`` scales the teacher's side in every rule (0.5 = equal say).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ttt_kd_ros.scan import IGNORE_LABEL, Scan
from ttt_kd_ros.targets import distillation_targets
from ttt_kd_ros.teachers.teacher import Teacher

FUSION_MODES = ("off", "mean", "entropy", "geometric")

GEOMETRIC_FLOOR = 1e-6
"""Added to both probabilities before the log of ``geometric`` fusion, so one modality's hard zero is a strong
vote, not a veto that no evidence of the other can overturn."""


@dataclass(frozen=True)
class FusionConfig:
    """How the output combines the 3D and the teacher prediction on visible points."""

    mode: str = "off"
    weight_2d: float = 0.5
    max_disagreement: float = 1.0  # withhold the teacher on a scan whose class mix differs more (1 = never)
    # The teacher's share per scan (scan_weight_2d): weight_2d, plus shift_slope_3d per unit of the 3D network's
    # input shift above shift_ref_3d, minus shift_slope_2d per unit of the teacher's feature shift above
    # shift_ref_2d (shift.py; the refs are the model's in-distribution levels). Slopes 0: a fixed share.
    shift_slope_3d: float = 0.0
    shift_ref_3d: float = 0.0
    shift_slope_2d: float = 0.0
    shift_ref_2d: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in FUSION_MODES:
            raise ValueError(f"FusionConfig.mode: expected one of {FUSION_MODES}, got {self.mode!r}")
        if not 0.0 <= self.weight_2d <= 1.0:
            raise ValueError(f"FusionConfig.weight_2d: expected in [0, 1], got {self.weight_2d}")
        if not 0.0 < self.max_disagreement <= 1.0:
            raise ValueError(f"FusionConfig.max_disagreement: expected in (0, 1], got {self.max_disagreement}")
        for name in ("shift_slope_3d", "shift_ref_3d", "shift_slope_2d", "shift_ref_2d"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0.0):
                raise ValueError(f"FusionConfig.{name}: expected a finite value >= 0, got {value!r}")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def shift_adaptive(self) -> bool:
        """Whether the teacher's share follows the scan's shifts (either slope above 0)."""
        return self.enabled and (self.shift_slope_3d > 0 or self.shift_slope_2d > 0)

    def at_shifts(self, shift_3d: float | None, shift_2d: float | None) -> FusionConfig:
        """This config with one scan's teacher share (scan_weight_2d); itself when the share is fixed."""
        weight = scan_weight_2d(self, shift_3d, shift_2d)
        return self if weight == self.weight_2d else dataclasses.replace(self, weight_2d=weight)


ADAPTIVE_WEIGHT_RANGE = (0.05, 0.75)
"""Where a shift-adaptive teacher share is clipped: the teacher always keeps a say on the points it sees, and the
3D network too (on validation no shift's best share was above 0.65 or at 0 for both models together)."""


def scan_weight_2d(config: FusionConfig, shift_3d: float | None, shift_2d: float | None) -> float:
    """The teacher's share for one scan: ``config.weight_2d`` moved by the scan's shifts (shift.py), clipped to
    ADAPTIVE_WEIGHT_RANGE; ``weight_2d`` itself when neither slope is set. A missing measure moves nothing.

    Why: which modality a shift breaks decides the best share. Camera pose, room layout and palette shifts move
    the 3D network's batch statistics and want more teacher; blocky or blurred images collapse the teacher's
    features and want less (docs/EVALUATION.md, "Session 8").
    """
    if not config.shift_adaptive:
        return config.weight_2d
    weight = config.weight_2d
    if config.shift_slope_3d > 0 and shift_3d is not None:
        weight += config.shift_slope_3d * (shift_3d - config.shift_ref_3d)
    if config.shift_slope_2d > 0 and shift_2d is not None:
        weight -= config.shift_slope_2d * (shift_2d - config.shift_ref_2d)
    low, high = ADAPTIVE_WEIGHT_RANGE
    return float(min(max(weight, low), high))


def normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    """(M, K) probabilities -> (M,) entropy / log K in [0, 1] (1 = no idea, 0 = certain)."""
    p = probs.float().clamp_min(1e-12)
    return -(p * p.log()).sum(dim=1) / math.log(probs.shape[1])


def fuse_probabilities(probs_3d: torch.Tensor, probs_2d: torch.Tensor, config: FusionConfig) -> torch.Tensor:
    """(M, K) 3D and (M, K) teacher probabilities on the same points -> (M, K) fused probabilities."""
    if probs_3d.shape != probs_2d.shape:
        raise ValueError(f"fuse_probabilities: expected equal (M, K) shapes, got {tuple(probs_3d.shape)} and "
                         f"{tuple(probs_2d.shape)}")
    if config.mode == "off":
        return probs_3d
    if config.mode == "geometric":
        logits = ((1.0 - config.weight_2d) * (probs_3d.float() + GEOMETRIC_FLOOR).log()
                  + config.weight_2d * (probs_2d.float() + GEOMETRIC_FLOOR).log())
        return torch.softmax(logits, dim=1)
    w2 = torch.full((probs_3d.shape[0], 1), config.weight_2d, device=probs_3d.device)
    w3 = 1.0 - w2
    if config.mode == "entropy":
        w2 = w2 * (1.0 - normalised_entropy(probs_2d)).unsqueeze(1)
        w3 = w3 * (1.0 - normalised_entropy(probs_3d)).unsqueeze(1)
    total = (w2 + w3).clamp_min(1e-6)
    return (w3 * probs_3d.float() + w2 * probs_2d.float()) / total


def class_mix_disagreement(probs_3d: torch.Tensor, probs_2d: torch.Tensor) -> float:
    """Total-variation distance in [0, 1] between the class histograms of the two modalities' labels on the same
    (M, K) points: 0 = the same mix of classes, 1 = no class in common.

    Why: when the image is so degraded that the teacher collapses (8-11 px blocks, 3 px blur), its head labels the
    visible points with a class mix unlike the 3D network's; a shift that only moves the 3D network's confidence
    leaves the mix alike. On the validation suites no other scan-level signal (agreement per point, entropies, KD
    loss) told the two apart as well; it reads labels of both modalities only, so it holds for any teacher.
    """
    if probs_3d.shape[0] == 0:
        return 0.0
    k = probs_3d.shape[1]
    mix_3d = torch.bincount(probs_3d.argmax(dim=1), minlength=k).float() / probs_3d.shape[0]
    mix_2d = torch.bincount(probs_2d.argmax(dim=1), minlength=k).float() / probs_2d.shape[0]
    return float(0.5 * (mix_3d - mix_2d).abs().sum())


def fuse_scan(probs_3d: torch.Tensor, probs_2d: torch.Tensor, config: FusionConfig) -> tuple[torch.Tensor, bool]:
    """One scan's visible points: (fused (M, K) probabilities, whether the teacher was withheld). The teacher is
    withheld, and the 3D probabilities returned as they are, when the class mixes of the two disagree by more than
    ``config.max_disagreement`` (``class_mix_disagreement``)."""
    if config.enabled and config.max_disagreement < 1.0 and \
            class_mix_disagreement(probs_3d, probs_2d) > config.max_disagreement:
        return probs_3d, True
    return fuse_probabilities(probs_3d, probs_2d, config), False


def teacher_probabilities(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """(M, D) (centred) teacher features -> (M, K) class probabilities through the fusion head."""
    with torch.no_grad():
        return torch.softmax(head(features.float()).float(), dim=1)


def fit_fusion_head(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, num_classes: int,
                    steps: int = 400, lr: float = 0.05, weight_decay: float = 1e-4, seed: int = 0) -> nn.Linear:
    """A linear classifier (D -> K) on teacher features of labelled points: multinomial logistic regression.

    features: (P, D) float, the same (centred, normalised) features the distillation targets use; labels: (P,)
    class ids in [0, K), ignore labels removed by the caller. Full-batch Adam on the cross-entropy with classes
    weighted by the inverse square root of their frequency, so a floor-dominated scan does not reduce the head
    to "floor". Deterministic for a seed.
    """
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f"fit_fusion_head: expected (P, D) features and (P,) labels with P > 0, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"fit_fusion_head: labels must lie in [0, {num_classes}), got [{int(y.min())}, "
                         f"{int(y.max())}]")
    counts = torch.bincount(y, minlength=num_classes).float()
    weight = torch.where(counts > 0, counts.clamp_min(1).rsqrt(), torch.zeros_like(counts))
    weight = weight / (weight[counts > 0].mean())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(x.shape[1], num_classes)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            loss = F.cross_entropy(head(x), y, weight=weight)
            loss.backward()
            optimizer.step()
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return head


def head_examples(scan: Scan, teacher: Teacher, center: Sequence[float] | None, max_points: int,
                  rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, D) teacher features and (m,) labels of up to ``max_points`` labelled points some camera of ``scan``
    sees: what the fusion head learns from. Features are the distillation targets' own (same projection,
    sampling and centring), so the head reads at test time exactly what it was fitted on."""
    targets = distillation_targets(scan, teacher, center=center)
    index = targets.point_index.cpu().numpy()
    labels = np.asarray(scan.labels)[index]
    keep = np.flatnonzero(labels != IGNORE_LABEL)
    if max_points and keep.size > max_points:
        keep = np.sort(rng.choice(keep, max_points, replace=False))
    rows = torch.from_numpy(keep).to(targets.features.device)
    return targets.features.index_select(0, rows).cpu(), torch.from_numpy(labels[keep].astype(np.int64))
