"""Joint training of TTTKDNet: L = CE(rho_Y) + lambda * KD(rho_2D, teacher) on visible points (METHOD.md).

The loop ``ttt_kd_train`` runs, kept apart from argument parsing so tests drive
it directly (what a step reads is examples.py; torch.distributed is
distributed.py):

- any data source (data/sources.py) or list of Scans; a first pass per rank
  fills the teacher's on-disk feature cache, estimates the target centre and
  skips bad scans with a count; epochs then read the cache only, through a
  DataLoader (``workers`` processes) that never runs the ViT;
- ``joint_loss``: the two terms as a pure function;
- mixed precision (``amp``): bfloat16 autocast where the device supports it
  (CPUs, CUDA from Ampere on), float16 with a GradScaler on older GPUs;
- DDP under torchrun (gloo on CPU, NCCL on CUDA): scans are sharded
  statically and every rank pads its trainable scans to the longest shard so
  all run the same steps;
- checkpoints: the model through ``checkpoint_format.save_checkpoint`` and the
  optimiser / epoch state through ``torch.save`` (read back with
  weights_only=True), both written by rank 0 after every epoch, with the
  history and its curve (curves.png).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ttt_kd_ros.checkpoint_format import load_checkpoint, save_checkpoint
from ttt_kd_ros.labels import get_label_set
from ttt_kd_ros.losses import KD_LOSS_KINDS, kd_loss
from ttt_kd_ros.metrics import ConfusionMatrix
from ttt_kd_ros.model import TTTKDNet, net_config
from ttt_kd_ros.scan import IGNORE_LABEL, Scan
from ttt_kd_ros.segmenter import bfloat16_supported
from ttt_kd_ros.teachers.feature_cache import CachedTeacher
from ttt_kd_ros.teachers.teacher import Teacher
from ttt_kd_ros.training.distributed import (
    DistContext,
    average_buffers,
    init_distributed,
    max_over_ranks,
    shard_indices,
    sum_over_ranks,
    wait_for_all_ranks,
)
from ttt_kd_ros.training.examples import (
    Augmentation,
    ExampleSet,
    TrainExample,
    as_batch,
    augmented,
    build_example,
    crop_indices,
    estimate_target_center,
    prepare_shard,
    random_similarity,
    scan_name,
    training_scan_at,
    transform_scan,
)
from ttt_kd_ros.training.report import plot_history

LOG = logging.getLogger("ttt_kd_train")

STATE_FILE = "train_state.pt"
LAST_CHECKPOINT = "last.safetensors"
FINAL_CHECKPOINT = "model.safetensors"
HISTORY_FILE = "history.jsonl"
CURVES_FILE = "curves.png"


# ----------------------------------------------------------------------------------------------- loss


@dataclass
class LossTerms:
    """total = ce + lambda * kd; kd_points: how many visible points the KD term averaged over."""

    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor
    kd_points: int


def joint_loss(logits: torch.Tensor, labels: torch.Tensor, kd_pred: torch.Tensor | None,
               kd_target: torch.Tensor | None, lambda_kd: float, kind: str = "cosine") -> LossTerms:
    """CE over labelled points (IGNORE_LABEL skipped) + lambda * KD over the points with targets.

    logits (N, C), labels (N,); kd_pred / kd_target (M, D) or None (source-only).
    A term with no points is an exact zero that still depends on the outputs,
    so every parameter gets a (zero) gradient and DDP ranks stay in step.
    """
    valid = labels != IGNORE_LABEL
    ce = F.cross_entropy(logits[valid].float(), labels[valid]) if bool(valid.any()) else logits.sum() * 0.0
    if kd_pred is None:
        return LossTerms(ce, ce, torch.zeros((), device=logits.device), 0)
    if kd_target is None or kd_target.shape[0] == 0:
        kd = kd_pred.sum() * 0.0
        return LossTerms(ce + lambda_kd * kd, ce, kd, 0)
    kd = kd_loss(kd_pred, kd_target.to(kd_pred.device, torch.float32), kind)
    return LossTerms(ce + lambda_kd * kd, ce, kd, int(kd_target.shape[0]))


# ----------------------------------------------------------------------------------------------- state files


def save_train_state(path: Path, optimizer: torch.optim.Optimizer, epoch: int, history: list[dict],
                     scaler: dict[str, Any] | None = None) -> None:
    """Optimiser (and AMP scaler) state and the finished epoch, atomically (tensors, numbers and strings only)."""
    tmp = path.with_name(path.name + ".tmp")
    state = {"epoch": epoch, "optimizer": optimizer.state_dict(), "history": json.dumps(history)}
    if scaler is not None:
        state["scaler"] = scaler
    torch.save(state, tmp)
    tmp.replace(path)


def load_train_state(path: Path) -> dict[str, Any]:
    """The dict save_train_state wrote; ValueError naming the file when it is missing or malformed."""
    if not path.is_file():
        raise ValueError(f"resume state {path}: file not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("epoch", "optimizer", "history"):
        if key not in state:
            raise ValueError(f"resume state {path}: field {key!r} missing")
    state["history"] = json.loads(state["history"])
    return state


# ----------------------------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    """Every knob of a training run; recorded in the checkpoint metadata."""

    data: str = "synthetic:source"  # the data-source spec trained on (recorded; the tool opens it)
    preset: str = "ttt_kd_small"
    epochs: int = 6
    lr: float = 2e-3
    weight_decay: float = 1e-4
    lambda_kd: float = 1.0
    kd_loss: str = "cosine"
    source_only: bool = False
    batch_scans: int = 2
    kd_points: int = 4096
    seed: int = 0
    center_targets: bool = True  # subtract the mean training target (NetConfig.kd_target_center); see targets.py
    augment: Augmentation | None = field(default_factory=Augmentation)
    workers: int = 0  # DataLoader worker processes (0: scans are read in the training process)
    amp: bool = False  # mixed precision: bfloat16 where supported, else float16 + GradScaler (older GPUs)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = Augmentation(**self.augment)
        if self.epochs < 1 or self.batch_scans < 1:
            raise ValueError(f"TrainConfig: epochs and batch_scans must be >= 1, got {self.epochs}, "
                             f"{self.batch_scans}")
        if self.kd_loss not in KD_LOSS_KINDS:
            raise ValueError(f"TrainConfig.kd_loss: expected one of {KD_LOSS_KINDS}, got {self.kd_loss!r}")
        if self.workers < 0:
            raise ValueError(f"TrainConfig.workers: expected >= 0, got {self.workers}")
        if self.lr <= 0 or self.lambda_kd < 0:
            raise ValueError(f"TrainConfig: lr > 0 and lambda_kd >= 0 expected, got {self.lr}, {self.lambda_kd}")


@dataclass
class TrainResult:
    model: TTTKDNet
    history: list[dict[str, float]]
    final_checkpoint: Path | None


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warm-up over the first 5 % of steps, then cosine decay to 1 % of lr."""
    warmup = max(1, total_steps // 20)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return config.lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate_miou(model: TTTKDNet, scans: Sequence[Scan], device: torch.device, progress: bool = False) -> float:
    """mIoU of plain predictions (no adaptation) over ``scans`` (a list or a DataSource, read one scan at a time);
    a quick in-training check. A scan that fails to load or has no labels is logged and left out. ``progress``:
    a bar with an ETA (400 real validation scans are minutes of silence on a CPU otherwise)."""
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(model.config.num_classes)
    for i in _progress(range(len(scans)), progress, "validation", "scan"):
        try:
            scan = training_scan_at(scans, i, model.config.label_set)
        except (ValueError, FileNotFoundError, OSError) as err:
            LOG.warning("validation: skipping %s: %s", scan_name(scans, i), err)
            continue
        out = model(model.prepare(scan, device), with_kd=False)
        matrix.update(scan.labels, out.logits.argmax(1).cpu().numpy())
    model.train(was_training)
    return matrix.miou()


def build_model(config: TrainConfig, teacher_dim: int, teacher_id: str,
                teacher_resolution: int | tuple[int, int], label_set: str = "") -> TTTKDNet:
    """The preset's network for ``label_set``'s classes (the preset's own set when ""), initialised from
    config.seed (the same on every rank)."""
    classes = {}
    if label_set:
        classes = {"label_set": label_set, "num_classes": get_label_set(label_set).num_classes}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return TTTKDNet(net_config(config.preset, teacher_dim=teacher_dim, teacher_id=teacher_id,
                                   teacher_resolution=teacher_resolution, **classes))


def train(
    config: TrainConfig,
    model: TTTKDNet,
    dataset: Sequence[Scan],
    teacher: Teacher | None,
    out_dir: Path,
    ctx: DistContext | None = None,
    resume: Path | None = None,
    val_scans: Sequence[Scan] = (),
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    cache_dir: Path | None = None,
) -> TrainResult:
    """Train ``model`` on this rank's shard of ``dataset``; rank 0 writes checkpoints into ``out_dir``.

    dataset: a DataSource or any sequence of labelled Scans (labels in another label set are mapped into the
    model's through labels.py). teacher may be None only with config.source_only; its feature maps go through
    an on-disk cache in ``cache_dir`` (default out_dir/feature_cache). resume: a previous out_dir; training
    continues after its last finished epoch. metadata is stored (with the config and history) in every
    checkpoint's "extra". stop_after_epoch: end (without the final checkpoint) once that epoch (0-based) is
    saved, to split a run over several sessions with resume.
    """
    ctx = ctx or DistContext()
    if teacher is None and not config.source_only:
        raise ValueError("train: joint training needs a teacher (or TrainConfig.source_only=True)")
    if teacher is not None and teacher.feature_dim != model.config.teacher_dim:
        raise ValueError(f"train: teacher {teacher.teacher_id} gives {teacher.feature_dim}-dim features, the model's "
                         f"NetConfig.teacher_dim is {model.config.teacher_dim}")
    out_dir = Path(out_dir)
    model = model.to(ctx.device).train()
    if config.source_only:
        for param in model.kd_head.parameters():  # unused by CE: frozen, so DDP need not look for it
            param.requires_grad_(False)
    if model.fusion_head is not None:  # rho_F (a fine-tuned checkpoint's) is refitted after training, not trained
        for param in model.fusion_head.parameters():
            param.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    use_cuda_amp = config.amp and amp_dtype(ctx.device) == torch.float16  # float16 needs loss scaling
    scaler = torch.amp.GradScaler("cuda", enabled=use_cuda_amp)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume is not None:
        state = load_train_state(Path(resume) / STATE_FILE)
        stored = load_checkpoint(Path(resume) / LAST_CHECKPOINT, "cpu",
                                 expect={"name": model.config.name, "teacher_dim": model.config.teacher_dim})
        model.load_state_dict(stored.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and use_cuda_amp:
            scaler.load_state_dict(state["scaler"])
        start_epoch, history = int(state["epoch"]) + 1, list(state["history"])
    net = model
    if ctx.distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=None, find_unused_parameters=False)

    kd_teacher = None
    if not config.source_only:
        kd_teacher = teacher if isinstance(teacher, CachedTeacher) else CachedTeacher(
            teacher, cache_dir or out_dir / "feature_cache")
    t0 = time.perf_counter()
    estimate = kd_teacher is not None and config.center_targets and not model.config.kd_target_center
    plan = prepare_shard(dataset, shard_indices(len(dataset), ctx.rank, ctx.world_size), kd_teacher,
                         model.config.label_set, config.kd_points, config.seed, estimate, ctx, progress=progress)
    if plan.center is not None:
        model.config.kd_target_center = plan.center
    center = model.config.kd_target_center if kd_teacher is not None and config.center_targets else None
    local = _pad_to_equal_steps(plan.indices, ctx)
    prepare_s = time.perf_counter() - t0
    worker_teacher = kd_teacher
    if kd_teacher is not None and config.workers > 0:  # workers only read the cache, on the CPU
        worker_teacher = CachedTeacher(kd_teacher.inner, kd_teacher.cache.root, read_only=True, device="cpu")
    examples = ExampleSet(dataset, local, worker_teacher, model.config.label_set, config.kd_points, config.seed,
                          center, config.augment)
    steps_per_epoch = math.ceil(len(local) / config.batch_scans)
    total_steps = steps_per_epoch * config.epochs
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    extra_base = {**(metadata or {}), "train_config": _jsonable(asdict(config)), "world_size": ctx.world_size,
                  "num_scans": len(dataset), "mode": "source_only" if config.source_only else "joint",
                  "skipped_scans": dict(plan.skipped)}
    LOG.info("rank %d: %d scans train, %d skipped %s; %d steps per epoch; prepared in %.1f s", ctx.rank,
             len(plan.indices), sum(plan.skipped.values()), dict(plan.skipped), steps_per_epoch, prepare_s)

    for epoch in range(start_epoch, config.epochs):
        permutation = np.random.default_rng([config.seed, epoch, ctx.rank]).permutation(len(local))
        examples.order = [local[p] for p in permutation]
        examples.epoch = epoch
        loader = torch.utils.data.DataLoader(examples, batch_size=config.batch_scans, shuffle=False,
                                             collate_fn=as_batch, num_workers=config.workers)
        sums = {"loss": 0.0, "ce": 0.0, "kd": 0.0, "kd_points": 0.0}
        seen = 0
        t_epoch = time.perf_counter()
        bar = _progress(loader, progress, f"epoch {epoch + 1}/{config.epochs}")
        for step, batch in enumerate(bar):
            lr = learning_rate(config, epoch * steps_per_epoch + step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            for j, (_, scan, kd_index, kd_features) in enumerate(batch):
                last = j == len(batch) - 1
                sync = nullcontext() if (last or not ctx.distributed) else net.no_sync()
                with sync:
                    terms = scan_loss(net, model, scan, kd_index, kd_features, config, ctx.device)
                    scaler.scale(terms.total / len(batch)).backward()
                sums["loss"] += float(terms.total.detach())
                sums["ce"] += float(terms.ce.detach())
                sums["kd"] += float(terms.kd.detach())
                sums["kd_points"] += terms.kd_points
                seen += 1
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            scaler.step(optimizer)
            scaler.update()
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(ce=f"{sums['ce'] / seen:.3f}", kd=f"{sums['kd'] / seen:.3f}", lr=f"{lr:.1e}")
        record = {"epoch": epoch, **{k: v / max(1, seen) for k, v in sums.items()},
                  "epoch_s": time.perf_counter() - t_epoch, "targets_s": prepare_s,
                  "scans_per_s": seen / max(1e-9, time.perf_counter() - t_epoch)}
        average_buffers(model, ctx)
        if ctx.distributed:
            means = sum_over_ranks(torch.tensor([record["loss"], record["ce"], record["kd"], record["kd_points"]],
                                                dtype=torch.float64), ctx)
            record["loss"], record["ce"], record["kd"], record["kd_points"] = (means / ctx.world_size).tolist()
        if not config.source_only and teacher is not None and record["kd_points"] == 0:
            LOG.warning("epoch %d: NO distillation target in any training step: the KD term was 0 all epoch, so "
                        "this is source-only training. Check that the cameras see the points (calibration, "
                        "image folders) and, with --crop-points, that crops reach the cameras' view", epoch)
        if ctx.is_main:
            if val_scans:
                record["val_miou"] = evaluate_miou(model, val_scans, ctx.device, progress)
            history.append(record)
            LOG.info("epoch %d: %s", epoch, json.dumps({k: round(v, 5) for k, v in record.items()}))
            save_checkpoint(model, out_dir / LAST_CHECKPOINT, extra=_run_extra(extra_base, epoch, history, config))
            save_train_state(out_dir / STATE_FILE, optimizer, epoch, history,
                             scaler.state_dict() if use_cuda_amp else None)
            with open(out_dir / HISTORY_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
            plot_history(history, out_dir / CURVES_FILE, title=f"{model.config.name}: {extra_base['mode']}")
        wait_for_all_ranks(ctx)  # rank 0 validated and saved; the others wait instead of timing out in an all-reduce
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < config.epochs - 1:
            return TrainResult(model, history, None)
    final = None
    if ctx.is_main:
        final = save_checkpoint(model, out_dir / FINAL_CHECKPOINT,
                                extra=_run_extra(extra_base, config.epochs - 1, history, config))
    return TrainResult(model, history, final)


def _run_extra(base: dict[str, Any], epoch: int, history: list[dict[str, float]], config: TrainConfig
               ) -> dict[str, Any]:
    """A checkpoint's "extra": the run's metadata, its history, and the epochs that trained without any
    distillation target (from the history, so a resumed run keeps the record)."""
    empty = [] if config.source_only else [int(h["epoch"]) for h in history if h.get("kd_points", 1) == 0]
    return {**base, "epoch": epoch, "history": history, "epochs_without_kd": empty}


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype of mixed-precision training on ``device``: bfloat16 when it runs natively (no loss
    scaling, float32's range), float16 with a GradScaler on GPUs without bfloat16 (Volta, Turing)."""
    return torch.bfloat16 if bfloat16_supported(device) else torch.float16


def scan_loss(net: torch.nn.Module, model: TTTKDNet, scan: Scan, kd_index: np.ndarray, kd_features: torch.Tensor,
               config: TrainConfig, device: torch.device) -> LossTerms:
    """One scan's joint loss (autocast when config.amp); the losses themselves are computed in float32."""
    prepared = model.prepare(scan, device)
    labels = torch.from_numpy(scan.labels).to(device)
    with torch.autocast(device_type=device.type, dtype=amp_dtype(device), enabled=config.amp):
        out = net(prepared, with_kd=not config.source_only)
    kd_pred = None
    if out.kd is not None:
        kd_pred = out.kd.index_select(0, torch.from_numpy(kd_index).to(device)).float()
    return joint_loss(out.logits.float(), labels, kd_pred, None if out.kd is None else kd_features,
                      config.lambda_kd, config.kd_loss)


def _pad_to_equal_steps(indices: list[int], ctx: DistContext) -> list[int]:
    """This rank's trainable scans, wrapped around to the longest rank's count (DDP ranks must step together)."""
    longest = max_over_ranks(len(indices), ctx)
    fewest = -max_over_ranks(-len(indices), ctx)
    if fewest == 0:
        raise ValueError("train: a rank has no trainable scans (every scan of its shard was skipped; see the log)")
    return [indices[k % len(indices)] for k in range(longest)]


def _progress(iterable, enabled: bool, desc: str, unit: str = "step"):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit=unit)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


__all__ = [
    "Augmentation",
    "DistContext",
    "LossTerms",
    "TrainConfig",
    "TrainExample",
    "TrainResult",
    "augmented",
    "average_buffers",
    "build_example",
    "build_model",
    "crop_indices",
    "estimate_target_center",
    "evaluate_miou",
    "init_distributed",
    "joint_loss",
    "learning_rate",
    "load_train_state",
    "random_similarity",
    "save_train_state",
    "scan_loss",
    "shard_indices",
    "train",
    "transform_scan",
]
