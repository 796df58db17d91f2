"""A replay report claims a ground truth only when the bag has labels it was scored on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ttt_kd_ros.data.synthetic import SyntheticDataset
from ttt_kd_ros.replay.bag_writer import ScanBagWriter
from ttt_kd_ros.replay.report import FrameRecord, ReplayReport, StrategyRun
from ttt_kd_ros.tools import make_bag, replay

pytest.importorskip("rosbags.rosbag2")

PERIOD_NS = 500_000_000


@pytest.fixture(scope="module")
def unlabeled_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small lidar scans written without labels (what a robot records)."""
    out = tmp_path_factory.mktemp("unlabeled") / "bag"
    rng = np.random.default_rng(0)
    with ScanBagWriter(out, storage="mcap") as writer:
        for k, scan in enumerate(SyntheticDataset("lidar", 2, seed=5)):
            scan = make_bag.subsample(scan, 800, rng)
            scan.labels, scan.label_set = None, ""
            writer.write_scan(scan, 1_700_000_000_000_000_000 + k * PERIOD_NS)
    return out


def test_inprocess_replay_of_an_unlabeled_bag_reports_no_ground_truth(unlabeled_bag: Path, tmp_path: Path) -> None:
    report, _ = replay.run_replay(unlabeled_bag, mode="inprocess", strategies=["none"], out=tmp_path,
                                  overrides={"checkpoint": "", "teacher": "tiny", "device": "cpu"}, plots=False)
    assert report.label_set == "" and not report.scored and not report.bag_labelled
    summary = report.summaries()[0]
    assert summary["frames_out"] == 2 and "miou" not in summary
    markdown = (tmp_path / "report.md").read_text()
    assert "no labels in the bag" in markdown and "mIoU %" not in markdown
    assert "mIoU %" not in report.table()
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["label_set"] == "" and written["scored"] is False and written["runs"][0]["confusion"] is None


def _report(label_set: str, bag_labelled: bool) -> ReplayReport:
    frames = [FrameRecord(i, i * 100, 10, sent_s=0.1 * i, done_s=0.1 * i + 0.05) for i in range(3)]
    return ReplayReport("b", "node", "rate x1", "/c", ["cam"], 10.0, label_set,
                        runs=[StrategyRun("none", frames, wall_s=1.0)], bag_labelled=bag_labelled)


def test_report_wording_and_miou_column_follow_what_was_scored() -> None:
    scored = _report("synthetic_indoor", bag_labelled=True)
    assert scored.table_rows()[0][-1] == "mIoU %" and "ground truth: the bag's labels (synthetic_indoor)" in \
        scored.to_markdown()
    unscored = _report("", bag_labelled=True)  # labels of another set than the model's
    assert "mIoU %" not in unscored.table() and "not scored" in unscored.to_markdown()
    unlabeled = _report("", bag_labelled=False)
    assert "mIoU %" not in unlabeled.to_markdown() and "no labels in the bag" in unlabeled.to_markdown()
