"""Label-free measures of how far one scan lies from the data a model learnt, one per modality.

Why: the two modalities fail on different shifts, and which one failed decides how much the output should lean
on the teacher (fusion.scan_weight_2d). Neither measure reads a label or a teacher's own class output:
- the 3D side: how far the input of each batch-norm layer of the 3D network is, in variance, from the running
  statistics it learnt (a scan in a new room, from a new camera pose or in new light moves them);
- the teacher side: how far the scan's teacher features sit, on average, from the mean teacher feature of the
  training targets (``NetConfig.kd_target_center``, already subtracted from the targets): a degraded image
  collapses them towards one direction, so their mean grows.
On the validation suites the first tracked the RGB-D model's best teacher share (r = +0.54 over 27 shifts), the
second the LiDAR model's (r = -0.47); docs/EVALUATION.md, "Session 8".
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch
from torch import nn


class BatchNormShift:
    """While active, every batch-norm layer under ``module`` records how far its input's variance is from its
    running variance: the mean over channels of |log(batch variance / running variance)|. ``value`` is the mean
    over the layers that ran (None when none did, or outside any forward)."""

    def __init__(self, module: nn.Module) -> None:
        self._layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                        and m.running_var is not None]
        self._handles: list[Any] = []
        self._ratios: list[float] = []

    def __enter__(self) -> BatchNormShift:
        self._ratios.clear()
        self._handles = [layer.register_forward_hook(self._record) for layer in self._layers]
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _record(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0].detach().float()
        if x.ndim != 2 or x.shape[0] < 2:
            return  # one row has no variance (a tiny scan's coarsest level)
        variance = x.var(dim=0, unbiased=False)
        running = layer.running_var.detach().float()
        ratio = ((variance + layer.eps) / (running + layer.eps)).log().abs().mean()
        self._ratios.append(float(ratio))

    @property
    def value(self) -> float | None:
        return sum(self._ratios) / len(self._ratios) if self._ratios else None


class NoShift:
    """The BatchNormShift stand-in when nothing reads the measure: no hooks, no cost, no value."""

    value = None

    def __enter__(self) -> NoShift:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def teacher_shift(features: torch.Tensor) -> float | None:
    """(M, D) centred, normalised teacher features of one scan -> the norm of their mean (None for M = 0).

    Source scans give a small mean (the centring removed the training mean, and their features point many ways);
    features collapsed by a blocky or blurred image share a direction and give a larger one.
    """
    if features.shape[0] == 0:
        return None
    return float(features.float().mean(dim=0).norm())


__all__ = ["BatchNormShift", "NoShift", "teacher_shift"]
