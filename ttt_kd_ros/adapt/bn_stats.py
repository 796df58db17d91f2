"""The bn_stats strategy: adaptation without a gradient, by re-estimating BatchNorm statistics on the scan.

A separate strategy because it shares nothing of the step loop (no loss, no
optimizer, no teacher): only the base's predict / reset / retune, with the
model's buffers as the source state it restores.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ttt_kd_ros.adapt.base import BaseStrategy
from ttt_kd_ros.adapt.config import AdaptConfig, AdaptResult, Targets
from ttt_kd_ros.adapt.verbs import SourceState, configure_model


class BNStats(BaseStrategy):
    """DUA-style: re-estimate BatchNorm running statistics on the test scan, no gradient.

    Each of ``steps`` no-grad passes moves the running statistics by
    ``bn_momentum`` towards the scan's batch statistics, so after k passes the
    source statistics keep a weight of (1 - bn_momentum)^k. With
    ``reset_per_scan`` the source statistics return before every scan; without
    it they follow the stream with that momentum. Weights never change.
    """

    name = "bn_stats"
    needs_targets = False

    def __init__(self, model: nn.Module, config: AdaptConfig, optimizer: torch.optim.Optimizer | None = None) -> None:
        super().__init__(model, config, optimizer)
        self.episodic = config.reset_per_scan
        self._bn = [m for m in model.backbone.modules() if isinstance(m, _BatchNorm)]
        self._source = SourceState(model, [])

    @torch.no_grad()
    def adapt(self, prepared: Any, targets: Targets | None = None, time_budget_s: float | None = None,
              steps: int | None = None, resume: bool = False) -> AdaptResult:
        self._start_scan(resume)
        result = AdaptResult()
        if not self._bn:
            result.reason = "backbone has no BatchNorm layer"
            return result
        configure_model(self.model, [], bn_train=False)
        saved = [m.momentum for m in self._bn]
        for m in self._bn:
            m.momentum = self.config.bn_momentum
            m.train()
        try:
            for _ in range(self.config.steps if steps is None else steps):
                t0 = time.perf_counter()
                self.model.backbone_features(prepared)
                self._dirty = True
                result.steps_run += 1
                result.step_times_s.append(time.perf_counter() - t0)
        finally:
            for m, momentum in zip(self._bn, saved, strict=True):
                m.momentum = momentum
                m.eval()
        return result
