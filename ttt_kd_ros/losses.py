"""The two self-supervised losses test-time adaptation minimises, as pure functions.

They live apart from the step loop (adapt/gradient.py) and the training tool so that
joint training and test-time training optimise exactly the same quantity: a
TTT-KD step only helps when it lowers the loss the network learnt to predict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KD_LOSS_KINDS = ("cosine", "l2", "smooth_l1")


def kd_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Distance between the 3D net's distillation output and the teacher's features.

    pred: (M, D) rho_2D(psi_3D(P_vis)); target: (M, D) teacher features sampled
    at the points' pixels. Returns a scalar, the mean over the M points.

    "cosine" (default) is 1 - cos on L2-normalised vectors: DINOv2 feature norms
    vary between images and domains while their directions carry the semantics,
    so only the direction is distilled. "l2" and "smooth_l1" compare the
    normalised vectors too (values stay in [0, 4] per point), which keeps the
    loss scale, and so the learning rate, comparable across the three kinds.
    The loss is computed in float32 even under autocast: bfloat16 cosines near
    1 lose the small differences the gradient is made of.
    """
    if pred.ndim != 2 or target.ndim != 2 or pred.shape != target.shape:
        raise ValueError(f"kd_loss: pred and target must both be (M, D), got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if pred.shape[0] == 0:
        raise ValueError("kd_loss: no points (M = 0); the caller must skip scans without visible points")
    p = F.normalize(pred.float(), dim=1)
    t = F.normalize(target.float(), dim=1)
    if kind == "cosine":
        return (1.0 - (p * t).sum(dim=1)).mean()
    if kind == "l2":
        return (p - t).pow(2).sum(dim=1).mean()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(p, t, reduction="none", beta=0.1).sum(dim=1).mean()
    raise ValueError(f"kd_loss: kind must be one of {KD_LOSS_KINDS}, got {kind!r}")


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the per-point class distributions, TENT's objective.

    logits: (N, K). Returns a scalar. log_softmax keeps it finite for very
    confident points where softmax would round to exactly 0 and log() to -inf.
    """
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"entropy_loss: logits must be (N, K) with N > 0, got {tuple(logits.shape)}")
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()
