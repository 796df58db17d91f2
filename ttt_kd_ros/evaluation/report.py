"""Reports of an evaluation: the paper-style table (markdown), everything as JSON, and PNG plots.

Numbers are kept as fractions in the JSON and shown as percentages in the
table. Relative gains follow the paper: (mIoU - mIoU_source_only) /
mIoU_source_only in %, in distribution on the in-distribution split and out
of distribution as the mean of the per-shift relative gains (the paper
averages its per-data-set gains the same way).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ttt_kd_ros.evaluation.evaluator import EVAL_STRATEGIES, OnlineStream, SplitResult, window_miou


def relative_gain(value: float, baseline: float) -> float:
    """100 * (value - baseline) / baseline; NaN when either is NaN or the baseline is not positive."""
    if not (math.isfinite(value) and math.isfinite(baseline)) or baseline <= 0:
        return float("nan")
    return 100.0 * (value - baseline) / baseline


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def table_rows(results: Sequence[SplitResult], id_split: str, shifts: Sequence[str],
               baseline: str = "source_only", labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One dict per strategy (in run order): mIoU per split, OOD average, gains over ``baseline``, s/scan.

    Two OOD gains, because they answer different questions: the gain of the OOD average (one number per
    method, dominated by the hardest shift's absolute change) and the mean of per-shift relative gains (every
    shift weighs the same). ``labels``: row name -> label for rows outside EVAL_STRATEGIES.
    """
    labels = labels or {}
    by_key = {(r.strategy, r.split): r for r in results}
    order = list(dict.fromkeys(r.strategy for r in results))

    def miou(strategy: str, split: str) -> float:
        r = by_key.get((strategy, split))
        return r.miou if r is not None else float("nan")

    rows = []
    for name in order:
        shift_miou = {s: miou(name, s) for s in shifts}
        base_shift = {s: miou(baseline, s) for s in shifts}
        ood = _nanmean(list(shift_miou.values())) if shifts else float("nan")
        seconds = [sec for r in results if r.strategy == name for sec in r.seconds]
        rows.append({
            "strategy": name,
            "label": labels.get(name) or (EVAL_STRATEGIES[name].label if name in EVAL_STRATEGIES else name),
            "in_distribution_miou": miou(name, id_split),
            "shift_miou": shift_miou,
            "ood_average_miou": ood,
            "gain_in_distribution_pct": relative_gain(miou(name, id_split), miou(baseline, id_split)),
            "gain_per_shift_pct": {s: relative_gain(shift_miou[s], base_shift[s]) for s in shifts},
            "gain_ood_pct": _nanmean([relative_gain(shift_miou[s], base_shift[s]) for s in shifts]),
            "gain_ood_of_average_pct": relative_gain(ood, _nanmean(list(base_shift.values()))),
            "seconds_per_scan": float(np.mean(seconds)) if seconds else float("nan"),
        })
    return rows


def _pct(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{100.0 * value:.1f}"


def _gain(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:+.1f} %"


def markdown_table(rows: Sequence[dict[str, Any]], id_split: str, shifts: Sequence[str]) -> str:
    """The paper-style table: rows strategies; mIoU in %, relative gains over source-only, seconds per scan."""
    head = ["method", f"in-dist. ({id_split})", *shifts, "OOD avg", "gain in-dist.", "gain of OOD avg",
            "mean per-shift gain", "s / scan"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [row["label"], _pct(row["in_distribution_miou"]), *(_pct(row["shift_miou"][s]) for s in shifts),
                 _pct(row["ood_average_miou"]), _gain(row["gain_in_distribution_pct"]),
                 _gain(row["gain_ood_of_average_pct"]), _gain(row["gain_ood_pct"]),
                 "–" if not math.isfinite(row["seconds_per_scan"]) else f"{row['seconds_per_scan']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def coverage_line(results: Sequence[SplitResult], splits: Sequence[str]) -> str:
    """Per split, the mean share of points some camera sees (from the rows that project: a teacher was used)."""
    cells = []
    for split in splits:
        shares = [c for r in results if r.split == split and r.coverage and any(r.coverage) for c in r.coverage]
        cells.append(f"{split} {100.0 * float(np.mean(shares)):.0f} %" if shares else f"{split} –")
    return "Coverage (points some camera sees, the points fusion can reach): " + ", ".join(cells) + ".\n"


def scans_per_split(counts: dict[str, int], skipped: dict[str, int] | None = None) -> str:
    """The scans each split was scored on, as the table says it: "8 scans each" when every split has that many,
    else each split's own count; ``skipped``: scans a split could not load, named beside its count.

    The count asked for (``--scans``) is only an upper bound: a data set may hold fewer, and scans that fail to
    load are left out, so a table must never claim the asked-for number for a split that had one scan.
    """
    skipped = {name: n for name, n in (skipped or {}).items() if n}

    def plural(n: int) -> str:
        return f"{n} scan" + ("" if n == 1 else "s")

    if len(set(counts.values())) == 1 and not skipped:
        return f"{plural(next(iter(counts.values())))} each"
    return "scans per split: " + ", ".join(
        f"{name} {counts[name]}" + (f" ({skipped[name]} could not be loaded)" if name in skipped else "")
        for name in counts)


def split_scan_counts(results: Sequence[SplitResult]) -> dict[str, int]:
    """Split name -> scans its results were scored on (the first row's per-scan list; every row sees the same)."""
    counts: dict[str, int] = {}
    for result in results:
        counts.setdefault(result.split, len(result.scan_miou))
    return counts


def result_record(result: SplitResult, class_names: Sequence[str]) -> dict[str, Any]:
    """Everything about one (strategy, split) pair, JSON-ready."""
    iou = result.confusion.iou()
    class_names = result.class_names or class_names
    names = list(class_names) if len(class_names) == len(iou) else [str(i) for i in range(len(iou))]
    return {
        "strategy": result.strategy,
        "split": result.split,
        "miou": result.miou,
        "accuracy": result.confusion.accuracy(),
        "per_class_iou": dict(zip(names, (float(v) for v in iou), strict=True)),
        "scan_miou": result.scan_miou,
        "seconds_per_scan": result.seconds_per_scan,
        "seconds": result.seconds,
        "steps_run": result.steps_run,
        "coverage": result.coverage,
        "fused_share": result.fused,
        "skip_reasons": dict(result.skips),
        "drift_resets": result.resets,
        "stage_seconds_per_scan": result.stage_s,
        "confusion": result.confusion.counts.tolist(),
    }


def online_summary(stream: OnlineStream, window: int, collapse_ratio: float = 0.9) -> dict[str, Any]:
    """Sliding-window mIoU of TTT-KD-O vs the frozen joint model, resets, and a collapse verdict.

    Collapse: the online model's last window falls below ``collapse_ratio`` x
    the frozen model's mIoU on the same window (a drifting online model ends
    worse than not adapting at all).
    """
    online = window_miou(stream.counts_online, window)
    frozen = window_miou(stream.counts_none, window)
    overall_online = window_miou(stream.counts_online, len(stream.counts_online))[-1] if online else float("nan")
    overall_frozen = window_miou(stream.counts_none, len(stream.counts_none))[-1] if frozen else float("nan")
    last_online = online[-1] if online else float("nan")
    last_frozen = frozen[-1] if frozen else float("nan")
    ratios = [a / b for a, b in zip(online, frozen, strict=True) if math.isfinite(a) and b > 0]
    collapsed = bool(math.isfinite(last_online) and math.isfinite(last_frozen)
                     and last_online < collapse_ratio * last_frozen)
    return {
        "split": stream.split,
        "scans": len(stream.counts_online),
        "window": window,
        "window_miou_online": online,
        "window_miou_none": frozen,
        "miou_online": overall_online,
        "miou_none": overall_frozen,
        "first_window_online": online[0] if online else float("nan"),
        "last_window_online": last_online,
        "last_window_none": last_frozen,
        "min_window_ratio": min(ratios) if ratios else float("nan"),
        "resets": stream.resets_after_scan[-1] if stream.resets_after_scan else 0,
        "resets_after_scan": stream.resets_after_scan,
        "kd_loss_before": stream.kd_loss_before,
        "seconds_per_scan_online": float(np.mean(stream.seconds_online)) if stream.seconds_online else float("nan"),
        "collapse_criterion": f"last window mIoU < {collapse_ratio} x the unadapted joint model's",
        "collapsed": collapsed,
    }


def _clean(value: Any) -> Any:
    """JSON has no NaN: NaN/inf become null; numpy scalars become Python numbers; int keys become strings."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(payload), indent=1) + "\n")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(rows: Sequence[dict[str, Any]], id_split: str, shifts: Sequence[str], path: Path,
              title: str) -> Path:
    """Grouped bars: mIoU (%) per split and OOD average, one bar per strategy."""
    plt = _pyplot()
    groups = [id_split, *shifts, "OOD avg"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(groups) + 2), 3.6), dpi=100)
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(groups))
    for i, row in enumerate(rows):
        values = [row["in_distribution_miou"], *(row["shift_miou"][s] for s in shifts), row["ood_average_miou"]]
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, [100 * v if math.isfinite(v) else 0 for v in values],
               width, label=row["label"])
    ax.set_xticks(x, groups)
    ax.set_ylabel("mIoU (%)")
    return _finish(plt, fig, ax, path, title, legend_columns=2, grid_axis="y")


def _finish(plt: Any, fig: Any, ax: Any, path: Path, title: str, legend_columns: int = 1,
            grid_axis: str = "both") -> Path:
    """The same title, legend, grid and file handling for every figure, so the reports look alike."""
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=legend_columns)
    ax.grid(axis=grid_axis, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_curve(curve: dict[str, dict[int, float]], path: Path, title: str) -> Path:
    """mIoU (%) against TTT-KD steps per scan, one line per split and the mean."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    for name, points in curve.items():
        steps = sorted(int(k) for k in points)
        ax.plot(steps, [100 * points[k] for k in steps], marker="o", lw=2.5 if name == "mean" else 1.2,
                color="black" if name == "mean" else None, label=name)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("TTT-KD steps per scan")
    ax.set_ylabel("mIoU (%)")
    return _finish(plt, fig, ax, path, title)


def plot_online(summary: dict[str, Any], path: Path, title: str) -> Path:
    """Sliding-window mIoU over the stream for TTT-KD-O and the frozen model; drift-guard restores marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4), dpi=100)
    window = summary["window"]
    online, frozen = summary["window_miou_online"], summary["window_miou_none"]
    ends = np.arange(len(online)) + min(window, summary["scans"])
    ax.plot(ends, [100 * v for v in online], label="TTT-KD-O (online)")
    ax.plot(ends, [100 * v for v in frozen], label="joint-train, no adaptation", alpha=0.8)
    resets = summary["resets_after_scan"]
    marks = [i + 1 for i in range(len(resets)) if resets[i] > (resets[i - 1] if i else 0)]
    for m in marks:
        ax.axvline(m, color="red", alpha=0.3, lw=0.8)
    ax.set_xlabel(f"scans seen (window of {window}); red: drift-guard restores ({len(marks)})")
    ax.set_ylabel("window mIoU (%)")
    return _finish(plt, fig, ax, path, title)
