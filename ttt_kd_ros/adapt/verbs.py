"""The verbs every strategy is made of: pick the parameters, set the modes, build the optimizer, hold the source.

As in the TENT reference, adaptation is composed of small verbs
(``collect_params``, ``configure_model``, ``make_optimizer``) rather than
written into each strategy, and the source state is held explicitly
(``SourceState``) and restored by an in-place copy, never by reloading a
checkpoint. The strategies and ``build_strategy`` call these; so may a caller
that wants to assemble adaptation differently (another optimizer, another
parameter set) without subclassing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from torch import nn

from ttt_kd_ros.adapt.config import OPTIMIZERS, PARAM_SETS, AdaptConfig, AdaptResult

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)
DECODER_PREFIXES = ("decoder", "dec", "up", "final")
"""First component of a backbone parameter name that marks the decoder half of a U-Net.

A backbone may override this with a ``decoder_prefixes`` attribute."""


def _norm_modules(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, NORM_TYPES)]


def _decoder_params(backbone: nn.Module) -> dict[str, nn.Parameter]:
    """The backbone's decoder-half parameters by name (ValueError when no name carries a decoder prefix)."""
    prefixes = tuple(getattr(backbone, "decoder_prefixes", DECODER_PREFIXES))
    decoder = {n: p for n, p in backbone.named_parameters() if n.split(".")[0].startswith(prefixes)}
    if not decoder:
        raise ValueError(f"collect_params: no backbone parameter starts with a decoder prefix {prefixes}; "
                         f"names look like {next(iter(dict(backbone.named_parameters())), '<none>')!r}")
    return decoder


def _last_decoder_stage_params(backbone: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of the decoder's last stage (the one at full resolution, next to the heads) by name.

    A stage is the decoder module at the second component of a parameter name ("decoder.2.blocks...": stage 2),
    the last one in the backbone's parameter order.
    """
    decoder = _decoder_params(backbone)
    last = next(reversed(decoder)).split(".")[:2]
    return {n: p for n, p in decoder.items() if n.split(".")[:2] == last}


def collect_params(model: nn.Module, which: str = "all") -> tuple[list[nn.Parameter], list[str]]:
    """Backbone (psi_3D) parameters that test-time training updates, and their names for logging.

    "all": every backbone parameter; "norm": affine weight/bias of the
    normalisation layers only (TENT's choice: few parameters, cheap, stable);
    "norm_decoder": those plus every parameter of the decoder half, the part
    closest to the heads; "decoder": the decoder half alone, so the encoder does not change at all and its
    features of a scan can be computed once (``TTTKDNet.with_frozen_encoder``, used by the Segmenter);
    "decoder_last": the decoder's last stage alone (full resolution), so everything before it is computed once.
    The heads are never returned: rho_Y and rho_2D stay frozen.
    """
    if which not in PARAM_SETS:
        raise ValueError(f"collect_params: which must be one of {PARAM_SETS}, got {which!r}")
    backbone: nn.Module = model.backbone
    selected: dict[str, nn.Parameter] = {}
    if which == "all":
        selected.update(backbone.named_parameters())
    elif which == "decoder":
        selected.update(_decoder_params(backbone))
    elif which == "decoder_last":
        selected.update(_last_decoder_stage_params(backbone))
    else:
        for mod_name, mod in backbone.named_modules():
            if isinstance(mod, NORM_TYPES):
                for p_name, p in mod.named_parameters(recurse=False):
                    selected[f"{mod_name}.{p_name}" if mod_name else p_name] = p
        if which == "norm_decoder":
            selected.update(_decoder_params(backbone))
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

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The source tensors in place for the body, the live (adapted) ones back after it, bit-exact.

        Why: the output guard may reject an adaptation and must then label the scan with the source weights,
        while a steps curve goes on adapting the same scan afterwards; the optimizer keeps its moments and the
        Parameter objects never change.
        """
        with torch.no_grad():
            adapted = [live.clone() for live, _ in self._pairs]
            self.restore()
        try:
            yield
        finally:
            with torch.no_grad():
                for (live, _), value in zip(self._pairs, adapted, strict=True):
                    live.copy_(value)


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
