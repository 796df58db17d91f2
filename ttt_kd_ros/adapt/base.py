"""The part every strategy shares: predict, reset and retune, written once.

Strategies differ in these three methods only by the state they touch: one
that moves no weight has nothing to restore and no optimizer; bn_stats
restores the BN buffers; a gradient strategy restores its parameters,
buffers, optimizer moments and point sampler; TENT predicts with batch
statistics. So each method is written once over the state a strategy holds
(``_source``, ``optimizer``, ``_generator``, ``params``), and a subclass only
sets that state and the attributes that differ (``predict_bn_train``,
``built_from``): the bit-exact reset cannot drift apart between copies.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from ttt_kd_ros.adapt.config import AdaptConfig, AdaptResult, Targets
from ttt_kd_ros.adapt.verbs import SourceState, configure_model


class BaseStrategy:
    """predict / reset / retune over whatever adaptation state the subclass holds (none by default).

    A subclass that changes tensors sets ``_source`` (restored in place by
    reset), a gradient strategy also ``optimizer`` (moments cleared, learning
    rate retuned), ``params`` (what moves) and ``_generator`` (reseeded).
    ``_dirty`` says a scan changed something, so an episodic strategy restores
    before the next scan.
    """

    name = "base"
    needs_targets = False
    episodic = False
    predict_bn_train = False  # predict() normalises with the scan's batch statistics (TENT), else running ones

    def __init__(self, model: nn.Module, config: AdaptConfig, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Every class in STRATEGIES is built alike, ``(model, config, optimizer)``; only a gradient strategy
        keeps the optimizer (it is ignored here: nothing else moves a weight)."""
        self.model = model
        self.config = config
        self.params: list[nn.Parameter] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self._source: SourceState | None = None
        self._generator: torch.Generator | None = None
        self._dirty = False
        self.resets = 0  # restores forced by a bad loss (NaN/inf, drift)

    def adapt(self, prepared: Any, targets: Targets | None = None, time_budget_s: float | None = None,
              steps: int | None = None, resume: bool = False) -> AdaptResult:
        raise NotImplementedError

    def built_from(self, config: AdaptConfig) -> tuple[Any, ...]:
        """The fields of ``config`` that the strategy's objects were built from; retune cannot change them."""
        return ()

    def frozen_encoder(self) -> bool:
        """Whether nothing this strategy does changes the encoder's output of a scan: then the Segmenter computes
        it once per scan and every pass runs the decoder alone (``TTTKDNet.with_frozen_encoder``)."""
        return False

    def frozen_decoder_stages(self) -> int:
        """With a frozen encoder, how many decoder stages (from the coarsest) nothing this strategy does changes
        either: they are computed once per scan with the encoder."""
        return 0

    def _start_scan(self, resume: bool) -> None:
        """An episodic strategy meets every new scan (not a resumed one) with the source state."""
        if self.episodic and self._dirty and not resume:
            self.reset()

    def reset(self) -> None:
        """Source weights, BN buffers, optimizer moments and sampler back to their start, in place (bit-exact).

        Each part only where the strategy holds it: a strategy that moves nothing has nothing to restore.
        """
        if self._source is not None:
            self._source.restore()
        if self.optimizer is not None:
            self.optimizer.state.clear()
        if self._generator is not None:
            self._generator.manual_seed(self.config.seed)
        self._dirty = False

    def retune(self, config: AdaptConfig) -> None:
        """Take ``config`` from the next scan on: steps, budget, points and loss are read per scan; the learning
        rate also lives in the optimizer's param groups. Which parameters move cannot change here (ValueError)."""
        if self.built_from(config) != self.built_from(self.config):
            raise ValueError("AdaptConfig: params and optimizer cannot change on a built strategy; build a new one")
        self.config = config
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = config.lr

    @torch.no_grad()
    def predict(self, prepared: Any) -> Any:
        """Forward with the current (adapted) weights, frozen: running BN statistics, or with
        ``predict_bn_train`` the scan's batch statistics in the normalisation layers, as TENT predicts."""
        self.predict_mode()
        return self.model(prepared, with_kd=False)

    def predict_mode(self) -> None:
        """The normalisation mode predict() runs in (also for any other frozen pass that must match it)."""
        if self.predict_bn_train:
            configure_model(self.model, self.params, bn_train=True)
        else:
            self.model.eval()

    def unadapted(self) -> contextlib.AbstractContextManager:
        """A context in which the model holds the source state; the adapted one is back after it (a strategy
        that moves nothing has nothing to swap)."""
        return contextlib.nullcontext() if self._source is None else self._source.swapped_in()
