"""What training reads: scans from a data source, their distillation targets, and the augmented copies a step sees.

Kept apart from the training loop so the same pieces serve a single process,
DataLoader workers and DDP ranks:

- ``TrainExample``: a scan and its distillation targets (float32 on the CPU),
  made by ``build_example`` from the teacher's feature maps, which a
  ``feature_cache.CachedTeacher`` serves from disk after the first epoch's
  forward (so no epoch re-runs the ViT);
- augmentation as one similarity transform applied to the points AND to every
  camera's ``cam_from_cloud``, so each point still projects to the pixel its
  target was sampled at;
- ``prepare_shard``: one pass over a rank's scans before training that fills
  the feature cache, estimates the target centre and turns bad scans into
  counted, logged skips (one corrupt frame never stops a long run);
- ``ExampleSet``: the torch Dataset the DataLoader reads (workers included).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ttt_kd_ros.labels import map_to_label_set
from ttt_kd_ros.scan import CameraView, Scan
from ttt_kd_ros.targets import distillation_targets
from ttt_kd_ros.teachers.teacher import Teacher
from ttt_kd_ros.training.distributed import DistContext, sum_over_ranks

LOG = logging.getLogger("ttt_kd_train")


# ----------------------------------------------------------------------------------------------- augmentation


@dataclass
class Augmentation:
    """Random changes of a training scan. crop_points > 0 keeps that many points nearest (in x-y) to a random
    point: smaller, spatially coherent scans train faster on a CPU and add variety of context.

    crop_on_targets: the share of crops centred on a point that has a distillation target. Why: on a LiDAR rig
    with one front camera (KITTI), crops centred anywhere on the 360-degree sweep held a target in only 33-43 %
    of draws, and short runs trained whole epochs without a KD term; centring part of the crops on seen points
    keeps the distillation term alive while the other crops still show the unseen context."""

    rotate_z: bool = True
    scale: tuple[float, float] = (0.9, 1.1)
    flip_prob: float = 0.5  # mirror y -> -y
    jitter_m: float = 0.005  # std of per-point Gaussian noise (not applied to the cameras: it is sensor noise)
    crop_points: int = 0
    crop_on_targets: float = 0.5

    def __post_init__(self) -> None:
        self.scale = (float(self.scale[0]), float(self.scale[1]))
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"Augmentation.scale: expected 0 < low <= high, got {self.scale}")
        if not 0.0 <= self.flip_prob <= 1.0 or self.jitter_m < 0 or self.crop_points < 0:
            raise ValueError(f"Augmentation: flip_prob in [0, 1], jitter_m >= 0, crop_points >= 0 expected, got "
                             f"{self.flip_prob}, {self.jitter_m}, {self.crop_points}")
        if not 0.0 <= self.crop_on_targets <= 1.0:
            raise ValueError(f"Augmentation.crop_on_targets: expected a share in [0, 1], got {self.crop_on_targets}")


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


def crop_indices(points_xyz_m: np.ndarray, keep: int, rng: np.random.Generator,
                 centres: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of the ``keep`` points nearest in x-y to a random point (all points when fewer).

    centres: rows the centre is drawn from (e.g. the points a camera sees); None or empty: any point.
    """
    n = len(points_xyz_m)
    if keep <= 0 or keep >= n:
        return np.arange(n)
    pool = centres if centres is not None and len(centres) else None
    centre = points_xyz_m[rng.choice(pool) if pool is not None else rng.integers(n), :2]
    dist2 = ((points_xyz_m[:, :2] - centre) ** 2).sum(axis=1)
    return np.sort(np.argpartition(dist2, keep - 1)[:keep])


# ----------------------------------------------------------------------------------------------- examples


@dataclass
class TrainExample:
    """A training scan and its cached distillation targets.

    kd_index: (M,) int64 ascending rows of scan.points_xyz_m that a camera sees;
    kd_features: (M, D) float32 CPU teacher features at those points (M may be 0), centred when the run
    centres. float32 throughout: the feature cache's float16 store is the one rounding the targets see.
    """

    scan: Scan
    kd_index: np.ndarray
    kd_features: torch.Tensor


def build_example(scan: Scan, teacher: Teacher | None, kd_points: int, rng: np.random.Generator,
                  center: Sequence[float] | None = None) -> TrainExample:
    """Teacher targets of ``scan`` once (at most ``kd_points`` of them, a random subset; 0 = all).

    teacher None (source-only training) gives no targets. ``center`` (the run's target mean) is applied by
    ``distillation_targets`` itself, the call the Segmenter makes at test time, so training and test-time
    targets cannot be centred differently.
    """
    if scan.labels is None:
        raise ValueError("scan.labels: training needs labelled scans, got None")
    if teacher is None:
        return TrainExample(scan, np.zeros(0, np.int64), torch.zeros(0, 0))
    targets = distillation_targets(scan, teacher, center=center)
    index = targets.point_index.cpu().numpy()
    features = targets.features.detach().cpu()
    if 0 < kd_points < len(index):
        pick = np.sort(rng.choice(len(index), kd_points, replace=False))
        index, features = index[pick], features[torch.from_numpy(pick)]
    return TrainExample(scan, index.astype(np.int64), features.float())


def augmented(example: TrainExample, rng: np.random.Generator, aug: Augmentation | None
              ) -> tuple[Scan, np.ndarray, torch.Tensor]:
    """(scan, kd_index, kd_features) after crop + similarity + jitter; targets follow the kept points."""
    if aug is None:
        return example.scan, example.kd_index, example.kd_features
    on_targets = rng.random() < aug.crop_on_targets
    keep = crop_indices(example.scan.points_xyz_m, aug.crop_points, rng, example.kd_index if on_targets else None)
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


class TargetCenter:
    """Running sum of distillation targets (and their count) over scans and ranks: the mean to remove.

    Estimated once, on the training targets, and then frozen in NetConfig.kd_target_center, so a test-time scan
    is centred with the training statistics rather than its own (one scan's mean would remove its own signal).
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.sums = torch.zeros(dim + 1, dtype=torch.float64)

    def add(self, example: TrainExample) -> None:
        if example.kd_features.shape[0] == 0:
            return
        if example.kd_features.shape[1] != self.dim:
            raise ValueError(f"target centre: expected {self.dim}-dim targets, got {example.kd_features.shape[1]}")
        self.sums[:self.dim] += example.kd_features.double().sum(dim=0)
        self.sums[self.dim] += example.kd_features.shape[0]

    def mean(self, ctx: DistContext | None = None) -> tuple[float, ...]:
        """(D,) mean over everything added on every rank; ValueError when no scan had a visible point."""
        sums = sum_over_ranks(self.sums, ctx) if ctx is not None else self.sums
        if sums[self.dim] == 0:
            raise ValueError("target centre: no distillation targets in the training scans (no visible point)")
        return tuple((sums[:self.dim] / sums[self.dim]).tolist())


def estimate_target_center(examples: Sequence[TrainExample], dim: int,
                           ctx: DistContext | None = None) -> tuple[float, ...]:
    """(D,) mean of every cached target over all examples (and all ranks)."""
    center = TargetCenter(dim)
    for example in examples:
        center.add(example)
    return center.mean(ctx)


# ----------------------------------------------------------------------------------------------- scans of a run


def training_scan(scan: Scan, label_set: str, where: str) -> Scan:
    """The scan with labels in the model's label set; ValueError (naming ``where``) when it cannot train."""
    if scan.num_points == 0:
        raise ValueError(f"{where}: empty scan (0 points)")
    if scan.labels is None:
        raise ValueError(f"{where}: no labels; training needs a labelled data source")
    if scan.label_set and scan.label_set != label_set:  # a copy: a source may keep (and hand out again) its scans
        return dataclasses.replace(scan, labels=map_to_label_set(scan.labels, scan.label_set, label_set),
                                   label_set=label_set)
    return scan


def scan_name(dataset: Sequence[Scan], index: int) -> str:
    """How a skip log names scan ``index``: the data source's file when it has one."""
    namer = getattr(dataset, "item_name", None)
    return namer(index) if namer is not None else f"scan {index}"


def training_scan_at(dataset: Sequence[Scan], index: int, label_set: str) -> Scan:
    """Scan ``index`` of ``dataset`` ready to train or validate on (training_scan, errors naming its file)."""
    return training_scan(dataset[index], label_set, scan_name(dataset, index))


def example_at(dataset: Sequence[Scan], index: int, teacher: Teacher | None, label_set: str, kd_points: int,
               seed: int, center: Sequence[float] | None = None) -> TrainExample:
    """Scan ``index`` and its targets, with the scan's own fixed subset seed: the first pass and every epoch
    build the same example."""
    scan = training_scan_at(dataset, index, label_set)
    return build_example(scan, teacher, kd_points, np.random.default_rng([seed, index, 1]), center)


@dataclass
class ShardPlan:
    """The scans of this rank that train, what was skipped and why, and the targets' mean (when estimated)."""

    indices: list[int]
    skipped: Counter = field(default_factory=Counter)
    center: tuple[float, ...] | None = None


def prepare_shard(dataset: Sequence[Scan], shard: Sequence[int], teacher: Teacher | None, label_set: str,
                  kd_points: int, seed: int, estimate_center: bool, ctx: DistContext, progress: bool = False
                  ) -> ShardPlan:
    """One pass over this rank's scans: fill the teacher's feature cache, estimate the target centre, and skip
    (counted, logged with the file) every scan that cannot train instead of failing the run on it."""
    from tqdm import tqdm

    plan = ShardPlan([])
    center = TargetCenter(teacher.feature_dim) if teacher is not None and estimate_center else None
    for i in tqdm(sorted(set(shard)), desc=f"scans + teacher targets (rank {ctx.rank})", disable=not progress,
                  unit="scan"):
        try:
            example = example_at(dataset, i, teacher, label_set, kd_points, seed)
        except (ValueError, FileNotFoundError, OSError) as err:
            plan.skipped[type(err).__name__] += 1
            LOG.warning("skipping %s: %s", scan_name(dataset, i), err)
            continue
        if center is not None:
            center.add(example)
        plan.indices.append(i)
    if center is not None:
        plan.center = center.mean(ctx)
    return plan


class ExampleSet(torch.utils.data.Dataset):
    """Position k of an epoch's order -> (scan index, augmented scan, kd_index, kd_features) for one step.

    Targets are rebuilt from the (cached) feature maps on every visit with the scan's own fixed subset seed,
    so epochs see the same targets a run that kept every example in memory would, without holding them. Set
    ``epoch`` before each epoch's iterator: it seeds the augmentation.
    """

    def __init__(self, dataset: Sequence[Scan], order: Sequence[int], teacher: Teacher | None, label_set: str,
                 kd_points: int, seed: int, center: Sequence[float] | None, augment: Augmentation | None) -> None:
        self.dataset = dataset
        self.order = list(order)
        self.teacher = teacher
        self.label_set = label_set
        self.kd_points = kd_points
        self.seed = seed
        self.center = center
        self.augment = augment
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> tuple[int, Scan, np.ndarray, torch.Tensor]:
        i = self.order[k]
        example = example_at(self.dataset, i, self.teacher, self.label_set, self.kd_points, self.seed, self.center)
        rng = np.random.default_rng([self.seed, self.epoch, i, 2])
        return (i, *augmented(example, rng, self.augment))


def as_batch(items: list) -> list:
    """DataLoader collate: a step's scans stay a list (each scan is its own sparse tensor)."""
    return items
