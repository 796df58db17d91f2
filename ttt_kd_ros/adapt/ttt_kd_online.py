"""TTT-KD-O: TTT-KD whose updates carry over from scan to scan, kept safe by a drift guard.

Its own module because the guard is its own concern (a running average of
first losses and when to give up on the adapted weights); the KD loss and the
step loop are TTTKD's and GradientStrategy's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ttt_kd_ros.adapt.config import AdaptConfig, AdaptResult
from ttt_kd_ros.adapt.ttt_kd import TTTKD


class TTTKDOnline(TTTKD):
    """TTT-KD-O: updates carry over from scan to scan (use fewer steps), behind a drift guard.

    Before training on a scan the guard looks at its first KD loss: NaN/inf,
    above ``guard_abs_max``, or (after ``guard_warmup_scans``) above
    ``guard_factor`` x the running average of first losses means either the
    weights have drifted or the scan's targets are bad (a wrong extrinsic, a
    black image). Either way the source weights come back, the scan is not
    trained on, ``resets`` counts it, and the guard warms up again.
    """

    name = "ttt_kd_online"
    episodic = False

    def __init__(self, model: nn.Module, config: AdaptConfig, optimizer: torch.optim.Optimizer | None = None) -> None:
        super().__init__(model, config, optimizer)
        self.running_loss: float | None = None
        self.scans_seen = 0

    def reset(self) -> None:
        """Source weights back and the guard's statistics restarted (warm-up again).

        The running average describes the adapted weights; kept after a
        restore, it would make the source weights' own, higher loss look like
        drift and the guard would fire on every scan from then on.
        """
        super().reset()
        self.running_loss = None
        self.scans_seen = 0

    def first_loss_rejected(self, loss: float) -> str:
        cfg = self.config
        if not math.isfinite(loss):
            return f"drift guard: non-finite KD loss ({loss})"
        if loss > cfg.guard_abs_max:
            return f"drift guard: KD loss {loss:.4f} > guard_abs_max {cfg.guard_abs_max}"
        if (self.running_loss is not None and self.scans_seen >= cfg.guard_warmup_scans
                and loss > cfg.guard_factor * self.running_loss):
            return (f"drift guard: KD loss {loss:.4f} > {cfg.guard_factor} x running average "
                    f"{self.running_loss:.4f}")
        return ""

    def scan_done(self, result: AdaptResult) -> None:
        if result.loss_before is None or result.restored:
            return
        ema = self.config.guard_ema
        prev = self.running_loss
        self.running_loss = result.loss_before if prev is None else ema * prev + (1.0 - ema) * result.loss_before
        self.scans_seen += 1
