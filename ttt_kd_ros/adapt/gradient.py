"""Test-time adaptation strategies behind one interface, chosen from one table.

A strategy owns the model's trainable state while the Segmenter runs it:

    strategy = STRATEGIES[name](model, AdaptConfig(...))   # or build_strategy
    result = strategy.adapt(prepared, targets)             # k updates on this scan
    output = strategy.predict(prepared)                    # frozen forward, the strategy's mode
    if strategy.episodic: strategy.reset()                 # in-place restore of the source weights

As in the TENT reference, the pieces are small verbs (configure_model,
collect_params, make_optimizer), the losses are pure functions
(ttt_kd_ros/losses.py), and the source state is held explicitly and restored
by an in-place copy, never by reloading a checkpoint.

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
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ttt_kd_ros.losses import KD_LOSS_KINDS, entropy_loss, kd_loss

PARAM_SETS = ("all", "norm", "norm_decoder")
OPTIMIZERS = ("adam", "adamw", "sgd")
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)
DECODER_PREFIXES = ("decoder", "dec", "up", "final")
"""First component of a backbone parameter name that marks the decoder half of a U-Net.

A backbone may override this with a ``decoder_prefixes`` attribute."""


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

    def __post_init__(self) -> None:
        checks = (
            ("strategy", self.strategy, tuple(STRATEGIES)),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("params", self.params, PARAM_SETS),
            ("loss", self.loss, KD_LOSS_KINDS),
        )
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"AdaptConfig.{name}: expected one of {allowed}, got {value!r}")
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


# --- the three verbs -----------------------------------------------------------------------------


def _norm_modules(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, NORM_TYPES)]


def collect_params(model: nn.Module, which: str = "all") -> tuple[list[nn.Parameter], list[str]]:
    """Backbone (psi_3D) parameters that test-time training updates, and their names for logging.

    "all": every backbone parameter; "norm": affine weight/bias of the
    normalisation layers only (TENT's choice: few parameters, cheap, stable);
    "norm_decoder": those plus every parameter of the decoder half, the part
    closest to the heads. The heads are never returned: rho_Y and rho_2D stay frozen.
    """
    if which not in PARAM_SETS:
        raise ValueError(f"collect_params: which must be one of {PARAM_SETS}, got {which!r}")
    backbone: nn.Module = model.backbone
    selected: dict[str, nn.Parameter] = {}
    if which == "all":
        selected.update(backbone.named_parameters())
    else:
        for mod_name, mod in backbone.named_modules():
            if isinstance(mod, NORM_TYPES):
                for p_name, p in mod.named_parameters(recurse=False):
                    selected[f"{mod_name}.{p_name}" if mod_name else p_name] = p
        if which == "norm_decoder":
            prefixes = tuple(getattr(backbone, "decoder_prefixes", DECODER_PREFIXES))
            decoder = {n: p for n, p in backbone.named_parameters() if n.split(".")[0].startswith(prefixes)}
            if not decoder:
                raise ValueError(f"collect_params: no backbone parameter starts with a decoder prefix {prefixes}; "
                                 f"names look like {next(iter(dict(backbone.named_parameters())), '<none>')!r}")
            selected.update(decoder)
    if not selected:
        raise ValueError(f"collect_params: the backbone has no parameters for which={which!r}")
    order = {id(p): i for i, p in enumerate(backbone.parameters())}
    names = sorted(selected, key=lambda n: order[id(selected[n])])
    return [selected[n] for n in names], [f"backbone.{n}" for n in names]


def configure_model(model: nn.Module, params: list[nn.Parameter], bn_train: bool = False) -> nn.Module:
    """Freeze all but ``params``; eval mode (no dropout, running BN statistics) unless bn_train.

    With bn_train the normalisation layers use the batch statistics of the scan
    being adapted (and update their running averages, which reset() restores).
    Called by every strategy before its steps, because predict() and the
    caller may have switched modes in between.
    """
    model.eval()
    if bn_train:
        for m in _norm_modules(model):
            m.train()
    wanted = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
    return model


def make_optimizer(params: list[nn.Parameter], config: AdaptConfig) -> torch.optim.Optimizer:
    """The optimizer named in the config over ``params``."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    raise ValueError(f"make_optimizer: AdaptConfig.optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}")


class SourceState:
    """Copies of the tensors adaptation can change, restored in place (bit-exact, no allocation).

    Holds ``params`` (the ones the optimizer moves) and every buffer of the
    model (BatchNorm running statistics and counters). Restoring by copy_()
    keeps the Parameter objects, so the optimizer and any caller holding them
    stay valid.
    """

    def __init__(self, model: nn.Module, params: list[nn.Parameter]) -> None:
        live = list(params) + [b for b in model.buffers()]
        self._pairs = [(t, t.detach().clone()) for t in live]

    @torch.no_grad()
    def restore(self) -> None:
        for live, saved in self._pairs:
            live.copy_(saved)


def _next_step_overruns(budget_s: float | None, start: float, result: AdaptResult,
                        expected_step_s: float | None = None) -> bool:
    """True (and marks ``result``) when a step like the last one would end past the budget.

    The last one is this scan's last step, or for the scan's first step ``expected_step_s`` (the previous
    scan's last step), so a step that cannot fit is not started even when it would be the first.
    """
    if budget_s is None:
        return False
    last = result.step_times_s[-1] if result.step_times_s else (expected_step_s or 0.0)
    if budget_s <= 0 or time.perf_counter() - start + last > budget_s:
        result.stopped_early = True
        result.reason = f"time budget {budget_s:.3f} s"
        return True
    return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- strategies ----------------------------------------------------------------------------------


class NoAdaptation:
    """The source (or joint-train) model as it is: the baseline every strategy is measured against."""

    name = "none"
    needs_targets = False
    episodic = False

    def __init__(self, model: nn.Module, config: AdaptConfig, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.model = model
        self.config = config

    def reset(self) -> None:
        """Nothing to restore: the weights never change."""

    def retune(self, config: AdaptConfig) -> None:
        """Take ``config`` from the next scan on (nothing else depends on it here)."""
        self.config = config

    def adapt(self, prepared: Any, targets: Targets | None = None, time_budget_s: float | None = None,
              steps: int | None = None, resume: bool = False) -> AdaptResult:
        return AdaptResult(reason="strategy none")

    @torch.no_grad()
    def predict(self, prepared: Any) -> Any:
        """The model's output with frozen weights and running BN statistics."""
        self.model.eval()
        return self.model(prepared, with_kd=False)


class GradientStrategy:
    """What every strategy that moves weights shares: the step loop, the source state and the one reset.

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
        self.model = model
        self.config = config
        self.params, self.param_names = collect_params(model, self.param_set(config))
        configure_model(model, self.params, self.bn_train(config))
        self.optimizer = optimizer if optimizer is not None else make_optimizer(self.params, config)
        self._source = SourceState(model, self.params)
        self._generator: torch.Generator | None = None
        self._dirty = False
        self.resets = 0  # restores forced by a bad loss (NaN/inf, drift)
        self.expected_step_s: float | None = None  # the last step's duration, kept across scans for the budget

    @staticmethod
    def param_set(config: AdaptConfig) -> str:
        """Which backbone parameters the strategy updates (collect_params' ``which``)."""
        return config.params

    @staticmethod
    def bn_train(config: AdaptConfig) -> bool:
        """Whether normalisation layers use the scan's batch statistics during the steps."""
        return config.bn_train

    def loss(self, prepared: Any, targets: Targets | None) -> torch.Tensor:
        raise NotImplementedError

    def first_loss_rejected(self, loss: float) -> str:
        """Why the scan's first loss means its data must not be trained on ("" = train)."""
        return "" if math.isfinite(loss) else f"non-finite {self.loss_name} ({loss})"

    def usable(self, targets: Targets | None) -> str:
        """Why this scan cannot be adapted on at all ("" = it can)."""
        return ""

    def scan_done(self, result: AdaptResult) -> None:
        """Bookkeeping after a scan's steps (the online guard's running average)."""

    def reset(self) -> None:
        """Source weights, BN buffers, optimizer moments and sampler back to their start, in place."""
        self._source.restore()
        self.optimizer.state.clear()
        if self._generator is not None:
            self._generator.manual_seed(self.config.seed)
        self._dirty = False

    def retune(self, config: AdaptConfig) -> None:
        """Take ``config`` from the next scan on: steps, budget, points and loss are read per scan; the learning
        rate also lives in the optimizer's param groups. Which parameters move cannot change here (ValueError)."""
        if self.param_set(config) != self.param_set(self.config) or config.optimizer != self.config.optimizer:
            raise ValueError("AdaptConfig: params and optimizer cannot change on a built strategy; build a new one")
        self.config = config
        for group in self.optimizer.param_groups:
            group["lr"] = config.lr

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
        if self.episodic and self._dirty and not resume:
            self.reset()
        budget = self.config.time_budget_s if time_budget_s is None else time_budget_s
        start = time.perf_counter()
        configure_model(self.model, self.params, self.bn_train(self.config))
        with torch.inference_mode(False), torch.enable_grad():
            for step in range(self.config.steps if steps is None else steps):
                if _next_step_overruns(budget, start, result, self.expected_step_s):
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
                self.expected_step_s = result.step_times_s[-1]
        if not resume:
            self.scan_done(result)
        return result

    @torch.no_grad()
    def predict(self, prepared: Any) -> Any:
        """Forward with the adapted weights, frozen, running BN statistics."""
        self.model.eval()
        return self.model(prepared, with_kd=False)


class TTTKD(GradientStrategy):
    """TTT-KD (per scan): k KD steps on the visible points update psi_3D; reset() restores it.

    The heads are frozen but the gradient flows through rho_2D into the
    backbone. Each step samples ``kd_points_per_step`` of the visible points
    with a torch.Generator reseeded by reset(), so a scan adapts the same way
    whatever came before it.
    """

    name = "ttt_kd"
    loss_name = "KD loss"
    needs_targets = True
    episodic = True

    def usable(self, targets: Targets | None) -> str:
        if targets is None or targets.point_index.numel() == 0:
            return "no visible points"
        if targets.features.shape[0] != targets.point_index.shape[0]:
            raise ValueError(f"targets: {targets.point_index.shape[0]} point indices but {targets.features.shape[0]} "
                             "feature rows")
        return ""

    def _sample(self, num_visible: int, device: torch.device) -> torch.Tensor | None:
        """(S,) rows of the targets to use this step, or None for all of them."""
        per_step = self.config.kd_points_per_step
        if per_step == 0 or per_step >= num_visible:
            return None
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.config.seed)
        return torch.randint(0, num_visible, (per_step,), generator=self._generator, device=device)

    def loss(self, prepared: Any, targets: Targets | None) -> torch.Tensor:
        assert targets is not None  # usable() returned "" only with targets
        rows = self._sample(int(targets.point_index.numel()), targets.features.device)
        point_index = targets.point_index if rows is None else targets.point_index.index_select(0, rows)
        teacher = targets.features if rows is None else targets.features.index_select(0, rows)
        pred = self.model.kd_features(prepared, point_index)  # (S, D): rho_2D at the sampled points only
        return kd_loss(pred, teacher, self.config.loss)

    @torch.no_grad()
    def kd_loss_of(self, output: Any, targets: Targets) -> float:
        """The KD loss of a predict() output over every visible point: the scan's distillation error now.

        The strategy reports it (not the caller) because it knows its loss form; predict()'s point features
        are reused, so it costs the kd head on the visible points, not another forward.
        """
        features = self.model.kd_head(output.point_features.index_select(0, targets.point_index))
        return float(kd_loss(features, targets.features, self.config.loss))


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


class Tent(GradientStrategy):
    """TENT: entropy minimisation of the predictions on the normalisation affine parameters.

    The normalisation layers run in train mode (the scan's batch statistics),
    for the steps and for predict(), as in the reference. With
    ``reset_per_scan`` the source state comes back before every scan;
    otherwise updates accumulate (the reference's default).
    """

    name = "tent"
    loss_name = "entropy"
    needs_targets = False

    def __init__(self, model: nn.Module, config: AdaptConfig, optimizer: torch.optim.Optimizer | None = None) -> None:
        super().__init__(model, config, optimizer)
        self.episodic = config.reset_per_scan

    @staticmethod
    def param_set(config: AdaptConfig) -> str:
        return "norm"

    @staticmethod
    def bn_train(config: AdaptConfig) -> bool:
        return True

    def loss(self, prepared: Any, targets: Targets | None) -> torch.Tensor:
        """Entropy of the predictions; targets are not used (TENT needs no teacher)."""
        return entropy_loss(self.model.seg_head(self.model.backbone_features(prepared)))

    @torch.no_grad()
    def predict(self, prepared: Any) -> Any:
        """Forward with batch statistics in the normalisation layers, as TENT predicts."""
        configure_model(self.model, self.params, bn_train=True)
        return self.model(prepared, with_kd=False)


class BNStats:
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
        self.model = model
        self.config = config
        self.episodic = config.reset_per_scan
        self._bn = [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._source = SourceState(model, [])
        self._dirty = False
        self.resets = 0

    def reset(self) -> None:
        self._source.restore()
        self._dirty = False

    def retune(self, config: AdaptConfig) -> None:
        """Take ``config`` (passes, momentum) from the next scan on."""
        self.config = config

    @torch.no_grad()
    def adapt(self, prepared: Any, targets: Targets | None = None, time_budget_s: float | None = None,
              steps: int | None = None, resume: bool = False) -> AdaptResult:
        if self.episodic and self._dirty and not resume:
            self.reset()
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

    @torch.no_grad()
    def predict(self, prepared: Any) -> Any:
        self.model.eval()
        return self.model(prepared, with_kd=False)


Strategy = NoAdaptation | GradientStrategy | BNStats

STRATEGIES: dict[str, type[Strategy]] = {
    "none": NoAdaptation,
    "ttt_kd": TTTKD,
    "ttt_kd_online": TTTKDOnline,
    "tent": Tent,
    "bn_stats": BNStats,
}
"""The one name -> class table the Segmenter, the node and the CLI tools read."""


def build_strategy(model: nn.Module, config: AdaptConfig) -> Strategy:
    """The strategy the config names, bound to ``model`` (which it configures), its optimizer built here.

    The builder, not the strategy, makes the optimizer (TENT's composition): over exactly the parameters the
    strategy updates, so a caller wanting another optimizer builds the strategy with its own instead.
    """
    cls = STRATEGIES[config.strategy]
    if not issubclass(cls, GradientStrategy):
        return cls(model, config)
    params, _ = collect_params(model, cls.param_set(config))
    return cls(model, config, make_optimizer(params, config))
