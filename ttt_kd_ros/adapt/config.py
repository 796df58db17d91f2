"""What adaptation is told and what it answers: AdaptConfig in, AdaptResult out, and the shapes it relies on.

Kept apart from the strategies so the many callers that only configure
adaptation (the node's parameter table, the evaluator, scripts) read one small
module, and so the ``Strategy`` interface the Segmenter programs against is
written down in one place instead of being implied by a union of classes.

The strategies only need this of the network (TTTKDNet has it):
``backbone`` / ``seg_head`` modules, ``backbone_features(prepared) -> (N, F)``,
``kd_features(prepared, point_index (M,)) -> (M, D)`` and
``model(prepared, with_kd=False) -> output`` with ``.logits`` (N, K). The
prepared scan is passed through untouched, so the voxelisation and neighbour
maps built once per scan are reused by every step. Targets need
``point_index`` (M,) long rows of the prepared points and ``features`` (M, D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ttt_kd_ros.losses import KD_LOSS_KINDS

PARAM_SETS = ("all", "norm", "norm_decoder", "decoder", "decoder_last")
FROZEN_PREFIX_PARAM_SETS = ("decoder", "decoder_last")
"""Parameter sets that leave the encoder (and, for decoder_last, the earlier decoder stages) untouched: with running
statistics their output of a scan is computed once (GradientStrategy.frozen_encoder)."""
OPTIMIZERS = ("adam", "adamw", "sgd")


class Targets(Protocol):
    """What adaptation needs from DistillTargets (ttt_kd_ros/targets.py)."""

    point_index: torch.Tensor  # (M,) int64 rows of the prepared scan's points
    features: torch.Tensor  # (M, D) teacher features


@dataclass
class AdaptConfig:
    """Every knob of test-time adaptation, passed in (strategies read no global config).

    The paper leaves optimizer, learning rate, parameter set and points per step
    open (METHOD.md). The TTT-KD defaults (20 Adam steps at lr 1e-4 on all
    backbone parameters, bn_train, 8192 points per step) were chosen for the
    dense stand-in teacher on validation scans (seed 777, not the test
    table's) by OOD mIoU at an in-distribution cost of at most the joint
    model's own: docs/EVALUATION.md, "Choosing the adaptation defaults". A
    node bounds them by its time budget. They are the single source of the
    node's defaults (ros/params.py); config/segment.yaml repeats them
    (test_ros_params checks the agreement).
    """

    strategy: str = "ttt_kd"
    steps: int = 20  # updates per scan (TTT-KD-O: use fewer, e.g. 1)
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    params: str = "all"  # ttt_kd*: which backbone parameters move; tent always uses "norm"
    kd_points_per_step: int = 8192  # visible points sampled (with replacement) per step; 0 = all of them
    crop_voxels: int = 8000  # ttt_kd*: each step runs on a crop of at most this many voxels where targets are
    # (adapt/crops.py); 0 = every step runs on the whole scan
    crops_per_scan: int = 4  # different crops per scan, cycled over its steps (each crop's maps built once)
    guard_voxels: int = 8000  # the crop guard (Segmenter) measures the KD loss on at least this many voxels around
    # the first step's crop: a small crop's few hundred targets judge an adaptation too noisily (docs/EVALUATION.md)
    loss: str = "cosine"
    time_budget_s: float | None = None  # adapt(): no step that would end past this (from its start); the Segmenter:
    # a bound on the whole scan, its final forward included (Segmenter._adapt_budget)
    bn_train: bool = True  # ttt_kd*: normalise with the scan's batch statistics during the steps
    reset_per_scan: bool = True  # tent, bn_stats: restore the source state before every scan
    bn_momentum: float = 0.1  # bn_stats: weight of the scan's statistics per pass
    # TTT-KD-O drift guard, applied to the first KD loss of every scan (before any update on it):
    guard_factor: float = 3.0  # restore when the loss exceeds guard_factor x its running average ...
    guard_abs_max: float = 1.5  # ... or this absolute value (cosine distance: 1.0 = unrelated, 2.0 = opposite)
    guard_warmup_scans: int = 3  # scans seen before the relative test applies
    guard_ema: float = 0.9  # running average: avg = ema * avg + (1 - ema) * loss
    seed: int = 0  # sampling of points per step
    # Output safety, applied by the Segmenter after the steps (it runs one unadapted forward first to compare):
    guard_kd_ratio: float | None = None  # ttt_kd*: keep the adapted prediction only when its KD loss over all
    # visible points is below this fraction of the unadapted one; else the unadapted prediction is the output
    unadapted_weight: float = 0.0  # weight of the unadapted prediction averaged into the adapted one (0 = none)
    guard_kd_max: float = 0.0  # ttt_kd*: adapt only when the unadapted KD loss over the visible points is at most
    # this (0 = no ceiling). Far above the model's own level the teacher's features are not ones the network learnt
    # to predict (blurred or blocky images): on validation such adaptations passed the ratio guard and cost 10-15
    # points, because smooth targets are easy to fit. A rejected scan runs no step at all.
    prior_strength: float = 0.0  # label-shift correction of the output (adapt/class_prior.py, applied by the
    # Segmenter after fusion): class probabilities x (the scan's labelled share / the model's source share) ** this;
    # 0 = off. Needs the checkpoint's NetConfig.class_prior.
    prior_iterations: int = 2  # fixed-point rounds of that estimate (each relabels the scan with the last weights)

    def __post_init__(self) -> None:
        # The strategy names are the keys of the one table (adapt/strategies.py), which lives with the classes
        # that import this module; reading it here, at validation time, keeps one list of names without a cycle.
        from ttt_kd_ros.adapt.strategies import STRATEGIES

        checks = (
            ("strategy", self.strategy, tuple(STRATEGIES)),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("params", self.params, PARAM_SETS),
            ("loss", self.loss, KD_LOSS_KINDS),
        )
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"AdaptConfig.{name}: expected one of {allowed}, got {value!r}")
        if self.crop_voxels < 0 or self.crops_per_scan < 1 or self.guard_voxels < 0:
            raise ValueError(f"AdaptConfig: crop_voxels and guard_voxels must be >= 0 (crop 0 = whole scan) and "
                             f"crops_per_scan >= 1, got {self.crop_voxels}, {self.guard_voxels} and "
                             f"{self.crops_per_scan}")
        if self.steps < 0 or self.kd_points_per_step < 0:
            raise ValueError(f"AdaptConfig: steps and kd_points_per_step must be >= 0, got {self.steps} and "
                             f"{self.kd_points_per_step}")
        if not self.lr > 0:
            raise ValueError(f"AdaptConfig.lr: expected > 0, got {self.lr}")
        if not 0.0 < self.bn_momentum <= 1.0:
            raise ValueError(f"AdaptConfig.bn_momentum: expected in (0, 1], got {self.bn_momentum}")
        if not self.guard_factor > 1.0:
            raise ValueError(f"AdaptConfig.guard_factor: expected > 1, got {self.guard_factor}")
        if not 0.0 <= self.guard_ema < 1.0:
            raise ValueError(f"AdaptConfig.guard_ema: expected in [0, 1), got {self.guard_ema}")
        if self.guard_kd_ratio is not None and not 0.0 < self.guard_kd_ratio <= 1.0:
            raise ValueError(f"AdaptConfig.guard_kd_ratio: expected in (0, 1] or None, got {self.guard_kd_ratio}")
        if not 0.0 <= self.unadapted_weight < 1.0:
            raise ValueError(f"AdaptConfig.unadapted_weight: expected in [0, 1), got {self.unadapted_weight}")
        if not self.guard_kd_max >= 0.0:
            raise ValueError(f"AdaptConfig.guard_kd_max: expected >= 0 (0 = no ceiling), got {self.guard_kd_max}")
        if not (math.isfinite(self.prior_strength) and 0.0 <= self.prior_strength <= 1.0) \
                or self.prior_iterations < 1:
            raise ValueError(f"AdaptConfig: prior_strength must be in [0, 1] (0 = off) and prior_iterations >= 1, "
                             f"got {self.prior_strength} and {self.prior_iterations}")
        if self.time_budget_s is not None and not (isinstance(self.time_budget_s, (int, float))
                                                   and self.time_budget_s > 0):
            raise ValueError(f"AdaptConfig.time_budget_s: expected seconds > 0 or None, got {self.time_budget_s!r}")


@dataclass
class AdaptResult:
    """What one adapt() call did.

    loss_before: the first step's loss, i.e. of the weights the scan arrived
    with. loss_after: the last step's loss (on its own sample, before its
    update), the cheapest trend signal; the Segmenter reports the loss of its
    final forward over all visible points instead. reason says why fewer
    steps than configured ran ("" when all ran).
    """

    steps_run: int = 0
    loss_before: float | None = None
    loss_after: float | None = None
    stopped_early: bool = False
    reason: str = ""
    step_times_s: list[float] = field(default_factory=list)
    restored: bool = False  # the source weights were put back because of a bad loss


class Strategy(Protocol):
    """What the Segmenter, the node and the evaluator use of a strategy (every class in STRATEGIES has it).

    Built alike from ``(model, config, optimizer)``; per scan the Segmenter calls ``adapt`` (k updates),
    ``predict`` (the frozen forward, in the strategy's BN mode, which ``predict_mode`` sets), then ``reset`` when
    ``episodic``; ``frozen_encoder`` says whether the scan's encoder output may be computed once (and
    ``frozen_decoder_stages`` how many decoder stages with it); ``retune``
    takes a new config between scans. The distilling strategies (``needs_targets``) add
    ``kd_loss_of(output, targets)``.
    """

    name: str
    needs_targets: bool
    episodic: bool
    model: nn.Module
    config: AdaptConfig

    def __init__(self, model: nn.Module, config: AdaptConfig,
                 optimizer: torch.optim.Optimizer | None = None) -> None: ...

    def adapt(self, prepared: Any, targets: Targets | None = None, time_budget_s: float | None = None,
              steps: int | None = None, resume: bool = False) -> AdaptResult: ...

    def predict(self, prepared: Any) -> Any: ...

    def predict_mode(self) -> None: ...

    def frozen_encoder(self) -> bool: ...

    def frozen_decoder_stages(self) -> int: ...

    def reset(self) -> None: ...

    def retune(self, config: AdaptConfig) -> None: ...
