"""Joint training of TTTKDNet: L = CE(rho_Y) + lambda * KD(rho_2D, teacher) on visible points (METHOD.md).

The pieces ``ttt_kd_train`` composes, kept apart from argument parsing so
tests drive them directly:

- ``TrainExample``: a scan and its distillation targets, computed once (the
  teacher is frozen) and kept as float16 on the CPU;
- augmentation as one similarity transform applied to the points AND to every
  camera's ``cam_from_cloud``, so each point still projects to the pixel its
  cached target was sampled at;
- ``joint_loss``: the two terms as a pure function;
- DDP: ``init_distributed`` reads torchrun's environment (gloo on CPU, nccl
  on CUDA); scans are sharded statically so each rank only generates and
  distils its own share, padded so every rank runs the same steps;
- checkpoints: the model through ``checkpoint_format.save_checkpoint`` and the optimiser
  / epoch state through ``torch.save`` (read back with weights_only=True),
  both written by rank 0 after every epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ttt_kd_ros.checkpoint_format import load_checkpoint, save_checkpoint
from ttt_kd_ros.losses import KD_LOSS_KINDS, kd_loss
from ttt_kd_ros.metrics import ConfusionMatrix
from ttt_kd_ros.model import TTTKDNet, net_config
from ttt_kd_ros.scan import IGNORE_LABEL, CameraView, Scan
from ttt_kd_ros.targets import center_features, distillation_targets
from ttt_kd_ros.teacher import Teacher

STATE_FILE = "train_state.pt"
LAST_CHECKPOINT = "last.safetensors"
FINAL_CHECKPOINT = "model.safetensors"
HISTORY_FILE = "history.jsonl"


# ----------------------------------------------------------------------------------------------- augmentation


@dataclass
class Augmentation:
    """Random changes of a training scan. crop_points > 0 keeps that many points nearest (in x-y) to a random
    point: smaller, spatially coherent scans train faster on a CPU and add variety of context."""

    rotate_z: bool = True
    scale: tuple[float, float] = (0.9, 1.1)
    flip_prob: float = 0.5  # mirror y -> -y
    jitter_m: float = 0.005  # std of per-point Gaussian noise (not applied to the cameras: it is sensor noise)
    crop_points: int = 0

    def __post_init__(self) -> None:
        self.scale = (float(self.scale[0]), float(self.scale[1]))
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"Augmentation.scale: expected 0 < low <= high, got {self.scale}")
        if not 0.0 <= self.flip_prob <= 1.0 or self.jitter_m < 0 or self.crop_points < 0:
            raise ValueError(f"Augmentation: flip_prob in [0, 1], jitter_m >= 0, crop_points >= 0 expected, got "
                             f"{self.flip_prob}, {self.jitter_m}, {self.crop_points}")


def random_similarity(rng: np.random.Generator, aug: Augmentation) -> tuple[np.ndarray, float]:
    """(4, 4) A = s * R_z * F (F: optional mirror) and the scale s."""
    s = float(rng.uniform(*aug.scale))
    angle = float(rng.uniform(0.0, 2 * np.pi)) if aug.rotate_z else 0.0
    c, si = np.cos(angle), np.sin(angle)
    mirror = np.diag([1.0, -1.0 if rng.random() < aug.flip_prob else 1.0, 1.0])
    A = np.eye(4)
    A[:3, :3] = s * np.array([[c, -si, 0.0], [si, c, 0.0], [0.0, 0.0, 1.0]]) @ mirror
    return A, s


def transform_scan(scan: Scan, A: np.ndarray, scale: float) -> Scan:
    """The scan in a frame where points are A @ p; every camera keeps seeing each point at the same pixel.

    A = s * R (R orthogonal, possibly a mirror). The new cam_from_cloud is
    S_s @ T @ A^-1 with S_s = diag(s, s, s, 1): X_cam' = s * X_cam, so pixels
    (x / z, y / z) are unchanged and depths scale with the world; depth images
    are scaled to match. A mirror makes the camera matrix improper, which
    projection does not mind.
    """
    points = scan.points_xyz_m.astype(np.float64) @ A[:3, :3].T + A[:3, 3]
    A_inv = np.linalg.inv(A)
    S = np.diag([scale, scale, scale, 1.0])
    cameras = [
        CameraView(image_rgb=view.image_rgb, intrinsics=view.intrinsics, cam_from_cloud=S @ view.cam_from_cloud @ A_inv,
                   stamp_ns=view.stamp_ns, name=view.name,
                   depth_m=None if view.depth_m is None else view.depth_m * np.float32(scale),
                   pixel_labels=view.pixel_labels)
        for view in scan.cameras
    ]
    return Scan(points_xyz_m=points.astype(np.float32), intensity=scan.intensity, rgb=scan.rgb, cameras=cameras,
                labels=scan.labels, stamp_ns=scan.stamp_ns, frame_id=scan.frame_id, label_set=scan.label_set)


def crop_indices(points_xyz_m: np.ndarray, keep: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of the ``keep`` points nearest in x-y to a random point (all points when fewer)."""
    n = len(points_xyz_m)
    if keep <= 0 or keep >= n:
        return np.arange(n)
    centre = points_xyz_m[rng.integers(n), :2]
    dist2 = ((points_xyz_m[:, :2] - centre) ** 2).sum(axis=1)
    return np.sort(np.argpartition(dist2, keep - 1)[:keep])


# ----------------------------------------------------------------------------------------------- examples


@dataclass
class TrainExample:
    """A training scan and its cached distillation targets.

    kd_index: (M,) int64 ascending rows of scan.points_xyz_m that a camera sees;
    kd_features: (M, D) float16 CPU teacher features at those points (M may be 0).
    """

    scan: Scan
    kd_index: np.ndarray
    kd_features: torch.Tensor


def build_example(scan: Scan, teacher: Teacher | None, kd_points: int, rng: np.random.Generator) -> TrainExample:
    """Teacher targets of ``scan`` once (at most ``kd_points`` of them, a random subset; 0 = all).

    teacher None (source-only training) gives no targets.
    """
    if scan.labels is None:
        raise ValueError("scan.labels: training needs labelled scans, got None")
    if teacher is None:
        return TrainExample(scan, np.zeros(0, np.int64), torch.zeros(0, 0, dtype=torch.float16))
    targets = distillation_targets(scan, teacher)
    index = targets.point_index.cpu().numpy()
    features = targets.features.detach().cpu()
    if 0 < kd_points < len(index):
        pick = np.sort(rng.choice(len(index), kd_points, replace=False))
        index, features = index[pick], features[torch.from_numpy(pick)]
    return TrainExample(scan, index.astype(np.int64), features.to(torch.float16))


def augmented(example: TrainExample, rng: np.random.Generator, aug: Augmentation | None
              ) -> tuple[Scan, np.ndarray, torch.Tensor]:
    """(scan, kd_index, kd_features) after crop + similarity + jitter; targets follow the kept points."""
    if aug is None:
        return example.scan, example.kd_index, example.kd_features
    keep = crop_indices(example.scan.points_xyz_m, aug.crop_points, rng)
    scan, index, features = example.scan, example.kd_index, example.kd_features
    if len(keep) < scan.num_points:
        scan = scan.select(keep)
        new_row = np.full(example.scan.num_points, -1, np.int64)
        new_row[keep] = np.arange(len(keep))
        rows = new_row[index]
        kept = rows >= 0
        index, features = rows[kept], features[torch.from_numpy(kept)]
    A, s = random_similarity(rng, aug)
    scan = transform_scan(scan, A, s)
    if aug.jitter_m > 0:
        noise = rng.normal(0.0, aug.jitter_m, scan.points_xyz_m.shape).astype(np.float32)
        scan.points_xyz_m = scan.points_xyz_m + noise
    return scan, index, features


def estimate_target_center(examples: Sequence[TrainExample], dim: int,
                           ctx: DistContext | None = None) -> tuple[float, ...]:
    """(D,) mean of every cached target over all examples (and all ranks): the common component to remove.

    Estimated once, on the training targets, and then frozen in NetConfig.kd_target_center, so a test-time scan
    is centred with the training statistics rather than its own (one scan's mean would remove its own signal).
    """
    wrong = {e.kd_features.shape[1] for e in examples if e.kd_features.shape[0] > 0} - {dim}
    if wrong:
        raise ValueError(f"estimate_target_center: expected {dim}-dim targets, got widths {sorted(wrong)}")
    sums = torch.zeros(dim + 1, dtype=torch.float64)
    for e in examples:
        if e.kd_features.shape[0] > 0:
            sums[:dim] += e.kd_features.double().sum(dim=0)
            sums[dim] += e.kd_features.shape[0]
    if ctx is not None and ctx.distributed:
        dist.all_reduce(sums)
    if sums[dim] == 0:
        raise ValueError("estimate_target_center: no distillation targets in the training scans (no visible point)")
    return tuple((sums[:dim] / sums[dim]).tolist())


def center_example(example: TrainExample, center: Sequence[float]) -> TrainExample:
    """The example with its targets centred exactly as ``distillation_targets(..., center=...)`` does at test time."""
    if example.kd_features.shape[0] == 0:
        return example
    features = center_features(example.kd_features.float(), center).to(torch.float16)
    return TrainExample(example.scan, example.kd_index, features)


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


# ----------------------------------------------------------------------------------------------- distributed


@dataclass
class DistContext:
    """Where this process sits in a (possibly one-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """A DistContext from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT).

    device: "auto" (CUDA when present), "cpu" or "cuda". Backend nccl on CUDA,
    gloo on CPU. One process without WORLD_SIZE runs undistributed.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda', got {device!r}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' asked for but torch sees no CUDA device")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=torch.device("cuda" if use_cuda else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank, world, local_rank, torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"))


def shard_indices(num_items: int, rank: int, world_size: int) -> list[int]:
    """Items rank, rank + world, ... padded by wrapping around so every rank gets ceil(n / world) of them."""
    if num_items <= 0:
        raise ValueError(f"num_items: expected > 0, got {num_items}")
    per_rank = math.ceil(num_items / world_size)
    return [(rank + world_size * i) % num_items for i in range(per_rank)]


def average_buffers(model: torch.nn.Module, ctx: DistContext) -> None:
    """Mean of the float buffers (BN running statistics) over ranks; integer ones from rank 0.

    DDP broadcasts rank 0's buffers before each forward, but every rank's last
    forward updates its own copy; averaging at the end of an epoch leaves all
    ranks identical and the statistics cover every rank's scans.
    """
    if not ctx.distributed:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(ctx.world_size)
        else:
            dist.broadcast(buffer, src=0)


# ----------------------------------------------------------------------------------------------- state files


def save_train_state(path: Path, optimizer: torch.optim.Optimizer, epoch: int, history: list[dict]) -> None:
    """Optimiser state and the finished epoch, atomically (tensors, numbers and strings only)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"epoch": epoch, "optimizer": optimizer.state_dict(), "history": json.dumps(history)}, tmp)
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

    domain: str = "source"
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

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = Augmentation(**self.augment)
        if self.epochs < 1 or self.batch_scans < 1:
            raise ValueError(f"TrainConfig: epochs and batch_scans must be >= 1, got {self.epochs}, "
                             f"{self.batch_scans}")
        if self.kd_loss not in KD_LOSS_KINDS:
            raise ValueError(f"TrainConfig.kd_loss: expected one of {KD_LOSS_KINDS}, got {self.kd_loss!r}")
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
def evaluate_miou(model: TTTKDNet, scans: Sequence[Scan], device: torch.device) -> float:
    """mIoU of plain predictions (no adaptation) over ``scans``; a quick in-training check."""
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(model.config.num_classes)
    for scan in scans:
        out = model(model.prepare(scan, device), with_kd=False)
        matrix.update(scan.labels, out.logits.argmax(1).cpu().numpy())
    model.train(was_training)
    return matrix.miou()


def build_model(config: TrainConfig, teacher_dim: int, teacher_id: str,
                teacher_resolution: tuple[int, int]) -> TTTKDNet:
    """The preset's network, initialised from config.seed (the same on every rank)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return TTTKDNet(net_config(config.preset, teacher_dim=teacher_dim, teacher_id=teacher_id,
                                   teacher_resolution=teacher_resolution))


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
) -> TrainResult:
    """Train ``model`` on this rank's shard of ``dataset``; rank 0 writes checkpoints into ``out_dir``.

    teacher may be None only with config.source_only. resume: a previous
    out_dir; training continues after its last finished epoch. metadata is
    stored (with the config and history) in every checkpoint's "extra".
    stop_after_epoch: end (without the final checkpoint) once that epoch
    (0-based) is saved, to split a run over several sessions with resume.
    """
    from tqdm import tqdm

    ctx = ctx or DistContext()
    if teacher is None and not config.source_only:
        raise ValueError("train: joint training needs a teacher (or TrainConfig.source_only=True)")
    if teacher is not None and teacher.feature_dim != model.config.teacher_dim:
        raise ValueError(f"train: teacher {teacher.teacher_id} gives {teacher.feature_dim}-dim features, the model's "
                         f"NetConfig.teacher_dim is {model.config.teacher_dim}")
    model = model.to(ctx.device).train()
    if config.source_only:
        for param in model.kd_head.parameters():  # unused by CE: frozen, so DDP need not look for it
            param.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume is not None:
        state = load_train_state(Path(resume) / STATE_FILE)
        stored = load_checkpoint(Path(resume) / LAST_CHECKPOINT, "cpu",
                                 expect={"name": model.config.name, "teacher_dim": model.config.teacher_dim})
        model.load_state_dict(stored.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = int(state["epoch"]) + 1, list(state["history"])
    net = model
    if ctx.distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=None, find_unused_parameters=False)

    shard = shard_indices(len(dataset), ctx.rank, ctx.world_size)
    t0 = time.perf_counter()
    examples = []
    kd_teacher = None if config.source_only else teacher
    for i in tqdm(shard, desc=f"scans + teacher targets (rank {ctx.rank})", disable=not progress, unit="scan"):
        examples.append(build_example(dataset[i], kd_teacher, config.kd_points,
                                      np.random.default_rng([config.seed, i, 1])))
    if kd_teacher is not None and config.center_targets:
        center = model.config.kd_target_center or estimate_target_center(examples, model.config.teacher_dim, ctx)
        model.config.kd_target_center = tuple(float(v) for v in center)
        examples = [center_example(e, model.config.kd_target_center) for e in examples]
    prepare_s = time.perf_counter() - t0
    steps_per_epoch = math.ceil(len(shard) / config.batch_scans)
    total_steps = steps_per_epoch * config.epochs
    out_dir = Path(out_dir)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    extra_base = {**(metadata or {}), "train_config": _jsonable(asdict(config)), "world_size": ctx.world_size,
                  "num_scans": len(dataset), "mode": "source_only" if config.source_only else "joint"}

    for epoch in range(start_epoch, config.epochs):
        order = np.random.default_rng([config.seed, epoch, ctx.rank]).permutation(len(shard))
        sums = {"loss": 0.0, "ce": 0.0, "kd": 0.0, "kd_points": 0.0}
        seen = 0
        t_epoch = time.perf_counter()
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress,
                   unit="step")
        for step in bar:
            lr = learning_rate(config, epoch * steps_per_epoch + step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = order[step * config.batch_scans:(step + 1) * config.batch_scans]
            optimizer.zero_grad(set_to_none=True)
            for j, pos in enumerate(batch):
                rng = np.random.default_rng([config.seed, epoch, shard[pos], 2])
                scan, kd_index, kd_features = augmented(examples[pos], rng, config.augment)
                prepared = model.prepare(scan, ctx.device)
                labels = torch.from_numpy(scan.labels).to(ctx.device)
                last = j == len(batch) - 1
                sync = nullcontext() if (last or not ctx.distributed) else net.no_sync()
                with sync:
                    out = net(prepared, with_kd=not config.source_only)
                    kd_pred = None
                    if out.kd is not None:
                        kd_pred = out.kd.index_select(0, torch.from_numpy(kd_index).to(ctx.device))
                    terms = joint_loss(out.logits, labels, kd_pred, None if out.kd is None else kd_features,
                                       config.lambda_kd, config.kd_loss)
                    (terms.total / len(batch)).backward()
                sums["loss"] += float(terms.total.detach())
                sums["ce"] += float(terms.ce.detach())
                sums["kd"] += float(terms.kd.detach())
                sums["kd_points"] += terms.kd_points
                seen += 1
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            bar.set_postfix(ce=f"{sums['ce'] / seen:.3f}", kd=f"{sums['kd'] / seen:.3f}", lr=f"{lr:.1e}")
        record = {"epoch": epoch, **{k: v / max(1, seen) for k, v in sums.items()},
                  "epoch_s": time.perf_counter() - t_epoch, "targets_s": prepare_s}
        average_buffers(model, ctx)
        if ctx.distributed:
            means = torch.tensor([record["loss"], record["ce"], record["kd"]], dtype=torch.float64)
            dist.all_reduce(means)
            record["loss"], record["ce"], record["kd"] = (means / ctx.world_size).tolist()
        if ctx.is_main:
            if val_scans:
                record["val_miou"] = evaluate_miou(model, val_scans, ctx.device)
            history.append(record)
            extra = {**extra_base, "epoch": epoch, "history": history}
            save_checkpoint(model, out_dir / LAST_CHECKPOINT, extra=extra)
            save_train_state(out_dir / STATE_FILE, optimizer, epoch, history)
            with open(out_dir / HISTORY_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < config.epochs - 1:
            return TrainResult(model, history, None)
    final = None
    if ctx.is_main:
        final = save_checkpoint(model, out_dir / FINAL_CHECKPOINT,
                                extra={**extra_base, "epoch": config.epochs - 1, "history": history})
    return TrainResult(model, history, final)


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
    "center_example",
    "crop_indices",
    "estimate_target_center",
    "evaluate_miou",
    "init_distributed",
    "joint_loss",
    "learning_rate",
    "load_train_state",
    "random_similarity",
    "save_train_state",
    "shard_indices",
    "train",
    "transform_scan",
]
