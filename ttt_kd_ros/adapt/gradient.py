"""The one step loop every weight-moving strategy runs (TTT-KD, TTT-KD-O, TENT).

One loop, so the time budget, the NaN/inf restore, the first-loss check and
the step bookkeeping are written once and behave alike for every strategy;
ttt_kd.py, ttt_kd_online.py and tent.py hold only what differs. The losses
themselves are pure functions (ttt_kd_ros/losses.py).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from ttt_kd_ros.adapt.base import BaseStrategy
from ttt_kd_ros.adapt.config import FROZEN_PREFIX_PARAM_SETS, AdaptConfig, AdaptResult, Targets
from ttt_kd_ros.adapt.verbs import (
    SourceState,
    _next_step_overruns,
    _sync,
    collect_params,
    configure_model,
    make_optimizer,
)


class GradientStrategy(BaseStrategy):
    """What every strategy that moves weights shares: the step loop and the state the base's reset restores.

    Like TENT's ``forward_and_adapt``, one loop takes every update: the
    subclass says which parameters move (``param_set``), whether the
    normalisation layers see the scan's batch statistics (``bn_train``), the
    loss of one step (``loss``) and when a scan's first loss means its data
    must not be trained on (``first_loss_rejected``). The optimizer is built
    by ``build_strategy`` over exactly those parameters and passed in.
    """

    name = "gradient"
    loss_name = "loss"  # in restore reasons
    needs_targets = False
    episodic = True

    def __init__(self, model: nn.Module, config: AdaptConfig, optimizer: torch.optim.Optimizer | None = None) -> None:
        super().__init__(model, config)
        self.params, self.param_names = collect_params(model, self.param_set(config))
        configure_model(model, self.params, self.bn_train(config))
        self.optimizer = optimizer if optimizer is not None else make_optimizer(self.params, config)
        self._source = SourceState(model, self.params)
        self.expected_step_s: float | None = None  # the last step's duration, kept across scans for the budget
        self.expected_step_voxels: int | None = None  # the voxels that step ran on (None: not known)

    @staticmethod
    def param_set(config: AdaptConfig) -> str:
        """Which backbone parameters the strategy updates (collect_params' ``which``)."""
        return config.params

    @staticmethod
    def bn_train(config: AdaptConfig) -> bool:
        """Whether normalisation layers use the scan's batch statistics during the steps."""
        return config.bn_train

    def frozen_encoder(self) -> bool:
        """The decoder alone moves and every pass normalises with running statistics: the encoder's output of a
        scan is the same before, during and after the steps."""
        return (self.param_set(self.config) in FROZEN_PREFIX_PARAM_SETS and not self.bn_train(self.config)
                and not self.predict_bn_train)

    def frozen_decoder_stages(self) -> int:
        """Decoder stages before the first one that moves ("decoder_last": all but the last), which a frozen
        encoder's scan computes once too."""
        if not self.frozen_encoder() or self.param_set(self.config) != "decoder_last":
            return 0
        return len(self.model.backbone.decoder) - 1

    def built_from(self, config: AdaptConfig) -> tuple[Any, ...]:
        """The parameter set and the optimizer: both are objects built once (params, optimizer state)."""
        return self.param_set(config), config.optimizer

    def loss(self, prepared: Any, targets: Targets | None) -> torch.Tensor:
        raise NotImplementedError

    def first_loss_rejected(self, loss: float) -> str:
        """Why the scan's first loss means its data must not be trained on ("" = train)."""
        return "" if math.isfinite(loss) else f"non-finite {self.loss_name} ({loss})"

    def step_voxels(self, prepared: Any, targets: Targets | None) -> int | None:
        """How many voxels a step on this scan runs on (None when the prepared scan does not say).

        Why: the budget plans a scan's first step with the last step's time, which the node's warm-up measured
        on a small synthetic scan; scaled by voxels, a 100k-voxel LiDAR scan is not planned with it as is.
        """
        voxels = getattr(prepared, "num_voxels", None)
        return None if voxels is None else int(voxels)

    def first_step_estimate(self, prepared: Any, targets: Targets | None) -> float | None:
        """The expected duration of this scan's first step: the last step's, scaled by the voxels each runs on."""
        if self.expected_step_s is None:
            return None
        voxels = self.step_voxels(prepared, targets)
        if voxels is None or not self.expected_step_voxels:
            return self.expected_step_s
        return self.expected_step_s * voxels / self.expected_step_voxels

    def usable(self, targets: Targets | None) -> str:
        """Why this scan cannot be adapted on at all ("" = it can)."""
        return ""

    def scan_done(self, result: AdaptResult) -> None:
        """Bookkeeping after a scan's steps (the online guard's running average)."""

    def _restore_after_bad_loss(self, result: AdaptResult, reason: str) -> AdaptResult:
        self.reset()
        self.resets += 1
        result.restored = True
        result.stopped_early = True
        result.reason = f"{reason}; source weights restored"
        return result

    def adapt(self, prepared: Any, targets: Targets | None = None, time_budget_s: float | None = None,
              steps: int | None = None, resume: bool = False) -> AdaptResult:
        """Up to ``steps`` (default: the config's) updates on this scan; works inside no_grad or inference_mode.

        time_budget_s (default: the config's) counts from this call; a step is
        not started when the last step's duration says it would end past it.
        A NaN/inf loss restores the source weights instead of stepping.
        ``resume`` continues the previous call's updates on the same scan (no
        per-scan reset, no first-loss check): the steps curve's k steps in pieces.
        """
        result = AdaptResult()
        unusable = self.usable(targets)
        if unusable:
            result.reason = unusable
            return result
        self._start_scan(resume)
        budget = self.config.time_budget_s if time_budget_s is None else time_budget_s
        first_step_s = self.first_step_estimate(prepared, targets)
        voxels = self.step_voxels(prepared, targets)  # per scan: every step of it runs on as many at most
        start = time.perf_counter()
        configure_model(self.model, self.params, self.bn_train(self.config))
        with torch.inference_mode(False), torch.enable_grad():
            for step in range(self.config.steps if steps is None else steps):
                if _next_step_overruns(budget, start, result, first_step_s):
                    break
                t0 = time.perf_counter()
                loss = self.loss(prepared, targets)
                value = float(loss.detach())
                if step == 0 and not resume:
                    result.loss_before = value
                    rejected = self.first_loss_rejected(value)
                    if rejected:
                        return self._restore_after_bad_loss(result, rejected)
                elif not math.isfinite(value):
                    return self._restore_after_bad_loss(result, f"non-finite {self.loss_name} ({value}) at step {step}")
                result.loss_after = value
                self.optimizer.zero_grad(set_to_none=False)
                loss.backward()
                self.optimizer.step()
                self._dirty = True
                _sync(next(iter(self.params)).device)
                result.steps_run += 1
                result.step_times_s.append(time.perf_counter() - t0)
                self.expected_step_s, self.expected_step_voxels = result.step_times_s[-1], voxels
        if not resume:
            self.scan_done(result)
        return result
