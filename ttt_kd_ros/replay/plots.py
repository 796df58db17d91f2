"""PNG plots of a replay: latency over the run, mIoU per strategy, per-stage cost.

matplotlib is switched to its file-only Agg backend inside the functions (not
at import), so importing this module never touches a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ttt_kd_ros.replay.report import ReplayReport


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(report: ReplayReport, path: Path) -> Path:
    """End-to-end latency of every answered frame against the cloud's time in the bag, one line per strategy."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    t0 = min((f.stamp_ns for run in report.runs for f in run.frames), default=0)
    for run in report.runs:
        answered = [f for f in run.frames if f.done_s is not None]
        dropped = [f for f in run.frames if f.done_s is None]
        line = ax.plot([(f.stamp_ns - t0) * 1e-9 for f in answered], [1000 * f.latency_s for f in answered],
                       marker="o", markersize=3, linewidth=1, label=f"{run.strategy} ({len(dropped)} dropped)")[0]
        if dropped:
            ax.plot([(f.stamp_ns - t0) * 1e-9 for f in dropped], [0.0] * len(dropped), linestyle="none", marker="x",
                    color=line.get_color())
    if report.sensor_rate_hz:
        ax.axhline(1000.0 / report.sensor_rate_hz, color="grey", linestyle="--", linewidth=1,
                   label=f"sensor period ({1000.0 / report.sensor_rate_hz:.0f} ms)")
    ax.set_xlabel("cloud time in the bag (s)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title(f"{report.mode} replay, {report.pacing}")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_miou(report: ReplayReport, path: Path) -> Path | None:
    """mIoU (%) per strategy as bars; None when no run was scored."""
    scored = [(s["strategy"], 100.0 * s["miou"]) for s in report.summaries() if "miou" in s]
    if not scored:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.4), dpi=110)
    bars = ax.bar([name for name, _ in scored], [value for _, value in scored], color="tab:blue")
    for bar, (_, value) in zip(bars, scored, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.1f}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel(f"mIoU (%), {report.label_set}")
    ax.set_title("mIoU per strategy")
    ax.set_ylim(0, max(100.0, max(v for _, v in scored) * 1.15))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_stages(report: ReplayReport, path: Path) -> Path | None:
    """Median milliseconds per stage, stacked per strategy; None when no stage timings exist."""
    summaries = [s for s in report.summaries() if s["stage_ms"]]
    if not summaries:
        return None
    stages = sorted({stage for s in summaries for stage in s["stage_ms"] if stage != "total"})
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    colours = plt.get_cmap("tab20").colors
    bottoms = [0.0] * len(summaries)
    for i, stage in enumerate(stages):
        values = [(s["stage_ms"].get(stage) or {}).get("p50") or 0.0 for s in summaries]
        ax.bar([s["strategy"] for s in summaries], values, bottom=bottoms, label=stage, color=colours[i % 20],
               width=0.5)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax.set_ylabel("median ms per scan")
    ax.set_title("cost per stage" + (" (node diagnostics)" if report.mode == "node" else ""))
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(report: ReplayReport, out_dir: Path) -> list[Path]:
    """Every plot that has data, as PNGs in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = [plot_latency(report, out_dir / "latency.png"), plot_miou(report, out_dir / "miou.png"),
            plot_stages(report, out_dir / "stages.png")]
    return [p for p in made if p is not None]
