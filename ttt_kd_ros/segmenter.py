"""Segmenter: Scan -> Prediction, the single entry point every edge (node, replay, evaluate, demo) calls.

It owns the device, the per-stage timings and the failure policy of the hot
path (DESIGN.md): a scan without a camera or without a visible point, a NaN
loss or an out-of-memory during adaptation never raises; the scan is labelled
with the unadapted network and ``skip_reason`` says why. Bad *configuration*
(a checkpoint whose distillation head does not fit the teacher, an unknown
device) fails at construction with a ValueError naming the field.

Points that are NaN/inf carry no geometry: they are dropped before the network
and get IGNORE_LABEL with confidence 0, so a consumer can tell "no label" from
a real class (the label of a nearest point would be invented). Every other
input point gets a label, also when ``max_points`` subsampled the cloud: it
takes the label of its own voxel, or of a voxel in the smallest coarser cell
(2x, 4x, ... the voxel size) that holds one.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ttt_kd_ros.adapt import AdaptConfig, AdaptResult, Strategy, build_strategy
from ttt_kd_ros.adapt.class_prior import correct
from ttt_kd_ros.adapt.crops import Crop
from ttt_kd_ros.checkpoint_format import load_checkpoint, validated_settings
from ttt_kd_ros.checkpoints import shipped_path
from ttt_kd_ros.fusion import FusionConfig, fuse_scan, teacher_probabilities
from ttt_kd_ros.model import PreparedScan, TTTKDNet, net_config
from ttt_kd_ros.scan import IGNORE_LABEL, Prediction, Scan
from ttt_kd_ros.shift import BatchNormShift, NoShift, teacher_shift
from ttt_kd_ros.targets import DistillTargets, project_views, sample_targets
from ttt_kd_ros.teachers.resolve import resolve
from ttt_kd_ros.teachers.teacher import Teacher
from ttt_kd_ros.validated_settings import ValidatedSettings

LOG = logging.getLogger(__name__)


def resolve_builtin(checkpoint: str | None) -> str | None:
    """``checkpoint`` with BUILTIN / ``builtin:<sensor>`` replaced by the shipped file's path
    (``checkpoints.shipped_path``: one place decides what "the package's own model" means, so the node, the tools
    and the docs cannot disagree). The teacher's BUILTIN is teachers.resolve's."""
    return None if checkpoint is None else shipped_path(checkpoint)


@dataclass
class SegmenterConfig:
    """Everything needed to build a Segmenter; the node and the tools fill it from their parameters.

    checkpoint: a .safetensors path, BUILTIN (the shipped model) or None (an
    untrained net, for plumbing tests). teacher: BUILTIN (the shipped stand-in),
    or any teachers.resolve spec (a random control, HF folder, cached hub id,
    official .pth; not the oracle). teacher_resolution: short side in pixels or
    (H, W); None takes the checkpoint's (the teacher's own default without one). max_points: random subsample cap
    before the network (0 = none); every input point is still labelled.
    """

    checkpoint: str | None = None
    teacher: str = "tiny"
    teacher_resolution: int | tuple[int, int] | None = None
    device: str = "auto"
    amp: bool = False  # bfloat16 autocast for adaptation and the final forward (CUDA with bf16 support, or CPU)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    max_points: int = 0
    seed: int = 0
    given: tuple[str, ...] | None = None
    """Which ``adapt.*`` / ``fusion.*`` fields the caller set on purpose. None: all of them (the configs are used
    as they are). A tuple: every other field takes the checkpoint's validated value (validated_settings.py),
    which is how the node and the tools run a model with the settings chosen for it."""

    def __post_init__(self) -> None:
        if self.max_points < 0:
            raise ValueError(f"SegmenterConfig.max_points: expected >= 0 (0 = no cap), got {self.max_points}")
        if isinstance(self.adapt, dict):
            self.adapt = AdaptConfig(**self.adapt)
        if isinstance(self.fusion, dict):
            self.fusion = FusionConfig(**self.fusion)


def checkpoint_settings(checkpoint: str) -> ValidatedSettings:
    """The validated settings stored in ``checkpoint`` (empty for checkpoints written before they existed)."""
    return ValidatedSettings.from_meta(validated_settings(checkpoint), f"checkpoint {checkpoint}")


def resolve_device(spec: str, name: str = "SegmenterConfig.device") -> torch.device:
    """"auto" -> cuda when available else cpu; "cpu"; "cuda" / "cuda:i" (must exist).

    ``name``: what errors call the setting (a tool passes its flag, ``--device``), so a user reads their own word.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: {spec!r} asked for but torch sees no CUDA device (a CPU-only torch, or no "
                             "driver): use --device cpu / device: cpu, or install a CUDA build of torch")
        index = int(spec[5:]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"{name}: {spec!r} but only {torch.cuda.device_count()} CUDA devices")
        return torch.device(spec)
    raise ValueError(f"{name}: expected 'auto', 'cpu', 'cuda' or 'cuda:<i>', got {spec!r}")


def bfloat16_supported(device: torch.device) -> bool:
    """Whether autocast to bfloat16 runs natively on ``device``: every CPU torch build, CUDA from Ampere on.

    Checked rather than assumed: on an older GPU (Jetson TX2 / Xavier's Volta, Turing) bfloat16 is emulated or
    refused, and mixed precision would then be slower or fail on the robot's first scan.
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu"


def nearest_voxel_rows(points_xyz_m: np.ndarray, coords: np.ndarray, voxel_size_m: float) -> np.ndarray:
    """(N, 3) points -> (N,) rows of ``coords`` (V, 3) int64: the point's own voxel, else a close one.

    Looks the point's cell up at the voxel size, then at 2x, 4x, ... until the
    cell holds a voxel (a sorted-key search per level, no per-point loop); the
    few points no cell catches fall back to the nearest voxel centre.
    """
    rows = np.full(len(points_xyz_m), -1, dtype=np.int64)
    grid = np.floor(points_xyz_m.astype(np.float64) / voxel_size_m).astype(np.int64)
    pending = np.arange(len(points_xyz_m))
    for level in range(24):
        if pending.size == 0:
            break
        vc = coords >> level  # floor division by 2^level, also for negative coordinates
        pc = grid[pending] >> level
        lo = np.minimum(vc.min(axis=0), pc.min(axis=0))
        ext = np.maximum(vc.max(axis=0), pc.max(axis=0)) - lo + 1
        if float(np.prod(ext.astype(np.float64))) >= 2.0**62:
            continue  # too fine a grid for 64-bit keys at this spread; a coarser level fits
        vkeys = ((vc[:, 0] - lo[0]) * ext[1] + (vc[:, 1] - lo[1])) * ext[2] + (vc[:, 2] - lo[2])
        pkeys = ((pc[:, 0] - lo[0]) * ext[1] + (pc[:, 1] - lo[1])) * ext[2] + (pc[:, 2] - lo[2])
        order = np.argsort(vkeys, kind="stable")
        sorted_keys = vkeys[order]
        pos = np.minimum(np.searchsorted(sorted_keys, pkeys), len(sorted_keys) - 1)
        hit = sorted_keys[pos] == pkeys
        rows[pending[hit]] = order[pos[hit]]
        pending = pending[~hit]
    if pending.size:
        centres = (coords.astype(np.float64) + 0.5) * voxel_size_m
        for i in pending:
            rows[i] = int(np.argmin(((centres - points_xyz_m[i]) ** 2).sum(axis=1)))
    return rows


class Segmenter:
    """model (TTTKDNet) + teacher + adaptation strategy on one device.

    Not thread-safe: one worker calls segment() at a time (the node's worker
    thread does). segment() works inside a caller's no_grad or inference_mode.
    """

    def __init__(
        self,
        model: TTTKDNet,
        teacher: Teacher | None,
        strategy: Strategy,
        device: torch.device | str = "cpu",
        amp: bool = False,
        max_points: int = 0,
        seed: int = 0,
        fusion: FusionConfig | None = None,
    ) -> None:
        self.device = torch.device(device)
        # The strategy holds references to the model's tensors (restore copies, optimizer state), so the model
        # must already live on the device: moving it here would leave the strategy restoring stale buffers.
        for what, have in (("model", model.device), ("teacher", teacher.device if teacher is not None else None)):
            if have is not None and not _same_device(have, self.device):
                raise ValueError(f"Segmenter: {what} is on {have} but device is {self.device}; move it (and build "
                                 "the strategy) on the device first, as Segmenter.from_config does")
        self.model = model
        self.teacher = teacher
        self.strategy = strategy
        if strategy.needs_targets and teacher is None:
            raise ValueError(f"Segmenter: strategy {strategy.name!r} distils from a teacher, but teacher is None")
        self.fusion = fusion or FusionConfig()
        if self.fusion.enabled and (teacher is None or model.fusion_head is None):
            missing = "teacher is None" if teacher is None else "the checkpoint has no fusion head (NetConfig." \
                "fusion_head is false; ttt_kd_fit_fusion_head adds one; fusion.mode off turns fusion off)"
            raise ValueError(f"Segmenter: fusion mode {self.fusion.mode!r} asked for, but {missing}")
        if teacher is not None and teacher.feature_dim != model.config.teacher_dim:
            raise ValueError(f"Segmenter: teacher {teacher.teacher_id} gives {teacher.feature_dim}-dim features but "
                             f"the model's kd head outputs NetConfig.teacher_dim = {model.config.teacher_dim}")
        self._check_prior(strategy.config)
        self.amp = bool(amp) and bfloat16_supported(self.device)
        if amp and not self.amp:
            LOG.warning("amp asked for on %s, but this GPU has no bfloat16 support: running float32 (float16 "
                        "would need loss scaling that test-time steps do not have)", self.device)
        self.max_points = int(max_points)
        # seconds per voxel of the last whole-scan forwards: the budget reserves the next one's from them
        self._forward_rates = CostRates()
        # seconds per point of the last label-shift corrections: the budget reserves the next one's too
        self._prior_rates = CostRates()
        self._rng = np.random.default_rng(seed)
        self._warned: set[str] = set()

    @classmethod
    def from_config(cls, config: SegmenterConfig) -> Segmenter:
        """Load the checkpoint (or build an untrained default net), the teacher and the strategy.

        ValueError (naming the file / field) when the checkpoint's distillation
        head does not fit the teacher's feature dimension.
        """
        device = resolve_device(config.device)
        checkpoint = resolve_builtin(config.checkpoint)
        model: TTTKDNet | None = None
        if checkpoint:
            model = load_checkpoint(checkpoint, device)
        resolution = config.teacher_resolution
        if resolution is None and model is not None:
            resolution = model.config.teacher_resolution
        teacher = resolve(config.teacher, resolution, device, seed=config.seed)
        if model is None:
            LOG.warning("no checkpoint given: building an UNTRAINED default network (ttt_kd_small, teacher_dim=%d); "
                        "its labels are meaningless until a trained checkpoint is configured", teacher.feature_dim)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                model = TTTKDNet(net_config("ttt_kd_small", teacher_dim=teacher.feature_dim,
                                            teacher_id=teacher.teacher_id))
            model = model.to(device)
        elif teacher.feature_dim != model.config.teacher_dim:
            raise ValueError(f"checkpoint {checkpoint}: kd head outputs teacher_dim = "
                             f"{model.config.teacher_dim} but teacher {config.teacher!r} ({teacher.teacher_id}) gives "
                             f"{teacher.feature_dim}-dim features")
        elif model.config.teacher_id and model.config.teacher_id != teacher.teacher_id:
            LOG.warning("checkpoint %s was trained against teacher %s but %s is loaded; distillation targets may "
                        "not be the feature space its kd head learnt", checkpoint, model.config.teacher_id,
                        teacher.teacher_id)
        adapt, fusion = config.adapt, config.fusion
        if checkpoint and config.given is not None:
            adapt, fusion = checkpoint_settings(checkpoint).apply(adapt, fusion, config.given)
        strategy = build_strategy(model, adapt)
        return cls(model, teacher, strategy, device, amp=config.amp, max_points=config.max_points, seed=config.seed,
                   fusion=fusion)

    @property
    def label_set(self) -> str:
        return self.model.config.label_set

    @property
    def num_classes(self) -> int:
        return self.model.config.num_classes

    def reset(self) -> None:
        """Source weights back (e.g. between sequences in online mode)."""
        self.strategy.reset()

    def retune(self, **changes: Any) -> AdaptConfig:
        """AdaptConfig fields changed for the scans that follow (call between scans, e.g. from a parameter update).

        The strategy applies them itself (a learning rate also lives in its optimizer); a refused value is the
        AdaptConfig ValueError, and the running config is then left unchanged.
        """
        config = dataclasses.replace(self.strategy.config, **changes)
        self._check_prior(config)
        self.strategy.retune(config)
        return config

    def _check_prior(self, config: AdaptConfig) -> None:
        """ValueError when ``config`` asks for the label-shift correction of a model that stores no source prior."""
        if config.prior_strength > 0 and not self.model.config.class_prior:
            raise ValueError(f"Segmenter: adapt.prior_strength {config.prior_strength} asks for the label-shift "
                             "correction (adapt/class_prior.py), but the checkpoint stores no class prior (NetConfig."
                             "class_prior; scripts/set_validated_settings.py --class-prior adds one); set "
                             "adapt.prior_strength 0 to run without it")

    # ------------------------------------------------------------------------------------------------ hot path

    def segment(self, scan: Scan) -> Prediction:
        """Labels and confidences for every point of ``scan``, adapting first when the strategy does.

        timings_s stages: validate, prepare (voxels + neighbour maps), teacher
        (feature maps), targets (projection + sampling), ttt_step (sum of the
        steps; their count is steps_run), forward, fusion, prior (the label-shift correction), restore, upsample.
        """
        with torch.inference_mode(False):
            return self._segment(scan, None)[0]

    def segment_steps(self, scan: Scan, steps: Sequence[int]) -> list[Prediction]:
        """One Prediction after each cumulative step count in ``steps`` (ascending) on one scan, same hot path.

        k steps taken as 1 + 4 + 5 + ... continued adapt() calls are the same updates as one k-step call (the
        optimizer moments and the point sampler carry on; test_segmenter checks it), so a steps curve costs
        max(steps) steps per scan, not their sum. The source state is restored once at the end, as segment()
        does after its steps.
        """
        schedule = sorted({int(k) for k in steps})
        if not schedule or schedule[0] < 0:
            raise ValueError(f"segment_steps: expected non-negative step counts, got {list(steps)}")
        with torch.inference_mode(False):
            return self._segment(scan, schedule)

    def warm_up(self, scan: Scan, steps: int = 1) -> Prediction:
        """One scan through every stage with ``steps`` steps whatever the guards say, then the strategy reset.

        Why: the first real scan's budget is planned from the costs measured here (a step, a forward, both scaled
        to its voxels), but a synthetic warm-up scan's noise image is exactly what the guards refuse (its KD loss is
        above ``guard_kd_max``), so a guarded warm-up measured no step and the first real scan was planned blind.
        The guards and the budget are off for this one scan only; the running config is back afterwards.
        """
        config = self.strategy.config
        self.strategy.retune(dataclasses.replace(config, guard_kd_ratio=None, guard_kd_max=0.0, time_budget_s=None))
        try:
            return self.segment_steps(scan, [steps])[-1]
        finally:
            self.strategy.retune(config)
            self.reset()
            for rates in (self._forward_rates, self._prior_rates):  # a small scan's costs per unit: plan scan 1 only
                rates.from_warm_up = True

    def bind_thread(self) -> None:
        """Make the Segmenter's GPU the calling thread's current CUDA device (a no-op on a CPU).

        Why: torch keeps the current device per thread and defaults to cuda:0. The node runs segment() on its own
        worker thread; with ``device: cuda:1`` every kernel torch itself places follows the tensors, but spconv and
        MinkowskiEngine launch on the current device, so the worker sets it before its first scan.
        """
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast on the Segmenter's device when amp is on: the same code path on a CPU and a GPU."""
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _segment(self, scan: Scan, schedule: list[int] | None) -> list[Prediction]:
        """segment() when ``schedule`` is None (the configured steps), else one Prediction per step count."""
        timings: dict[str, float] = {}
        t = scan_start = time.perf_counter()
        points = _checked_points(scan)
        n = len(points)
        keep = np.flatnonzero(np.isfinite(points).all(axis=1))
        if keep.size == 0:
            timings["validate"] = time.perf_counter() - t
            reason = "empty scan" if n == 0 else "no finite points"
            return [self._unlabelled(n, timings, reason) for _ in (schedule or [None])]
        work_index = keep
        if self.max_points and keep.size > self.max_points:
            work_index = np.sort(self._rng.choice(keep, self.max_points, replace=False))
        work = scan if work_index.size == n else scan.select(work_index)
        timings["validate"] = time.perf_counter() - t

        t = time.perf_counter()
        try:
            prepared = self.model.prepare(work, self.device)
        except ValueError as err:  # e.g. coordinates so far apart that the voxel grid overflows
            reason = self._once(f"cannot voxelise the scan: {err}")
            return [self._unlabelled(n, timings, reason) for _ in (schedule or [None])]
        self._sync()
        timings["prepare"] = time.perf_counter() - t
        if self._frozen_encoder():
            prepared = self._encode(prepared, timings)

        wants_targets = self.strategy.needs_targets or self.fusion.enabled
        targets, skip = self._targets(work, timings) if wants_targets else (None, "")
        if not self.strategy.needs_targets:
            skip = ""  # fusion asked for the targets; a strategy that does not distil adapts without them
        reference = None
        if self._wants_reference(skip):
            skip = self._no_room_for_a_step(scan_start, prepared, targets) if schedule is None else ""
            reference = None if skip else self._reference(prepared, targets, timings)
        skip = skip or self._ceiling(reference)
        predictions = []
        done = 0
        for k in schedule if schedule is not None else [None]:
            step_timings = dict(timings)
            result = AdaptResult()
            if self.strategy.name != "none" and not skip:
                more = None if k is None else k - done
                result, skip = self._adapt(prepared, targets, more, resume=k is not None and done > 0,
                                           time_budget_s=self._adapt_budget(scan_start, prepared, reference))
                done = done if k is None else k
            pred = Prediction(np.full(n, IGNORE_LABEL, dtype=np.int64), np.zeros(n, dtype=np.float32), step_timings,
                              strategy=self.strategy.name)
            self._record_adaptation(pred, result, skip, predictions[-1] if predictions else None)
            self._predict(pred, prepared, targets, points, keep, work_index, reference)
            predictions.append(pred)
        t = time.perf_counter()
        if self.strategy.episodic:
            self.strategy.reset()
            self._sync()
        predictions[-1].timings_s["restore"] = time.perf_counter() - t
        if schedule is None:  # segment()'s stage order: restore before upsample
            last = predictions[-1].timings_s
            last["upsample"] = last.pop("upsample")
        return predictions

    def _frozen_encoder(self) -> bool:
        """Whether the scan's encoder output is computed once (the strategy never changes it) and every pass runs
        the decoder alone. Not when fusion reads the 3D shift: that is measured over every batch-norm layer of a
        whole forward; nor on a sparse backend whose crops cannot say their voxel pyramid before a pass (spconv)."""
        return (self.strategy.frozen_encoder() and not self._reads_shift_3d()
                and hasattr(self.model, "with_frozen_encoder")
                and getattr(self.model.sparse_backend, "coords_before_a_pass", False))

    def _encode(self, prepared: PreparedScan, timings: dict[str, float]) -> PreparedScan:
        """``prepared`` with its frozen encoder output and any frozen decoder stages' (timing stage ``encoder``),
        in the mode predict() uses."""
        t = time.perf_counter()
        self.strategy.predict_mode()
        with self._autocast():
            prepared = self.model.with_frozen_encoder(prepared, self.strategy.frozen_decoder_stages())
        self._sync()
        timings["encoder"] = time.perf_counter() - t
        return prepared

    def _adapt_budget(self, scan_start: float, prepared: PreparedScan, reference: Reference | None) -> float | None:
        """What is left of the scan's time budget for the steps: the budget minus the time this scan has taken so
        far (checks, voxels, teacher, targets, reference) minus what must still run after the steps: the final
        forward (the last one's time scaled to this scan's voxels), a crop guard's second crop pass and the
        label-shift correction (the last ones' time per point times this scan's points). None when the strategy
        has no budget."""
        budget = self.strategy.config.time_budget_s
        if budget is None:
            return None
        after = self._forward_estimate(self._pass_size(prepared))
        if self.strategy.config.prior_strength > 0:
            after += self._prior_rates.estimate(prepared.num_points)
        if reference is not None and reference.crop is not None:
            after += reference.crop_forward_s
        return max(0.0, budget - (time.perf_counter() - scan_start) - after)

    def _no_room_for_a_step(self, scan_start: float, prepared: PreparedScan, targets: DistillTargets | None) -> str:
        """A time-budget reason when what is left cannot hold the guard's reference passes and one step, else "".

        Why: on a CPU the final forward of a 100k-voxel LiDAR scan takes most of a 1.5 s budget; measuring the
        guard's reference for steps that cannot run would only make the scan later.
        """
        estimate = getattr(self.strategy, "first_step_estimate", None)
        left = self._adapt_budget(scan_start, prepared, None)
        step = None if estimate is None or left is None else estimate(prepared, targets)
        if step is None:
            return ""
        if self._guard_on_crop(prepared, targets):  # the guard region's two passes, its share of the forward
            share = self.strategy.guard_voxels(prepared, targets) / max(1, prepared.num_voxels)
            passes = 2.0 * self._forward_estimate(self._pass_size(prepared) * share)
        else:  # a whole-scan reference: a forward before the steps (with no step it would be the output instead)
            passes = self._forward_estimate(self._pass_size(prepared))
        if left - passes >= step:
            return ""
        return f"time budget {left:.3f} s: no room for a step ({step:.3f} s) and the guard ({passes:.3f} s)"

    def _forward_estimate(self, size: float) -> float:
        """The expected time of a forward of ``size`` (``_pass_size`` units): the largest cost per unit of the last
        FORWARD_HISTORY whole-scan forwards times it (0 before any forward).

        Why per unit of size: the node's warm-up measures a small synthetic scan; reserved as is, it let the first
        real LiDAR scan start steps its final forward then had no room for. Why the largest: real KITTI frames
        differ in cost per unit too, and the last one alone let the engine overrun a 2 s budget by 11 %.
        """
        return self._forward_rates.estimate(size)

    def _pass_size(self, prepared: PreparedScan) -> float:
        """The work of one pass over ``prepared`` (``TTTKDNet.pass_size``; its voxels for a model that has none)."""
        size = getattr(self.model, "pass_size", None)
        return float(size(prepared) if size is not None else prepared.num_voxels)

    def _note_forward(self, seconds: float, prepared: PreparedScan) -> None:
        """Remember a whole-scan forward's cost per unit of size for the budget of the scans that follow."""
        self._forward_rates.note(seconds, self._pass_size(prepared))

    def _unlabelled(self, n: int, timings: dict[str, float], reason: str) -> Prediction:
        """Every point IGNORE_LABEL, confidence 0: the scan could not be labelled at all."""
        return Prediction(np.full(n, IGNORE_LABEL, dtype=np.int64), np.zeros(n, dtype=np.float32), dict(timings),
                          strategy=self.strategy.name, skip_reason=reason)

    def _record_adaptation(self, pred: Prediction, result: AdaptResult, skip: str,
                           previous: Prediction | None) -> None:
        """steps_run, adapted, kd_loss_before and skip_reason of one prediction (cumulative along a schedule)."""
        pred.timings_s["ttt_step"] = float(sum(result.step_times_s))
        pred.steps_run = result.steps_run + (previous.steps_run if previous is not None else 0)
        pred.adapted = pred.steps_run > 0 and not result.restored
        loss_before = previous.kd_loss_before if previous is not None else result.loss_before
        pred.kd_loss_before = loss_before if self.strategy.needs_targets else None
        if not pred.adapted:
            pred.skip_reason = skip or result.reason

    def _wants_reference(self, skip: str) -> bool:
        """Whether the output safety needs the unadapted KD loss or prediction of this scan (_reference)."""
        config = self.strategy.config
        if self.strategy.name == "none" or skip:
            return False
        guard = (config.guard_kd_ratio is not None or config.guard_kd_max > 0) and self.strategy.needs_targets
        return guard or config.unadapted_weight > 0 or self._reads_shift_3d()

    def _reads_shift_3d(self) -> bool:
        """Whether fusion reads the scan's 3D input shift, which only an unadapted whole-scan forward measures
        (the reference's, or the final forward of a scan with no step)."""
        return self.fusion.shift_adaptive and self.fusion.shift_slope_3d > 0

    def _ceiling(self, reference: Reference | None) -> str:
        """GUARD_CEILING when the scan's unadapted KD loss is above ``guard_kd_max``: no step is run on targets
        that far from what the network learnt to predict (adapt/config.py says why), else ""."""
        ceiling = self.strategy.config.guard_kd_max
        if reference is None or reference.kd_loss is None or not ceiling > 0 or reference.kd_loss <= ceiling:
            return ""
        return GUARD_CEILING

    def _reference(self, prepared: PreparedScan, targets: DistillTargets | None,
                   timings: dict[str, float]) -> Reference:
        """The unadapted KD loss of the scan, and its prediction when the output needs it: what the safety
        compares the adapted scan with.

        On a scan whose steps run on crops, when no unadapted prediction is mixed into the output, the guard
        measures the KD loss on the first step's crop (before the steps here, after them in _predict) instead of
        a whole-scan forward: the crop costs a tenth of a 100k-voxel LiDAR scan's forward, and a rejected
        adaptation is then labelled by the final forward itself, with the source weights (one forward either way).
        """
        t = time.perf_counter()
        crop = self._guard_crop(prepared, targets)
        if crop is not None:
            t_pass = time.perf_counter()  # the pass alone is what the guard repeats after the steps: the cut is kept
            with self._autocast():
                kd = self.strategy.crop_kd_loss(crop, targets)
            timings["reference"] = time.perf_counter() - t
            return Reference(None, kd, crop, crop_forward_s=time.perf_counter() - t_pass)
        with self._autocast(), self._shift_3d() as shift:
            output = self.strategy.predict(prepared)
        with torch.no_grad():
            probs = torch.softmax(output.logits.float(), dim=1)
        kd = None
        if targets is not None and targets.point_index.numel() > 0 and self.strategy.needs_targets:
            kd = self.strategy.kd_loss_of(output, targets)
        timings["reference"] = time.perf_counter() - t
        self._note_forward(timings["reference"], prepared)
        return Reference(probs, kd, shift_3d=shift.value)

    def _shift_3d(self) -> BatchNormShift | NoShift:
        """The 3D input-shift measure for the scan's first whole-scan forward, when fusion reads it (shift.py)."""
        if self._reads_shift_3d():
            return BatchNormShift(self.model.backbone)
        return NoShift()

    def _guard_on_crop(self, prepared: PreparedScan, targets: DistillTargets | None) -> bool:
        """Whether the guard measures on the first step's crop (_reference) rather than with a whole-scan forward.

        Not when the unadapted prediction or its 3D input shift is read (only a whole-scan forward gives them), when the
        steps run on the whole scan anyway, or for a strategy that carries weights across scans (its unadapted
        prediction is the one before this scan's steps, which only a whole-scan reference holds).
        """
        strategy = self.strategy
        if (strategy.config.unadapted_weight > 0 or self._reads_shift_3d() or not strategy.episodic
                or not hasattr(strategy, "guard_crop") or targets is None or targets.point_index.numel() == 0):
            return False
        voxels = strategy.step_voxels(prepared, targets)
        return voxels is not None and voxels < prepared.num_voxels

    def _guard_crop(self, prepared: PreparedScan, targets: DistillTargets | None) -> Crop | None:
        """The crop the guard measures on, or None for a whole-scan reference (_guard_on_crop)."""
        return self.strategy.guard_crop(prepared, targets) if self._guard_on_crop(prepared, targets) else None

    def _safe(self, pred: Prediction, probs: torch.Tensor, reference: Reference | None) -> torch.Tensor:
        """The adapted probabilities, the unadapted ones when the guard rejects the adaptation, or their mix.

        Why: how much an adaptation helped is unknown without labels, but the distillation loss says how much it
        did its own job: on the validation suite, scans whose KD loss fell little were the ones adaptation made
        worse (docs/EVALUATION.md). Such a scan is labelled as if it had not adapted.
        """
        config = self.strategy.config
        if reference is None or reference.probs is None or pred.steps_run == 0:
            return probs
        if self._rejects(pred, reference.kd_loss, pred.kd_loss_after):
            return reference.probs
        if config.unadapted_weight > 0:
            w = config.unadapted_weight
            return (1.0 - w) * probs + w * reference.probs
        return probs

    def _rejects(self, pred: Prediction, before: float | None, after: float | None) -> bool:
        """Whether the ratio guard rejects this adaptation (its KD loss fell too little); marks ``pred`` if so."""
        ratio = self.strategy.config.guard_kd_ratio
        if ratio is None or before is None or after is None or after < ratio * before:
            return False
        pred.adapted = False
        pred.skip_reason = GUARD_REJECTED
        return True

    def _crop_guard(self, pred: Prediction, reference: Reference | None, targets: DistillTargets | None) -> bool:
        """The crop guard after the steps (_reference says why a crop): the guard crop's KD loss after them,
        recorded on ``pred``; True when the output must be the source weights' (a rejection)."""
        if reference is None or reference.crop is None or pred.steps_run == 0:
            return False
        t = time.perf_counter()
        with self._autocast():
            pred.kd_loss_after = self.strategy.crop_kd_loss(reference.crop, targets)
        pred.timings_s["guard"] = time.perf_counter() - t
        return self._rejects(pred, reference.kd_loss, pred.kd_loss_after)

    def _predict(self, pred: Prediction, prepared: PreparedScan, targets: DistillTargets | None, points: np.ndarray,
                 keep: np.ndarray, work_index: np.ndarray, reference: Reference | None = None) -> None:
        """The final forward with the current weights, the post-adaptation KD loss, labels for every point."""
        visible = targets is not None and targets.point_index.numel() > 0
        if reference is not None and reference.kd_loss is not None:
            pred.kd_loss_before = reference.kd_loss  # the unadapted loss the guards compare with
        if reference is not None and reference.probs is not None and pred.steps_run == 0:
            # no step ran since the reference forward: its output is this scan's, and a second forward would
            # repeat it (a rejected scan, or a budget with no room for a step, costs one forward, not two)
            probs = reference.probs
            pred.timings_s["forward"] = 0.0
            shift_3d = reference.shift_3d
        else:
            rejected = self._crop_guard(pred, reference, targets)
            t = time.perf_counter()
            weights = self.strategy.unadapted() if rejected else contextlib.nullcontext()
            measured = reference is not None and reference.probs is not None  # the reference was a whole forward
            with self._autocast(), weights, (NoShift() if measured else self._shift_3d()) as shift:
                output = self.strategy.predict(prepared)
            shift_3d = reference.shift_3d if measured else shift.value
            with torch.no_grad():
                probs = torch.softmax(output.logits.float(), dim=1)
            if reference is None or reference.crop is None:  # a whole-scan guard reads this forward's KD loss
                if visible and self.strategy.needs_targets:
                    loss = self.strategy.kd_loss_of(output, targets)
                    if pred.steps_run > 0:
                        pred.kd_loss_after = loss
                    else:  # no step ran: this forward's loss is the scan's unadapted KD loss, there is no "after"
                        pred.kd_loss_before = loss
                probs = self._safe(pred, probs, reference)
            pred.timings_s["forward"] = time.perf_counter() - t
            self._note_forward(pred.timings_s["forward"], prepared)
        work_fused = None
        if visible:
            pred.visible_points = int(targets.point_index.numel())
        if self.fusion.enabled:
            t = time.perf_counter()
            work_fused = np.zeros(len(probs), dtype=bool)
            if visible:
                probs, pred.fusion_withheld, pred.fusion_weight = self._fuse(probs, targets, shift_3d)
                work_fused[targets.point_index.cpu().numpy()] = not pred.fusion_withheld
            pred.timings_s["fusion"] = time.perf_counter() - t
        probs = self._correct_prior(pred, probs)
        conf_t, label_t = probs.max(dim=1)
        work_labels = label_t.cpu().numpy()
        work_conf = conf_t.cpu().numpy().astype(np.float32)

        t = time.perf_counter()
        if work_index.size == keep.size:
            pred.labels[keep], pred.confidence[keep] = work_labels, work_conf
        else:
            pred.labels[keep], pred.confidence[keep] = self._upsample(points[keep], prepared, work_labels, work_conf)
        if work_fused is not None:
            pred.fused = np.zeros(len(pred.labels), dtype=bool)
            # only the points the network saw carry a camera's view; upsampled neighbours keep the 3D label
            pred.fused[work_index] = work_fused
        pred.timings_s["upsample"] = time.perf_counter() - t

    def _correct_prior(self, pred: Prediction, probs: torch.Tensor) -> torch.Tensor:
        """The scan's output with the label-shift correction (adapt/class_prior.py) when ``adapt.prior_strength``
        asks for it, its class weights kept in ``pred.class_weights``; ``probs`` unchanged otherwise."""
        config = self.strategy.config
        if config.prior_strength == 0.0:
            return probs
        t = time.perf_counter()
        probs, weights = correct(probs, self.model.config.class_prior, config.prior_strength, config.prior_iterations)
        pred.class_weights = weights.cpu().numpy().astype(np.float32)
        pred.timings_s["prior"] = time.perf_counter() - t
        self._prior_rates.note(pred.timings_s["prior"], probs.shape[0])
        return probs

    def _fuse(self, probs: torch.Tensor, targets: DistillTargets, shift_3d: float | None
              ) -> tuple[torch.Tensor, bool, float | None]:
        """(N, K) 3D probabilities with the teacher head's fused in on the visible rows (fusion.py), whether the
        teacher was withheld on this scan (its class mix too unlike the 3D one: ``fusion.fuse_scan``), and the
        teacher's share used (``fusion.scan_weight_2d`` of the scan's shifts; None when withheld)."""
        rows = targets.point_index.to(probs.device)
        features = targets.features.to(probs.device)
        probs_2d = teacher_probabilities(self.model.fusion_head, features)
        config = self.fusion.at_shifts(shift_3d, teacher_shift(features))
        fused, withheld = fuse_scan(probs.index_select(0, rows), probs_2d, config)
        if withheld:
            return probs, True, None
        out = probs.clone()
        out[rows] = fused
        return out, False, config.weight_2d

    def _targets(self, work: Scan, timings: dict[str, float]) -> tuple[DistillTargets | None, str]:
        """Teacher feature maps (cached per image), then projection + sampling; a reason instead when unusable."""
        if not work.cameras:
            return None, "no camera"
        try:
            t = time.perf_counter()
            projected = project_views(work, self.teacher.device)
            timings["projection"] = time.perf_counter() - t
            t = time.perf_counter()
            fmaps = self.teacher.view_feature_maps(projected.views)  # every camera that sees a point, batched
            self._sync()
            timings["teacher"] = time.perf_counter() - t
            t = time.perf_counter()
            targets = sample_targets(projected, fmaps, self.teacher, center=self.model.config.kd_target_center)
            self._sync()
            timings["targets"] = time.perf_counter() - t
        except ValueError as err:
            return None, self._once(f"bad camera data: {err}")
        if targets.point_index.numel() == 0:
            return targets, "no visible point"
        return targets, ""

    def _adapt(self, prepared: PreparedScan, targets: DistillTargets | None, steps: int | None = None,
               resume: bool = False, time_budget_s: float | None = None) -> tuple[AdaptResult, str]:
        try:
            with self._autocast():
                result = self.strategy.adapt(prepared, targets, time_budget_s=time_budget_s, steps=steps,
                                             resume=resume)
        except torch.OutOfMemoryError as err:
            self.strategy.reset()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return AdaptResult(restored=True), self._once(f"out of memory during adaptation: {err}".split("\n")[0])
        if result.restored:
            self._once(result.reason)
        return result, ""

    def _upsample(self, points: np.ndarray, prepared: PreparedScan, work_labels: np.ndarray,
                  work_conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-voxel results of the subsample -> every finite input point."""
        voxels = prepared.voxels
        p2v = voxels.point_to_voxel.cpu().numpy()
        voxel_labels = np.empty(voxels.num_voxels, dtype=np.int64)
        voxel_conf = np.empty(voxels.num_voxels, dtype=np.float32)
        voxel_labels[p2v], voxel_conf[p2v] = work_labels, work_conf  # all points of a voxel share its outputs
        rows = nearest_voxel_rows(points, voxels.coords.cpu().numpy(), voxels.voxel_size_m)
        return voxel_labels[rows], voxel_conf[rows]

    def _once(self, reason: str) -> str:
        """Log a reason at warning level the first time, at debug afterwards (no log flood at 10 Hz)."""
        level = logging.DEBUG if reason in self._warned else logging.WARNING
        self._warned.add(reason)
        LOG.log(level, "scan predicted without adaptation: %s", reason)
        return reason


FORWARD_HISTORY = 3


class CostRates:
    """The cost per unit of size (seconds per pass-size unit, per point) of a stage's last FORWARD_HISTORY runs:
    what the time budget reserves for that stage on the next scan (the largest, times its size).

    ``from_warm_up``: the rates are the node's synthetic warm-up scan's; the next real run replaces them (a small
    scan's cost per unit is about 3x a LiDAR scan's: scan 1 is planned with it, safely, then it is forgotten).
    """

    def __init__(self) -> None:
        self.rates: collections.deque[float] = collections.deque(maxlen=FORWARD_HISTORY)
        self.from_warm_up = False

    def note(self, seconds: float, size: float) -> None:
        if self.from_warm_up:
            self.rates.clear()
            self.from_warm_up = False
        self.rates.append(seconds / max(1.0, float(size)))

    def estimate(self, size: float) -> float:
        """The expected seconds of a run of ``size``: the largest recent cost per unit times it (0 before any)."""
        return max(self.rates, default=0.0) * size
"""Whole-scan forwards whose cost per unit of size the time budget remembers (Segmenter._forward_estimate)."""
GUARD_REJECTED = "adaptation rejected: its KD loss fell too little"
"""skip_reason of a scan whose adaptation the guard rejected (AdaptConfig.guard_kd_ratio): a fixed name, so logs and
diagnostics count it under one key; the losses are in the Prediction's kd_loss_before / kd_loss_after."""
GUARD_CEILING = "targets unlike training: the unadapted KD loss is above guard_kd_max"
"""skip_reason of a scan that ran no step because its unadapted KD loss is above AdaptConfig.guard_kd_max (a fixed
name like GUARD_REJECTED; the loss is the Prediction's kd_loss_before)."""


@dataclass
class Reference:
    """A scan's unadapted KD loss, and its (N, K) probabilities when a whole-scan forward was run.

    probs: None for a crop reference (Segmenter._reference). kd_loss: over the scan's visible points, or over the
    targets inside ``crop`` (None: no visible point). crop_forward_s: what the crop pass cost (the pass alone,
    not cutting the crop), reserved in the budget for the second pass after the steps.
    """

    probs: torch.Tensor | None
    kd_loss: float | None
    crop: Crop | None = None
    crop_forward_s: float = 0.0
    shift_3d: float | None = None  # shift.BatchNormShift of a whole-scan reference, when fusion reads it


def _same_device(a: torch.device, b: torch.device) -> bool:
    """cuda and cuda:0 are the same device when 0 is the current one."""
    def index(d: torch.device) -> int:
        return d.index if d.index is not None else (torch.cuda.current_device() if d.type == "cuda" else 0)

    return a.type == b.type and index(a) == index(b)


def _checked_points(scan: Scan) -> np.ndarray:
    """(N, 3) float points of the scan; ValueError naming the field when the shape or type is wrong."""
    points = np.asarray(scan.points_xyz_m)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"scan.points_xyz_m: expected (N, 3), got {points.shape}")
    if not np.issubdtype(points.dtype, np.floating):
        raise ValueError(f"scan.points_xyz_m: expected float32, got {points.dtype}")
    return points
