"""The demo's pictures and its adaptation table: a few shifted scans, unadapted and adapted, through the Segmenter.

``ttt_kd_demo`` shows one case per shipped model (RGB-D and LiDAR) where
adaptation should fix something: the scans of a shifted split go through
``Segmenter.segment_steps`` (the node's path, continued step by step), so one
pass gives the unadapted labels (0 steps), the adapted ones and the mIoU after
every step count in between. Every number printed or drawn comes from this
run; nothing is stored in advance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ttt_kd_ros.demo.figures import ScanPanel, write_demo_figures
from ttt_kd_ros.evaluation.splits import generate_split, parse_split
from ttt_kd_ros.labels import LABEL_SETS
from ttt_kd_ros.metrics import ConfusionMatrix
from ttt_kd_ros.scan import Scan
from ttt_kd_ros.segmenter import Segmenter

UNADAPTED, ADAPTED = "unadapted", "adapted"


@dataclass(frozen=True)
class DemoCase:
    """One shipped model shown on one shift: the split spec is ``NAME=DOMAIN:overrides`` (evaluation/splits.py)."""

    sensor: str
    checkpoint: str
    split: str
    description: str
    top_max_z_m: float | None = None  # leave ceilings out of the bird's-eye pictures (heights in the cloud's frame)
    adapt: tuple[tuple[str, object], ...] = ()  # node parameters this model adapts with (e.g. adapt.bn_train)


@dataclass
class CaseResult:
    """Per step count, the mIoU (fraction) pooled over the case's scans; the panels of the pictures."""

    case: DemoCase
    curve: dict[int, float]
    panels: list[ScanPanel] = field(default_factory=list)
    seconds_per_scan: float = 0.0
    figures: list[Path] = field(default_factory=list)

    @property
    def unadapted(self) -> float:
        return self.curve[min(self.curve)]

    @property
    def adapted(self) -> float:
        return self.curve[max(self.curve)]


def case_scans(case: DemoCase, num_scans: int, seed: int, max_points: int) -> list[Scan]:
    """The shifted scans a case shows: generated from ``seed`` (rooms no training used), cropped like evaluation;
    a few, held in a list because the demo visits each several times."""
    split = generate_split(parse_split(case.split), num_scans, seed, max_points=max_points, subsample="crop")
    return list(split.scans)


def run_case(case: DemoCase, segmenter: Segmenter, scans: list[Scan], steps: list[int]) -> CaseResult:
    """Every scan through segment_steps(0, ..., max(steps)); the curve pools the confusion matrices per count."""
    if not scans:
        raise ValueError(f"demo case {case.split}: no scans")
    schedule = sorted({0, *steps})
    matrices = {k: ConfusionMatrix(segmenter.num_classes) for k in schedule}
    panels, started = [], time.perf_counter()
    for i, scan in enumerate(scans):
        predictions = segmenter.segment_steps(scan, schedule)
        for k, prediction in zip(schedule, predictions, strict=True):
            matrices[k].update(scan.labels, prediction.labels)
        panels.append(ScanPanel(f"{case.sensor}_{i}", scan, {
            UNADAPTED: predictions[0].labels, f"{ADAPTED} ({schedule[-1]} steps)": predictions[-1].labels}))
    curve = {k: matrices[k].miou() for k in schedule}
    return CaseResult(case, curve, panels, (time.perf_counter() - started) / len(scans))


def write_case_figures(result: CaseResult, out_dir: Path) -> list[Path]:
    """scan_<sensor>_<i>.png per scan and miou_over_steps.png in ``out_dir``."""
    label_set = LABEL_SETS[result.panels[0].scan.label_set]
    curve = {result.case.split.partition("=")[0]: sorted(result.curve.items())}
    result.figures = write_demo_figures(result.panels, label_set, out_dir, curve=curve,
                                        top_max_z_m=result.case.top_max_z_m)
    return result.figures


def table(results: list[CaseResult]) -> str:
    """A markdown table of the run: unadapted vs adapted mIoU per case, from the run's own confusion matrices."""
    lines = ["| model | shift | scans | mIoU unadapted | mIoU adapted | gain | s / scan (all step counts) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r.case.sensor} | {r.case.description} | {len(r.panels)} | {100 * r.unadapted:.1f} | "
                     f"{100 * r.adapted:.1f} | {100 * (r.adapted - r.unadapted):+.1f} | {r.seconds_per_scan:.1f} |")
    return "\n".join(lines)


__all__ = ["ADAPTED", "UNADAPTED", "CaseResult", "DemoCase", "case_scans", "run_case", "table",
           "write_case_figures"]
