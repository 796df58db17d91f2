"""What a replay measured, per frame and per strategy, and how it is written (JSON, markdown, console table).

The books must balance: every cloud that went in is either answered or
counted as dropped, ``frames_in == frames_out + dropped``. In node mode the
dropped frames are split by where they went: the node's latest-wins slot
replaced them (``dropped_by_node``), the node refused them
(``skipped_by_node``: bad cloud, stamp checks), its worker failed on them
(``failed_in_node``), or they never came back before the end-of-run timeout
(``lost``, which includes anything DDS lost on the way in or out and clouds
the synchroniser never paired with images).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ttt_kd_ros.labels import LABEL_SETS
from ttt_kd_ros.metrics import ConfusionMatrix


@dataclass
class FrameRecord:
    """One cloud of the bag and what became of it in one run."""

    index: int
    stamp_ns: int
    num_points: int
    sent_s: float  # run clock (s) when the cloud went out (node) or segment() started (inprocess)
    done_s: float | None = None  # run clock when its labels came back; None: dropped
    stages_s: dict[str, float] = field(default_factory=dict)  # Prediction.timings_s (inprocess)
    adapted: bool | None = None
    steps_run: int | None = None
    skip_reason: str = ""
    kd_loss_before: float | None = None
    kd_loss_after: float | None = None
    miou: float | None = None  # of this frame alone, when the cloud carries labels

    @property
    def latency_s(self) -> float | None:
        return None if self.done_s is None else self.done_s - self.sent_s


@dataclass
class StrategyRun:
    """All frames of the bag through one adaptation strategy."""

    strategy: str
    frames: list[FrameRecord]
    wall_s: float
    confusion: ConfusionMatrix | None = None
    node_diagnostics: dict[str, str] = field(default_factory=dict)  # last /diagnostics values (node mode)
    node_log: str = ""  # path of the node's log file (node mode)
    notes: list[str] = field(default_factory=list)

    def summary(self, sensor_rate_hz: float | None) -> dict[str, Any]:
        """Counts, latency percentiles (ms), per-stage latency, rates, mIoU."""
        answered = [f for f in self.frames if f.done_s is not None]
        latencies = np.array([f.latency_s for f in answered], dtype=np.float64) * 1000.0
        done = sorted(f.done_s for f in answered)
        out: dict[str, Any] = {
            "strategy": self.strategy,
            "frames_in": len(self.frames),
            "frames_out": len(answered),
            "dropped": len(self.frames) - len(answered),
            "latency_ms": _percentiles(latencies),
            "stage_ms": self._stage_ms(),
            "achieved_rate_hz": (len(done) - 1) / (done[-1] - done[0]) if len(done) >= 2 and done[-1] > done[0]
            else None,
            "sensor_rate_hz": sensor_rate_hz,
            "wall_s": self.wall_s,
        }
        if self.node_diagnostics:
            books = node_books(self.node_diagnostics)
            out["node_received"] = books["received"]
            out["dropped_by_node"] = books["dropped"]
            out["skipped_by_node"] = books["refused"]
            out["failed_in_node"] = books["failed"]
            out["lost"] = out["dropped"] - books["dropped"] - books["refused"] - books["failed"]
            out["not_received_by_node"] = len(self.frames) - books["received"]
        adapted = [f.adapted for f in answered if f.adapted is not None]
        if adapted:
            out["adapted_fraction"] = sum(adapted) / len(adapted)
        elif "adapted_fraction" in self.node_diagnostics:
            out["adapted_fraction"] = _float(self.node_diagnostics["adapted_fraction"])
        reasons = sorted({f.skip_reason for f in answered if f.skip_reason})
        if reasons:
            out["skip_reasons"] = reasons
        for key in ("kd_loss_before", "kd_loss_after"):
            values = [getattr(f, key) for f in answered if getattr(f, key) is not None]
            if values:
                out[key] = float(np.mean(values))
            elif _float(self.node_diagnostics.get(key)) is not None:
                out[key] = _float(self.node_diagnostics[key])
        if self.confusion is not None and self.confusion.counts.sum() > 0:
            out["miou"] = self.confusion.miou()
            out["accuracy"] = self.confusion.accuracy()
            out["iou_per_class"] = [None if math.isnan(v) else float(v) for v in self.confusion.iou()]
        return out

    def _stage_ms(self) -> dict[str, dict[str, float | None]]:
        """Per-stage p50/p95 from the frames' own timings, else the node's window medians (p50 only)."""
        stages: dict[str, list[float]] = {}
        for frame in self.frames:
            for stage, seconds in frame.stages_s.items():
                stages.setdefault(stage, []).append(1000.0 * seconds)
        if stages:
            return {stage: _percentiles(np.array(values)) for stage, values in stages.items()}
        prefix = "latency_ms."
        return {key[len(prefix):]: {"p50": _float(value), "p95": None, "max": None}
                for key, value in self.node_diagnostics.items()
                if key.startswith(prefix) and key[len(prefix):] not in NOT_A_REPLAY_STAGE}




NOT_A_REPLAY_STAGE = ("pipeline",)
"""Node latency keys a replay does not report as stages: ``pipeline`` is the node's clock minus the cloud's
stamp, and a replayed cloud carries the recording's stamp (years old for KITTI), so it measured the bag's age.
The replay's own end-to-end latency (send to answer) is the report's latency_ms."""


def node_books(diagnostics: dict[str, str]) -> dict[str, int]:
    """The node's own account of the clouds it got: received, processed, dropped, refused, failed (worker).

    The node counts a worker failure as ``dropped.worker_error`` inside its
    ``dropped`` total; here it is split out so the four outcomes add up.
    """
    failed = _int(diagnostics.get("dropped.worker_error"))
    return {
        "received": _int(diagnostics.get("received")),
        "processed": _int(diagnostics.get("processed")),
        "dropped": _int(diagnostics.get("dropped")) - failed,
        "refused": _int(diagnostics.get("skipped")),
        "failed": failed,
    }


def _int(value: str | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def _float(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _percentiles(values_ms: np.ndarray) -> dict[str, float | None]:
    if values_ms.size == 0:
        return {"p50": None, "p95": None, "max": None}
    return {"p50": float(np.percentile(values_ms, 50)), "p95": float(np.percentile(values_ms, 95)),
            "max": float(values_ms.max())}


@dataclass
class ReplayReport:
    """A replay of one bag: where it came from, how it was paced, one StrategyRun per strategy."""

    bag: str
    mode: str  # node | inprocess
    pacing: str  # "rate x1" | "as fast as possible" | "back to back" (inprocess)
    cloud_topic: str
    cameras: list[str]
    sensor_rate_hz: float | None
    label_set: str  # the scores are in ("" when not scored: no labels in the bag, or another label set)
    runs: list[StrategyRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # model / teacher / steps used
    bag_labelled: bool = False  # the bag's clouds carry a label field (scored or not)

    @property
    def adaptation_possible(self) -> bool:
        return bool(self.cameras)

    @property
    def scored(self) -> bool:
        """mIoU was computed: the bag has labels the model's classes can be scored on."""
        return bool(self.label_set)

    def ground_truth(self) -> str:
        """What the report was scored against, in words: a report of an unlabeled bag must not claim one."""
        if self.scored:
            return f"ground truth: the bag's labels ({self.label_set})"
        if self.bag_labelled:
            return "ground truth: the bag has labels but they were not scored (see the notes): no mIoU"
        return "ground truth: none, no labels in the bag: no mIoU"

    def summaries(self) -> list[dict[str, Any]]:
        return [run.summary(self.sensor_rate_hz) for run in self.runs]

    def to_dict(self) -> dict[str, Any]:
        runs = []
        for run, summary in zip(self.runs, self.summaries(), strict=True):
            frames = []
            for frame in run.frames:
                item = asdict(frame)
                item["latency_s"] = frame.latency_s
                frames.append(item)
            runs.append({"summary": summary, "frames": frames, "notes": run.notes, "node_log": run.node_log,
                         "node_diagnostics": run.node_diagnostics,
                         "confusion": None if run.confusion is None else run.confusion.counts.tolist()})
        return {"bag": self.bag, "mode": self.mode, "pacing": self.pacing, "cloud_topic": self.cloud_topic,
                "cameras": self.cameras, "sensor_rate_hz": self.sensor_rate_hz, "label_set": self.label_set,
                "bag_labelled": self.bag_labelled, "scored": self.scored,
                "adaptation_possible": self.adaptation_possible, "notes": self.notes, "config": self.config,
                "runs": runs}

    def table_rows(self) -> list[tuple[str, ...]]:
        """Header + one row per strategy: counts, end-to-end latency, rates, adapted fraction, and mIoU (%) when
        the report is scored (no mIoU column for a bag without usable labels)."""
        rows = [("strategy", "in", "out", "dropped", "p50 ms", "p95 ms", "max ms", "rate Hz", "sensor Hz",
                 "adapted", *(("mIoU %",) if self.scored else ()))]
        for s in self.summaries():
            lat = s["latency_ms"]
            miou = (_fmt(None if "miou" not in s else 100.0 * s["miou"], 1),) if self.scored else ()
            rows.append((
                s["strategy"], str(s["frames_in"]), str(s["frames_out"]), str(s["dropped"]),
                _fmt(lat["p50"], 1), _fmt(lat["p95"], 1), _fmt(lat["max"], 1), _fmt(s["achieved_rate_hz"], 2),
                _fmt(s["sensor_rate_hz"], 2), _fmt(s.get("adapted_fraction"), 2), *miou,
            ))
        return rows

    def table(self) -> str:
        """Fixed-width summary table (what the console shows)."""
        rows = self.table_rows()
        header = rows[0]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths,
                                                                                                       strict=True)))
                 for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_markdown(self, plots: list[str] | None = None) -> str:
        lines = [f"# Replay of `{self.bag}`", "",
                 f"- mode: **{self.mode}**, pacing: {self.pacing}",
                 f"- cloud topic: `{self.cloud_topic}`; cameras: {', '.join(f'`{c}`' for c in self.cameras) or 'none'}",
                 f"- sensor rate: {_fmt(self.sensor_rate_hz, 2)} Hz; {self.ground_truth()}"]
        lines += [f"- {key}: `{value}`" for key, value in self.config.items()]
        if not self.adaptation_possible:
            lines.append("- **no camera in this bag: clouds were predicted without adaptation** (TTT-KD distils from "
                         "images)")
        lines += [f"- note: {note}" for note in self.notes]
        rows = self.table_rows()
        lines += ["", "## Summary", "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
        lines += ["", "Latency is end to end: " + (
            "from publishing the cloud to receiving ~/labeled_points (DDS both ways, conversion, the latest-wins "
            "wait, segmentation, encoding)." if self.mode == "node" else "Segmenter.segment() on a decoded Scan "
            "(pure model cost)."), ""]
        lines += ["## Stages (ms)", ""]
        for summary in self.summaries():
            stages = summary["stage_ms"]
            if not stages:
                continue
            source = "node diagnostics, median of the last scans" if self.mode == "node" else "per frame"
            lines.append(f"**{summary['strategy']}** ({source}): " + ", ".join(
                f"{stage} {_fmt(v['p50'], 1)}" + (f" (p95 {_fmt(v['p95'], 1)})" if v["p95"] is not None else "")
                for stage, v in sorted(stages.items())))
            lines.append("")
        for summary, run in zip(self.summaries(), self.runs, strict=True):
            extra = []
            if "dropped_by_node" in summary:
                extra.append(f"node received {summary['node_received']}, replaced in its latest-wins slot "
                             f"{summary['dropped_by_node']}, refused {summary['skipped_by_node']}, failed "
                             f"{summary['failed_in_node']}, lost {summary['lost']}")
            if summary.get("skip_reasons"):
                extra.append("not adapted because: " + "; ".join(summary["skip_reasons"]))
            if "kd_loss_before" in summary and "kd_loss_after" in summary:
                extra.append(f"KD loss {summary['kd_loss_before']:.4f} -> {summary['kd_loss_after']:.4f}")
            extra += run.notes
            if run.node_log:
                extra.append(f"node log: `{run.node_log}`")
            if extra:
                lines.append(f"- **{summary['strategy']}**: " + "; ".join(extra))
        if plots:
            lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path, plots: list[str] | None = None) -> tuple[Path, Path]:
        """report.json and report.md in ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        json_path, md_path = out_dir / "report.json", out_dir / "report.md"
        json_path.write_text(json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n")
        md_path.write_text(self.to_markdown(plots))
        return json_path, md_path


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"report: cannot write {type(value).__name__} as JSON")


def num_classes_of(label_set: str, fallback: int) -> int:
    """Classes of a known label set, else ``fallback`` (the model's)."""
    return LABEL_SETS[label_set].num_classes if label_set in LABEL_SETS else fallback
