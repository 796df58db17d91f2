"""Runs the evaluation: strategies x splits through the Segmenter, the steps curve, the online stream check.

Every strategy is scored exactly as a robot would run it (``Segmenter.segment``
on one scan at a time). A split's scans are streamed (evaluation/splits.py):
the table reads each scan once and hands it to every row's Segmenter in turn,
so one scan and its teacher features are in memory, not the split; the rows'
models live side by side instead (megabytes each, next to tens of megabytes
per real scan). Models are loaded fresh for every (strategy, split) pair, so
state carried by online / TENT adaptation never leaks from one split into
the next, and each row's Segmenter sees the split's scans in order as it
would alone (every random draw is its own, seeded per Segmenter). mIoU is over the
split's accumulated confusion matrix (the data-set mIoU the paper reports),
not a mean of per-scan mIoUs.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ttt_kd_ros.adapt import STRATEGIES, AdaptConfig, build_strategy
from ttt_kd_ros.checkpoint_format import load_checkpoint
from ttt_kd_ros.evaluation.splits import SplitData, SplitSpec, split_scan
from ttt_kd_ros.fusion import FusionConfig
from ttt_kd_ros.labels import LABEL_SETS, common_classes, get_label_set, map_ids
from ttt_kd_ros.metrics import ConfusionMatrix
from ttt_kd_ros.model import TTTKDNet
from ttt_kd_ros.scan import Scan
from ttt_kd_ros.segmenter import Segmenter
from ttt_kd_ros.teachers.teacher import Teacher

LOG = logging.getLogger(__name__)

SOURCE_ONLY, JOINT = "source_only", "joint"


@dataclass(frozen=True)
class EvalStrategy:
    """A table row: which checkpoint it runs and which adaptation strategy (adapt.STRATEGIES) it uses.

    ``config`` is a named row's own AdaptConfig (e.g. the KD-only control, ``ttt_kd`` with bn_train off);
    None takes the run's shared config of ``adapt``. ``fusion``: how the row's output fuses the teacher head's
    prediction on visible points (None: off; the checkpoint needs a fusion head otherwise).
    """

    name: str
    label: str
    checkpoint: str  # SOURCE_ONLY or JOINT
    adapt: str
    config: AdaptConfig | None = None
    fusion: FusionConfig | None = None

    @property
    def needs_teacher(self) -> bool:
        return STRATEGIES[self.adapt].needs_targets or (self.fusion is not None and self.fusion.enabled)


EVAL_STRATEGIES: dict[str, EvalStrategy] = {
    s.name: s
    for s in (
        EvalStrategy("source_only", "Source-only", SOURCE_ONLY, "none"),
        EvalStrategy("joint_train", "Joint-train", JOINT, "none"),
        EvalStrategy("bn_stats", "BN-stats (DUA-style)", JOINT, "bn_stats"),
        EvalStrategy("tent", "TENT", JOINT, "tent"),
        EvalStrategy("ttt_kd_online", "TTT-KD-O (online)", JOINT, "ttt_kd_online"),
        EvalStrategy("ttt_kd", "TTT-KD (per scan)", JOINT, "ttt_kd"),
        # the teacher's own prediction through the fusion head on visible points, the 3D one elsewhere
        EvalStrategy("teacher_projection", "Teacher projection (no adaptation)", JOINT, "none",
                     fusion=FusionConfig("mean", 1.0)),
    )
}
"""Rows of the paper-style table; the adapted rows all start from the joint-trained checkpoint, as in the paper.
The rows that depend on the checkpoint's validated settings (``fusion_only``, ``default``) are added by the
evaluator (tools/evaluate.py), which reads them."""


@dataclass
class SplitResult:
    """One strategy on one split: accumulated confusion, per-scan numbers and what adaptation did."""

    strategy: str
    split: str
    confusion: ConfusionMatrix
    scan_miou: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # per scan, a cold teacher forward included
    steps_run: list[int] = field(default_factory=list)
    coverage: list[float] = field(default_factory=list)  # per scan: share of points some camera sees
    fused: list[float] = field(default_factory=list)  # per scan: share of points whose label is fused
    skips: Counter = field(default_factory=Counter)
    resets: int = 0
    stage_s: dict[str, float] = field(default_factory=dict)  # mean seconds per scan per Segmenter stage
    class_names: tuple[str, ...] = ()  # of the confusion's classes (the shared ones for a cross-set split)

    @property
    def miou(self) -> float:
        return self.confusion.miou()

    @property
    def seconds_per_scan(self) -> float:
        return float(np.mean(self.seconds)) if self.seconds else float("nan")


@dataclass
class RunSettings:
    """What the runner needs besides the splits: checkpoints, teacher, adaptation configs, device."""

    checkpoints: dict[str, Path]  # SOURCE_ONLY / JOINT -> file
    teacher: Teacher | None
    adapt: dict[str, AdaptConfig]  # adapt.STRATEGIES name -> its config
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def load_model(settings: RunSettings, role: str) -> TTTKDNet:
    """A fresh copy of the checkpoint playing ``role``; ValueError when the role has no checkpoint."""
    path = settings.checkpoints.get(role)
    if path is None:
        raise ValueError(f"no checkpoint given for the {role} model (see --checkpoint / --source-only-checkpoint)")
    return load_checkpoint(path, settings.device)


def row_segmenter(settings: RunSettings, row: EvalStrategy) -> Segmenter:
    """The Segmenter a row runs: its checkpoint, its strategy, the teacher only when the strategy distils."""
    model = load_model(settings, row.checkpoint)
    config = row.config if row.config is not None else settings.adapt.get(row.adapt, AdaptConfig(strategy=row.adapt))
    if config.strategy != row.adapt:
        raise ValueError(f"adapt config for row {row.name!r}: expected strategy {row.adapt!r}, got {config.strategy!r}")
    strategy = build_strategy(model, config)
    teacher = settings.teacher if row.needs_teacher else None
    return Segmenter(model, teacher, strategy, settings.device, fusion=row.fusion)


@dataclass(frozen=True)
class Scoring:
    """Where a split's ground truth and a model's predictions meet: the model's classes when the split is
    labelled in the same set, else the classes the two sets share (labels.common_classes), both sides mapped."""

    class_names: tuple[str, ...]
    truth_map: np.ndarray | None = None
    pred_map: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def confusion(self) -> ConfusionMatrix:
        return ConfusionMatrix(self.num_classes)

    def update(self, matrix: ConfusionMatrix, truth: np.ndarray, predicted: np.ndarray) -> None:
        if self.truth_map is not None:
            truth, predicted = map_ids(self.truth_map, truth), map_ids(self.pred_map, predicted)
        matrix.update(truth, predicted)


def scoring_for(split_label_set: str, model_label_set: str, model_classes: Sequence[str]) -> Scoring:
    """The Scoring of a split labelled in ``split_label_set`` against a model predicting ``model_label_set``."""
    if not split_label_set or split_label_set == model_label_set:
        return Scoring(tuple(model_classes))
    common = common_classes(split_label_set, model_label_set)
    return Scoring(common.names, common.a_to_common, common.b_to_common)


def split_scoring(segmenter: Segmenter, split_label_set: str) -> Scoring:
    """The Scoring of the segmenter's model against scans labelled in ``split_label_set``."""
    model = segmenter.model.config
    names = (get_label_set(model.label_set).class_names if model.label_set in LABEL_SETS
             else tuple(str(i) for i in range(model.num_classes)))
    return scoring_for(split_label_set, model.label_set, names)


def warm_teacher(teacher: Teacher, scan: Scan) -> float:
    """Compute (and cache) the teacher features of every image of one scan; the seconds it took.

    The in-memory cache is made large enough for the scan's images, so every row that distils reads that one
    teacher forward per image; the measured cold cost is added back to each such row's time on the scan,
    because a robot pays it on every scan.
    """
    teacher.cache_size = max(teacher.cache_size, len(scan.cameras) + 8)
    start = time.perf_counter()
    for camera in scan.cameras:
        teacher.view_feature_map(camera)
    return time.perf_counter() - start


class RowScore:
    """One row's Segmenter on one split and its running score, fed one scan at a time (split_scoring)."""

    def __init__(self, settings: RunSettings, row: EvalStrategy, split: SplitData) -> None:
        self.row = row
        self.split = split
        self.segmenter = row_segmenter(settings, row)
        self.scoring = split_scoring(self.segmenter, split.label_set)
        self.result = SplitResult(row.name, split.name, self.scoring.confusion(), class_names=self.scoring.class_names)
        self.stages: Counter = Counter()
        self.wall_s = 0.0

    def add(self, index: int, scan: Scan, teacher_cost_s: float | None = None) -> None:
        """Segment scan ``index`` of the split and score it; ``teacher_cost_s``: its cold teacher cost
        (warm_teacher), which replaces the cached read in a distilling row's seconds."""
        if scan.labels is None:
            raise ValueError(f"split {self.split.name}: scan {index} has no labels; evaluation needs labelled scans")
        start = time.perf_counter()
        pred = self.segmenter.segment(scan)
        result, scoring = self.result, self.scoring
        scoring.update(result.confusion, scan.labels, pred.labels)
        one = scoring.confusion()
        scoring.update(one, scan.labels, pred.labels)
        result.scan_miou.append(one.miou())
        seconds = pred.total_s
        if self.row.needs_teacher and teacher_cost_s is not None:
            seconds += teacher_cost_s - pred.timings_s.get("teacher", 0.0)
        result.seconds.append(seconds)
        result.steps_run.append(pred.steps_run)
        result.coverage.append(pred.visible_points / max(1, len(pred.labels)))
        if pred.fused is not None:
            result.fused.append(float(pred.fused.mean()) if len(pred.fused) else 0.0)
        if pred.skip_reason:
            result.skips[pred.skip_reason] += 1
        self.stages.update(pred.timings_s)
        self.wall_s += time.perf_counter() - start

    def finish(self) -> SplitResult:
        """The row's SplitResult once every scan was added."""
        result = self.result
        result.resets = int(getattr(self.segmenter.strategy, "resets", 0))
        result.stage_s = {k: v / max(1, len(result.seconds)) for k, v in self.stages.items()}
        return result


def evaluate_split(settings: RunSettings, rows: Sequence[EvalStrategy], split: SplitData,
                   progress: bool = False) -> list[SplitResult]:
    """Every row on one split: each scan is read once and segmented by every row's Segmenter in turn.

    ``progress``: a tqdm bar over the split's scans.
    """
    from tqdm import tqdm

    scores = [RowScore(settings, row, split) for row in rows]
    distils = settings.teacher is not None and any(r.needs_teacher for r in rows)
    bar = tqdm(split.scans, desc=f"{split.name}: {len(rows)} rows", unit="scan", total=len(split.scans),
               disable=not progress)
    for i, scan in enumerate(bar):
        cost = warm_teacher(settings.teacher, scan) if distils else None
        for score in scores:
            score.add(i, scan, cost)
        del scan  # the next scan replaces it; the split is never held whole
    results = []
    for score in scores:
        result = score.finish()
        LOG.info("%s on %s: mIoU %.4f, %.3f s/scan (%.1f s)", result.strategy, result.split, result.miou,
                 result.seconds_per_scan, score.wall_s)
        results.append(result)
    return results


def run_table(settings: RunSettings, rows: Sequence[EvalStrategy], splits: Sequence[SplitData],
              on_result: Callable[[SplitResult], None] | None = None, progress: bool = False) -> list[SplitResult]:
    """Every row on every split; ``on_result`` is called after each pair (partial reports), once the split's
    rows are done; ``progress``: a tqdm bar per split."""
    results = []
    for split in splits:
        for result in evaluate_split(settings, rows, split, progress):
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


# ------------------------------------------------------------------------------------------------ steps curve


@dataclass
class StepsCurve:
    """TTT-KD after each number of steps per scan, per split and "mean".

    miou: {split: {steps: mIoU over the split's accumulated confusion}}.
    kd_loss: {split: {steps: mean over scans of the KD loss on every visible point after those steps}}; its
    value at 0 steps, shift over in-distribution, says how much the teacher sees a shift, and mIoU rising as it
    falls says that distilling it helps (METHOD.md, "What a teacher must have").
    """

    miou: dict[str, dict[int, float]]
    kd_loss: dict[str, dict[int, float]]

    def kd_ratio_at_zero(self, in_distribution: str) -> dict[str, float]:
        """Each split's unadapted KD loss divided by the in-distribution split's (1.0 for that split)."""
        base = self.kd_loss.get(in_distribution, {}).get(0, float("nan"))
        return {name: (losses.get(0, float("nan")) / base if base > 0 else float("nan"))
                for name, losses in self.kd_loss.items() if name != "mean"}


def run_curve(settings: RunSettings, splits: Sequence[SplitData], steps: Sequence[int], max_scans: int,
              row: EvalStrategy | None = None, progress: bool = False) -> StepsCurve:
    """mIoU and KD loss of TTT-KD (per scan) after each number of steps, per split, through Segmenter.segment_steps.

    ``row`` defaults to the table's ttt_kd row (the run's shared ttt_kd config); the Segmenter path is the one
    every table row and the node run, with k steps taken cumulatively (max(steps) steps per scan). Scans are
    streamed from each split; ``progress``: a tqdm bar per split.
    """
    from tqdm import tqdm

    if settings.teacher is None:
        raise ValueError("the steps curve needs a teacher (TTT-KD distils from it)")
    steps = sorted({int(s) for s in steps})
    if not steps or steps[0] < 0:
        raise ValueError(f"curve steps: expected non-negative integers, got {steps}")
    row = row or EVAL_STRATEGIES["ttt_kd"]
    miou_curve: dict[str, dict[int, float]] = {}
    kd_curve: dict[str, dict[int, float]] = {}
    for split in splits:
        segmenter = row_segmenter(settings, row)
        scoring = split_scoring(segmenter, split.label_set)
        matrices = {k: scoring.confusion() for k in steps}
        losses: dict[int, list[float]] = {k: [] for k in steps}
        scans = split.scans[:max_scans]
        for scan in tqdm(scans, desc=f"curve {split.name}", unit="scan", total=len(scans), disable=not progress):
            for k, pred in zip(steps, segmenter.segment_steps(scan, steps), strict=True):
                scoring.update(matrices[k], scan.labels, pred.labels)
                loss = pred.kd_loss_after if pred.kd_loss_after is not None else pred.kd_loss_before
                if loss is not None:
                    losses[k].append(loss)
        miou_curve[split.name] = {k: matrices[k].miou() for k in steps}
        kd_curve[split.name] = {k: float(np.mean(v)) if v else float("nan") for k, v in losses.items()}
        LOG.info("curve on %s: %s", split.name, {k: round(v, 4) for k, v in miou_curve[split.name].items()})
    for curve in (miou_curve, kd_curve):
        curve["mean"] = {k: float(np.nanmean([curve[s.name][k] for s in splits])) for k in steps}
    return StepsCurve(miou_curve, kd_curve)


# ------------------------------------------------------------------------------------------------ online stream


@dataclass
class OnlineStream:
    """Per-scan confusion counts of TTT-KD-O and of the unadapted joint model over one long stream."""

    split: str
    counts_online: list[np.ndarray] = field(default_factory=list)  # (C, C) per scan
    counts_none: list[np.ndarray] = field(default_factory=list)
    resets_after_scan: list[int] = field(default_factory=list)  # cumulative drift-guard restores
    kd_loss_before: list[float | None] = field(default_factory=list)
    seconds_online: list[float] = field(default_factory=list)


def window_miou(counts: Sequence[np.ndarray], window: int) -> list[float]:
    """mIoU over each run of ``window`` consecutive scans (one value per window end, stride 1)."""
    if window < 1:
        raise ValueError(f"online window: expected >= 1 scans, got {window}")
    if not counts:
        return []
    stacked = np.cumsum(np.stack(counts), axis=0)
    out = []
    for end in range(min(window, len(counts)) - 1, len(counts)):
        total = stacked[end] - (stacked[end - window] if end >= window else 0)
        cm = ConfusionMatrix(total.shape[0])
        cm.counts = total
        out.append(cm.miou())
    return out


def run_online(settings: RunSettings, spec: SplitSpec, num_scans: int, base_seed: int, max_points: int,
               subsample: str, progress_every: int = 50) -> OnlineStream:
    """TTT-KD-O over the first ``num_scans`` consecutive scans of one split (loaded one at a time, not kept;
    fewer when the split's source is shorter)."""
    online = row_segmenter(settings, EVAL_STRATEGIES["ttt_kd_online"])
    frozen = row_segmenter(settings, EVAL_STRATEGIES["joint_train"])
    source = spec.open(num_scans, base_seed)
    scoring = split_scoring(online, source.label_set)
    stream = OnlineStream(spec.name)
    start = time.perf_counter()
    num_scans = min(num_scans, len(source))
    for i in range(num_scans):
        scan: Scan = split_scan(source, i, base_seed, max_points, subsample)
        for segmenter, store in ((online, stream.counts_online), (frozen, stream.counts_none)):
            pred = segmenter.segment(scan)
            cm = scoring.confusion()
            scoring.update(cm, scan.labels, pred.labels)
            store.append(cm.counts)
            if segmenter is online:
                stream.kd_loss_before.append(pred.kd_loss_before)
                stream.seconds_online.append(pred.total_s)
        stream.resets_after_scan.append(int(online.strategy.resets))
        if progress_every and (i + 1) % progress_every == 0:
            LOG.info("online %s: %d/%d scans, %d resets, %.0f s", spec.name, i + 1, num_scans,
                     online.strategy.resets, time.perf_counter() - start)
    return stream
