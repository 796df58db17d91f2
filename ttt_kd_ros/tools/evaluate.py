"""ttt_kd_evaluate: the paper-style table (strategies x domain shifts), a steps curve and an online stream check.

Rows: source-only (the source-only checkpoint), joint-train (the joint
checkpoint, no adaptation), and BN-stats, TENT, TTT-KD-O, TTT-KD, all on the
joint checkpoint as in the paper. Columns: an in-distribution split and any
number of shifts, each a synthetic domain spec (``NAME=DOMAIN[:part.field=
value,...]``, see evaluation/splits.py). Writes into --out:

    table.md          the table, the teacher, the command
    results.json      everything: settings, per-class IoU, per-scan mIoU and seconds, confusion matrices
    miou_bars.png     mIoU per split and strategy
    steps_curve.png/.json   TTT-KD mIoU against steps per scan (--curve-scans 0 skips)
    online.png/.json        TTT-KD-O over --online-scans consecutive scans (0 skips)

Example (small, a few minutes on 2 CPU cores):
    ttt_kd_evaluate --out runs/eval --scans 8 --max-points 8000 --shift office --shift lidar \
        --shift heavy=noisy:sensor.dropout=0.6 --online-scans 100
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ttt_kd_ros.adapt import STRATEGIES, AdaptConfig
from ttt_kd_ros.checkpoint_format import read_checkpoint_metadata
from ttt_kd_ros.checkpoints import (
    DEFAULT_SENSOR,
    SENSORS,
    default_checkpoint,
    shipped_path,
    source_only_checkpoint,
)
from ttt_kd_ros.config_edits import apply_overrides, pairs
from ttt_kd_ros.evaluation.evaluator import (
    EVAL_STRATEGIES,
    JOINT,
    SOURCE_ONLY,
    EvalStrategy,
    RunSettings,
    SplitResult,
    StepsCurve,
    run_curve,
    run_online,
    run_table,
)
from ttt_kd_ros.evaluation.pool import pool_runs, read_results
from ttt_kd_ros.evaluation.report import (
    coverage_line,
    markdown_table,
    online_summary,
    plot_bars,
    plot_curve,
    plot_online,
    result_record,
    scans_per_split,
    split_scan_counts,
    table_rows,
    write_json,
)
from ttt_kd_ros.evaluation.splits import (
    DEFAULT_EVAL_SEED,
    DEFAULT_SHIFTS,
    IN_DISTRIBUTION,
    SUBSAMPLE_MODES,
    SplitSpec,
    generate_split,
    parse_split,
)
from ttt_kd_ros.evaluation.suites import SUITES, suite_sensor, suite_splits
from ttt_kd_ros.fusion import FusionConfig
from ttt_kd_ros.labels import LABEL_SETS, common_classes
from ttt_kd_ros.segmenter import checkpoint_settings, resolve_device
from ttt_kd_ros.teachers.dense import DenseTeacher
from ttt_kd_ros.teachers.feature_cache import CachedTeacher
from ttt_kd_ros.teachers.oracle import is_oracle
from ttt_kd_ros.teachers.resolve import (
    DEFAULT,
    RANDOM_TEACHERS,
    builtin_folder,
    is_builtin,
    resolution_from_flag,
    resolve,
)
from ttt_kd_ros.teachers.teacher import Teacher, resolution_value
from ttt_kd_ros.validated_settings import ValidatedSettings

LOG = logging.getLogger("ttt_kd_evaluate")

DEFAULT_JOINT = default_checkpoint()
DEFAULT_SOURCE_ONLY = source_only_checkpoint()
DEFAULT_CURVE_STEPS = "0,1,5,10,25,50"


def build_parser() -> argparse.ArgumentParser:
    d = AdaptConfig()
    p = argparse.ArgumentParser(prog="ttt_kd_evaluate", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help=f"joint-trained checkpoint (default: the shipped one of --suite's sensor, "
                        f"else {DEFAULT_JOINT})")
    p.add_argument("--source-only-checkpoint", type=Path, default=None,
                   help=f"source-only checkpoint (the source_only row; default: the shipped one of --suite's sensor, "
                        f"else {DEFAULT_SOURCE_ONLY})")
    p.add_argument("--teacher", default=DEFAULT,
                   help=f"teacher: the shipped stand-in ({DEFAULT}), a folder / cached hub id / .pth, a random "
                        "lower bound "
                        f"{sorted(RANDOM_TEACHERS)}, or the oracle upper bound 'oracle[:corrupt=0.5,dim=96]' "
                        "(synthetic scans only)")
    p.add_argument("--teacher-resolution", type=int, nargs="+", default=None,
                   help="short side or H W; default: the joint checkpoint's")
    p.add_argument("--strategies", default=None,
                   help=f"comma-separated rows from {list(EVAL_STRATEGIES) + list(VALIDATED_ROWS)} (default: all; "
                        "rows that read the fusion head or the validated settings only when the joint checkpoint "
                        "has them)")
    p.add_argument("--suite", default=None, choices=sorted(SUITES),
                   help="a validation suite's in-distribution split and shifts as the columns (evaluation/suites.py; "
                        "use it with the validation seed 777), and that sensor's shipped checkpoints by default")
    p.add_argument("--row", action="append", default=[], metavar="NAME=STRATEGY[:FIELD=VALUE,...]",
                   help="an extra named row on the joint checkpoint with its own AdaptConfig (the strategy's "
                        "config after the shared flags and --adapt, then these fields), e.g. "
                        "kd_only=ttt_kd:bn_train=false or bn_only=ttt_kd:lr=1e-8; repeat for more")
    p.add_argument("--split", action="append", default=None, metavar="NAME=SPEC",
                   help="a column: a synthetic domain spec or a data-source spec (KIND:ROOT?options, docs/DATA.md); "
                        "the first is the in-distribution column unless --in-distribution is given, the rest are "
                        "shifts; repeat for more (replaces the default shifts)")
    p.add_argument("--in-distribution", default=None,
                   help=f"split spec of the in-distribution column (default {IN_DISTRIBUTION!r}, or the first --split)")
    p.add_argument("--cache", type=Path, default=None,
                   help="teacher feature cache folder (ttt_kd_cache_features): features are read, not recomputed; "
                        "seconds per scan then leave out the ViT forward")
    p.add_argument("--shift", action="append", default=None,
                   help=f"a shift column, NAME=DOMAIN[:sensor.f=v,style.f=v] or a domain name; repeat for more "
                        f"(default {' '.join(DEFAULT_SHIFTS)})")
    p.add_argument("--scans", type=int, default=8, help="scans per split")
    p.add_argument("--max-points", type=int, default=0, help="cap points per scan (0 = whole scans)")
    p.add_argument("--subsample", default="random", choices=SUBSAMPLE_MODES, help="how --max-points caps a scan")
    p.add_argument("--seed", type=int, default=DEFAULT_EVAL_SEED, help="base seed of the evaluation scans")
    p.add_argument("--steps", type=int, default=d.steps, help="steps per scan of ttt_kd, tent and bn_stats")
    p.add_argument("--online-steps", type=int, default=1, help="steps per scan of ttt_kd_online")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate of ttt_kd, ttt_kd_online and tent")
    p.add_argument("--adapt", action="append", default=[], metavar="STRATEGY:FIELD=VALUE[,...]",
                   help=f"override AdaptConfig fields of one strategy from {list(STRATEGIES)}, e.g. "
                        "tent:lr=0.001,reset_per_scan=false")
    p.add_argument("--skip-table", action="store_true", help="only the curve / online check")
    p.add_argument("--curve-steps", default=DEFAULT_CURVE_STEPS, help="steps of the TTT-KD curve")
    p.add_argument("--curve-scans", type=int, default=4, help="scans per split for the curve (0 = no curve)")
    p.add_argument("--curve-splits", default="", help="comma-separated split names for the curve (default: all)")
    p.add_argument("--online-scans", type=int, default=0, help="TTT-KD-O stream length for the collapse check")
    p.add_argument("--online-split", default="", help="split name or spec of the stream (default: first shift)")
    p.add_argument("--online-window", type=int, default=25, help="sliding window (scans) of the stream mIoU")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:<i> or auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--title", default="", help="title of the plots")
    p.add_argument("--pool", nargs="+", type=Path, default=None, metavar="RUN",
                   help="only pool earlier runs (their --out folders; same rows and splits, other seeds) into one "
                        "table in --out, by adding confusion matrices")
    p.add_argument("--no-progress", action="store_true",
                   help="no tqdm bars (opening each split, each split's rows, the curve); -q implies it")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    return p


def teacher_kind(spec: str, teacher: Teacher) -> str:
    """What the teacher is, in words every report carries: stand-in, random control, or DINOv2-architecture weights
    named by what was loaded and their digest (whether those are Meta's released weights cannot be told here)."""
    if is_oracle(spec):
        return (f"oracle control ({teacher.teacher_id}): each pixel's feature is a fixed random vector of its "
                "rendered class, pooled to patches; an upper bound no image model reaches")
    if spec in RANDOM_TEACHERS:
        return f"random control: random-weight DINOv2-architecture ViT ({spec}), no learnt features"
    path = builtin_folder() if is_builtin(spec) else Path(spec)
    if isinstance(teacher, DenseTeacher):
        config = teacher.config
        return (f"dense stand-in: an image-only U-Net trained on synthetic renders ({path.name}, {config.output} "
                f"pooled to {config.patch}-px patches); NOT real DINOv2 weights")
    if path.is_dir() and (path / "pretrain_report.json").is_file():
        return (f"stand-in: DINOv2-architecture ViT pretrained on synthetic renders ({path.name}); "
                "NOT real DINOv2 weights")
    return (f"DINOv2-architecture weights loaded from {spec} (teacher id {teacher.teacher_id}: a digest of their "
            "config and tensors; this package does not check that they are Meta's released DINOv2)")


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise ValueError(f"{what}: expected non-negative integers, got {text!r}")
    return values


def adapt_configs(args: argparse.Namespace) -> tuple[dict[str, AdaptConfig], dict[str, set[str]]]:
    """One AdaptConfig per adapt.STRATEGIES name (the shared flags, then the --adapt overrides), and the fields
    each strategy's --adapt flags name: on the default row those win over the joint checkpoint's validated
    values, as a node parameter the user set does (validated_settings.py)."""
    configs = {
        "none": AdaptConfig(strategy="none", steps=0),
        "bn_stats": AdaptConfig(strategy="bn_stats", steps=args.steps),
        "tent": AdaptConfig(strategy="tent", steps=args.steps, lr=args.lr),
        "ttt_kd": AdaptConfig(strategy="ttt_kd", steps=args.steps, lr=args.lr),
        "ttt_kd_online": AdaptConfig(strategy="ttt_kd_online", steps=args.online_steps, lr=args.lr),
    }
    given: dict[str, set[str]] = {}
    for text in args.adapt:
        name, colon, fields = text.partition(":")
        if not colon or name not in configs:
            raise ValueError(f"--adapt {text!r}: expected STRATEGY:FIELD=VALUE[,...] with STRATEGY from "
                             f"{list(configs)}")
        updated = apply_overrides(configs[name], fields, f"--adapt {text!r}")
        if updated.strategy != name:
            raise ValueError(f"--adapt {text!r}: the strategy field cannot be changed")
        configs[name] = updated
        given.setdefault(name, set()).update(key for key, _ in pairs(fields, f"--adapt {text!r}"))
    return configs, given


VALIDATED_ROWS = {
    "fusion_only": "Fusion only (no adaptation; the checkpoint's fusion)",
    "default": "Default output (the checkpoint's validated settings)",
}
"""Rows built from the joint checkpoint's validated settings (validated_settings.py): what the node runs."""


def _strategies(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in EVAL_STRATEGIES and n not in VALIDATED_ROWS]
    if unknown or not names:
        raise ValueError(f"--strategies: unknown {unknown or 'empty list'}; "
                         f"expected names from {list(EVAL_STRATEGIES) + list(VALIDATED_ROWS)}")
    return names


def validated_rows(names: Sequence[str], settings: ValidatedSettings, base: dict[str, AdaptConfig],
                   given: dict[str, set[str]] | None = None) -> list[EvalStrategy]:
    """The VALIDATED_ROWS among ``names``: fusion alone, and the checkpoint's whole default output (with the
    fields ``given`` for its strategy taken from ``base``, not from the checkpoint: the --adapt flags)."""
    strategy = settings.adapt.get("strategy", "ttt_kd")
    explicit = [f"adapt.{field}" for field in (given or {}).get(strategy, ())]
    adapt, fusion = settings.apply(base.get(strategy, AdaptConfig(strategy=strategy)), FusionConfig(), explicit)
    if not fusion.enabled:
        fusion = None
    rows = []
    for name in names:
        if name == "fusion_only":
            rows.append(EvalStrategy(name, VALIDATED_ROWS[name], JOINT, "none",
                                     fusion=fusion or FusionConfig("mean", 0.5)))
        elif name == "default":
            rows.append(EvalStrategy(name, VALIDATED_ROWS[name], JOINT, strategy, adapt, fusion))
    return rows


def rows_for_checkpoint(requested: str | None, joint_meta: dict[str, Any] | None, checkpoint: Path,
                        base: dict[str, AdaptConfig], given: dict[str, set[str]] | None = None
                        ) -> list[EvalStrategy]:
    """The table rows: those asked for, or every row this joint checkpoint can run. Rows reading the fusion head
    (teacher_projection, fusion_only) need one, the default row needs validated settings; by default a row the
    checkpoint cannot run is left out with a log line, asked for by name it is an error."""
    has_head = bool(joint_meta and joint_meta["config"].get("fusion_head"))
    settings = checkpoint_settings(str(checkpoint)) if joint_meta else ValidatedSettings()

    def missing(name: str) -> str:
        if name in ("teacher_projection", "fusion_only") and not has_head:
            return "has no fusion head (ttt_kd_fit_fusion_head adds one)"
        if name == "default" and not (settings.adapt or settings.fusion):
            return "has no validated settings"
        return ""

    if requested is None:
        names = list(EVAL_STRATEGIES) + list(VALIDATED_ROWS)
        dropped = {n: missing(n) for n in names if missing(n)}
        if dropped:
            LOG.info("rows left out, checkpoint %s: %s", checkpoint, dropped)
        names = [n for n in names if n not in dropped]
    else:
        names = _strategies(requested)
        for name in names:
            if missing(name):
                raise ValueError(f"--strategies {name}: checkpoint {checkpoint} {missing(name)}")
    rows = [EVAL_STRATEGIES[n] for n in names if n in EVAL_STRATEGIES]
    return rows + validated_rows([n for n in names if n in VALIDATED_ROWS], settings, base, given)


def named_rows(texts: Sequence[str], configs: dict[str, AdaptConfig], taken: Sequence[str]) -> list[EvalStrategy]:
    """``NAME=STRATEGY[:FIELD=VALUE,...]`` -> rows on the joint checkpoint, each with its own AdaptConfig."""
    rows: list[EvalStrategy] = []
    for text in texts:
        name, eq, rest = text.partition("=")
        strategy, _, fields = rest.partition(":")
        name, strategy = name.strip(), strategy.strip()
        if not eq or not name or strategy not in configs:
            raise ValueError(f"--row {text!r}: expected NAME=STRATEGY[:FIELD=VALUE,...] with STRATEGY from "
                             f"{list(configs)}")
        if name in taken or name in {r.name for r in rows}:
            raise ValueError(f"--row {text!r}: the row name {name!r} is already used")
        config = apply_overrides(configs[strategy], fields, f"--row {text!r}") if fields else configs[strategy]
        if config.strategy != strategy:
            raise ValueError(f"--row {text!r}: the strategy field cannot be changed")
        label = f"{name} ({strategy}" + (f": {fields}" if fields else "") + ")"
        rows.append(EvalStrategy(name, label, JOINT, strategy, config))
    return rows


def columns(args: argparse.Namespace) -> tuple[SplitSpec, list[SplitSpec]]:
    """(in-distribution split, shifts) from --suite, --in-distribution, --split and --shift."""
    if args.suite:
        suite_id, suite_shifts = suite_splits(args.suite)
        id_text = args.in_distribution or suite_id
        return parse_split(id_text), [parse_split(s) for s in [*suite_shifts, *(args.split or []),
                                                                *(args.shift or [])]]
    given = list(args.split or [])
    if args.in_distribution is not None:
        id_text = args.in_distribution
    elif given:
        id_text = given.pop(0)
    else:
        id_text = IN_DISTRIBUTION
    shift_texts = given + list(args.shift or [])
    if not args.split and not args.shift:
        shift_texts = list(DEFAULT_SHIFTS)
    return parse_split(id_text), [parse_split(s) for s in shift_texts]


def _check_checkpoint(path: Path, flag: str) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{flag} {path}: file not found (train one with ttt_kd_train, or pass another file)")
    return read_checkpoint_metadata(path)


def _resolution(args: argparse.Namespace, joint_meta: dict[str, Any] | None) -> int | tuple[int, int] | None:
    """The flag's, else the joint checkpoint's (what its kd head was trained on), else the teacher's own."""
    flag = resolution_from_flag(args.teacher_resolution)
    if flag is not None:
        return flag
    if joint_meta is not None:
        return resolution_value(joint_meta["teacher_resolution"], "teacher_resolution")
    return None


def _validate(args: argparse.Namespace) -> None:
    for flag, value, low in (("--scans", args.scans, 1), ("--max-points", args.max_points, 0),
                             ("--curve-scans", args.curve_scans, 0), ("--online-scans", args.online_scans, 0),
                             ("--online-window", args.online_window, 1), ("--steps", args.steps, 0),
                             ("--online-steps", args.online_steps, 0), ("--threads", args.threads, 0)):
        if value < low:
            raise ValueError(f"{flag}: expected >= {low}, got {value}")
    if not args.lr > 0:
        raise ValueError(f"--lr: expected > 0, got {args.lr}")


class Evaluation:
    """The state of one ttt_kd_evaluate run and the files it writes; reports are rewritten as results arrive."""

    def __init__(self, args: argparse.Namespace, argv: Sequence[str]) -> None:
        self.args = args
        self.out: Path = args.out
        self.command = "ttt_kd_evaluate " + " ".join(shlex.quote(a) for a in argv)
        self.adapt, adapt_given = adapt_configs(args)
        sensor = suite_sensor(args.suite) if args.suite and suite_sensor(args.suite) in SENSORS else DEFAULT_SENSOR
        # ``builtin:lidar`` as the node spells it: the rows are chosen from the shipped file's metadata
        args.checkpoint = Path(shipped_path(str(args.checkpoint))) if args.checkpoint else default_checkpoint(sensor)
        args.source_only_checkpoint = args.source_only_checkpoint or source_only_checkpoint(sensor)
        joint_meta = _check_checkpoint(args.checkpoint, "--checkpoint") if args.checkpoint.is_file() else None
        self.rows = rows_for_checkpoint(args.strategies, joint_meta, args.checkpoint, self.adapt, adapt_given)
        self.rows += named_rows(args.row, self.adapt, [r.name for r in self.rows])
        self.id_split, self.shifts = columns(args)
        names = [self.id_split.name] + [s.name for s in self.shifts]
        if len(set(names)) != len(names):
            raise ValueError(f"split names must be unique, got {names}")
        self.curve_steps = parse_int_list(args.curve_steps, "--curve-steps")
        self.curve_splits = [n.strip() for n in args.curve_splits.split(",") if n.strip()] or names
        unknown = sorted(set(self.curve_splits) - set(names))
        if unknown:
            raise ValueError(f"--curve-splits: unknown split names {unknown}; splits are {names}")
        self.online_split: SplitSpec | None = None
        if args.online_scans:
            known = {s.name: s for s in [self.id_split, *self.shifts]}
            chosen = args.online_split or (self.shifts[0].name if self.shifts else self.id_split.name)
            self.online_split = known.get(chosen) or parse_split(chosen)
        needed_roles = {r.checkpoint for r in self.rows} if not args.skip_table else set()
        if args.curve_scans or args.online_scans:
            needed_roles.add(JOINT)
        self.meta: dict[str, dict[str, Any]] = {}
        checkpoints: dict[str, Path] = {}
        for role, path, flag in ((JOINT, args.checkpoint, "--checkpoint"),
                                 (SOURCE_ONLY, args.source_only_checkpoint, "--source-only-checkpoint")):
            if role in needed_roles:
                self.meta[role] = _check_checkpoint(path, flag)
                checkpoints[role] = path
        uses_teacher = (args.curve_scans > 0 or args.online_scans > 0
                        or any(r.needs_teacher for r in self.rows))
        self.teacher_spec = args.teacher
        self.device = resolve_device(args.device, "--device")
        teacher = None
        if uses_teacher:
            teacher = resolve(self.teacher_spec, _resolution(args, self.meta.get(JOINT)), self.device, offline=True)
            if args.cache is not None:
                teacher = CachedTeacher(teacher, args.cache)
        self.teacher_description = teacher_kind(self.teacher_spec, teacher) if teacher is not None else "none used"
        self.teacher_id = teacher.teacher_id if teacher is not None else ""
        self.settings = RunSettings(checkpoints, teacher, self.adapt, self.device)
        self.results: list[SplitResult] = []
        self.splits: list = []
        self.curve: StepsCurve | None = None
        self.online: dict | None = None
        self.progress = not (args.no_progress or args.quiet)
        self.started = time.time()

    # ------------------------------------------------------------------------------------------ run

    def load_splits(self) -> None:
        """Open every split: each scan read once, one at a time, to learn which load (before any row runs, so a
        bad data spec fails before hours of work); the rows read them again as they run."""
        args = self.args
        if args.skip_table and not args.curve_scans:
            return
        scans = args.scans if not args.skip_table else max(1, args.curve_scans)
        for spec in [self.id_split, *self.shifts]:
            if args.skip_table and spec.name not in self.curve_splits:
                continue
            split = generate_split(spec, scans, args.seed, args.max_points, args.subsample, progress=self.progress)
            LOG.info("split %s: %d scans (%d skipped), %.0f points on average, loaded in %.1f s", spec.name,
                     len(split.scans), split.notes["skipped"], split.notes["mean_points"], split.generation_s)
            self.splits.append(split)

    def run(self) -> int:
        args = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.splits:
            self.load_splits()
        if not args.skip_table:
            run_table(self.settings, self.rows, self.splits, on_result=self._on_result, progress=self.progress)
            self.write_table()
        if args.curve_scans > 0:
            chosen = [s for s in self.splits if s.name in self.curve_splits]
            self.curve = run_curve(self.settings, chosen, self.curve_steps, args.curve_scans, progress=self.progress)
            self.write_curve()
        if args.online_scans > 0:
            stream = run_online(self.settings, self.online_split, args.online_scans, args.seed, args.max_points,
                                args.subsample)
            self.online = online_summary(stream, args.online_window)
            self.write_online()
        LOG.info("done in %.0f s; reports in %s", time.time() - self.started, self.out)
        return 0

    def _on_result(self, result: SplitResult) -> None:
        self.results.append(result)
        self.write_table(plot=False)

    # ------------------------------------------------------------------------------------------ reports

    def header(self) -> dict[str, Any]:
        args = self.args
        return {
            "command": self.command,
            "teacher": {"spec": self.teacher_spec, "id": self.teacher_id, "kind": self.teacher_description},
            "checkpoints": {role: str(path) for role, path in self.settings.checkpoints.items()},
            "checkpoint_teacher_ids": {role: m["config"].get("teacher_id", "") for role, m in self.meta.items()},
            "in_distribution": {"name": self.id_split.name, "spec": self.id_split.spec},
            "shifts": [{"name": s.name, "spec": s.spec} for s in self.shifts],
            "scans_per_split": args.scans,
            "max_points": args.max_points,
            "subsample": args.subsample,
            "seed": args.seed,
            "adapt": {name: vars(cfg) for name, cfg in self.adapt.items()},
            "rows": [{"name": r.name, "label": r.label, "checkpoint": r.checkpoint, "strategy": r.adapt,
                      "adapt": vars(r.config) if r.config is not None else None} for r in self.rows],
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "splits": [{"name": s.name, "generation_s": s.generation_s, **s.notes} for s in self.splits],
            "elapsed_s": time.time() - self.started,
        }

    def _class_names(self) -> list[str]:
        meta = self.meta.get(JOINT) or next(iter(self.meta.values()), None)
        if meta is None:
            return []
        label_set = meta["config"].get("label_set", "")
        return meta["class_names"] or (list(LABEL_SETS[label_set].class_names) if label_set in LABEL_SETS else [])

    def write_table(self, plot: bool = True) -> None:
        shifts = [s.name for s in self.shifts]
        rows = table_rows(self.results, self.id_split.name, shifts, labels={r.name: r.label for r in self.rows})
        names = self._class_names()
        write_json(self.out / "results.json", {
            **self.header(), "table": rows, "results": [result_record(r, names) for r in self.results]})
        text = [f"# Evaluation: {len(self.rows)} strategies x {1 + len(shifts)} splits\n",
                f"Teacher: {self.teacher_description}\n",
                f"Splits: in-distribution `{self.id_split.spec}`; shifts "
                + ", ".join(f"`{s.spec}`" for s in self.shifts)
                + "; " + scans_per_split({s.name: len(s.scans) for s in self.splits},
                                         {s.name: int(s.notes.get("skipped", 0)) for s in self.splits})
                + (f", capped to {self.args.max_points} points ({self.args.subsample})" if self.args.max_points else "")
                + f", seed {self.args.seed}.\n",
                *self._cross_set_notes(),
                "mIoU in %; gains relative to source-only (OOD: mean of per-shift gains); seconds per scan include "
                "a cold teacher forward for the distilling strategies"
                + (" (here read from the feature cache instead)" if self.args.cache else "") + ".\n",
                markdown_table(rows, self.id_split.name, shifts),
                coverage_line(self.results, [self.id_split.name, *shifts]),
                f"\nCommand: `{self.command}`\n"]
        (self.out / "table.md").write_text("\n".join(text))
        if plot and self.results:
            plot_bars(rows, self.id_split.name, shifts, self.out / "miou_bars.png",
                      self.args.title or f"mIoU per split (teacher: {self.teacher_description.split(':')[0]})")

    def _cross_set_notes(self) -> list[str]:
        """A line per split labelled in another label set than the checkpoint: which classes it is scored on."""
        meta = self.meta.get(JOINT) or next(iter(self.meta.values()), None)
        model_set = meta["config"].get("label_set", "") if meta is not None else ""
        notes = []
        for split in self.splits:
            if split.label_set and model_set and split.label_set != model_set:
                names = common_classes(split.label_set, model_set).names
                notes.append(f"Split `{split.name}` is labelled in {split.label_set}, the model in {model_set}: "
                             f"scored on the {len(names)} classes both share ({', '.join(names)}).\n")
        return notes

    def write_curve(self) -> None:
        write_json(self.out / "steps_curve.json", {
            **self.header(), "scans_per_split": self.args.curve_scans, "curve": self.curve.miou,
            "kd_loss": self.curve.kd_loss, "kd_loss_ratio_unadapted": self.curve.kd_ratio_at_zero(self.id_split.name)})
        scans = {s.name: min(self.args.curve_scans, len(s.scans)) for s in self.splits if s.name in self.curve.miou}
        plot_curve(self.curve.miou, self.out / "steps_curve.png",
                   self.args.title or f"TTT-KD steps vs mIoU ({scans_per_split(scans)}, lr "
                                      f"{self.adapt['ttt_kd'].lr:g}; teacher: "
                                      f"{self.teacher_description.split(':')[0]})")

    def write_online(self) -> None:
        write_json(self.out / "online.json", {**self.header(), "online": self.online})
        cfg = self.adapt["ttt_kd_online"]
        plot_online(self.online, self.out / "online.png",
                    self.args.title or f"TTT-KD-O over {self.online['scans']} {self.online['split']} scans "
                                       f"({cfg.steps} step/scan, lr {cfg.lr:g})")


def write_pooled(runs: Sequence[Path], out: Path, command: str) -> int:
    """Pool earlier runs into out/table.md and out/results.json (evaluation/pool.py)."""
    records = [read_results(path) for path in runs]
    results, header = pool_runs(records)
    first = records[0]
    id_split = first["in_distribution"]["name"]
    shifts = [s["name"] for s in first["shifts"]]
    labels = {row["strategy"]: row["label"] for row in first.get("table", [])}
    rows = table_rows(results, id_split, shifts, labels=labels)
    write_json(out / "results.json", {"command": command, **header, "table": rows,
                                      "results": [result_record(r, []) for r in results]})
    seeds = ", ".join(str(r["seed"]) for r in header["pooled_from"])
    text = [f"# Evaluation pooled over {len(records)} runs (seeds {seeds})\n",
            f"Teacher: {header['teacher']['kind']}\n",
            f"Splits: in-distribution `{first['in_distribution']['spec']}`; shifts "
            + ", ".join(f"`{s['spec']}`" for s in first["shifts"])
            + f"; {scans_per_split(split_scan_counts(results))} in all.\n",
            "mIoU in % over the pooled confusion matrices; gains relative to source-only.\n",
            markdown_table(rows, id_split, shifts),
            "\nRuns:\n", *(f"- `{r['command']}`" for r in header["pooled_from"]),
            f"\nPooled with: `{command}`\n"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(text))
    plot_bars(rows, id_split, shifts, out / "miou_bars.png",
              f"mIoU per split, {len(records)} seeds pooled (teacher: {header['teacher']['kind'].split(':')[0]})")
    print((out / "table.md").read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pool:
        try:
            return write_pooled(args.pool, args.out, "ttt_kd_evaluate " + " ".join(shlex.quote(a) for a in argv))
        except ValueError as err:
            parser.error(str(err))
    try:
        _validate(args)
        evaluation = Evaluation(args, argv)
        evaluation.load_splits()
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    return evaluation.run()


if __name__ == "__main__":
    sys.exit(main())
