"""ttt_kd_evaluate streams a split's scans: never all in memory, the same scans on every pass, bars and true counts."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from ttt_kd_ros.checkpoint_format import save_checkpoint
from ttt_kd_ros.data.sources import DataSource, SyntheticSource
from ttt_kd_ros.data.synthetic.domains import parse_domain
from ttt_kd_ros.evaluation import splits as splits_module
from ttt_kd_ros.evaluation.evaluator import EVAL_STRATEGIES, RunSettings, run_curve, run_table
from ttt_kd_ros.evaluation.splits import generate_split, parse_split
from ttt_kd_ros.model import TTTKDNet, net_config
from ttt_kd_ros.scan import Scan
from ttt_kd_ros.teachers.weights import tiny_teacher
from ttt_kd_ros.tools.evaluate import main

SMALL = ("sensor.num_views=1,sensor.num_cameras=1,sensor.image_width_px=40,sensor.image_height_px=30,"
         "sensor.max_points=300")
ID_SPEC = f"src=source:{SMALL}"
BROKEN = 2  # the scan index the counting source cannot load


class CountingSource(DataSource):
    """Small synthetic scans that count how many of them are alive (weakref) each time one is loaded."""

    kind = "synthetic"
    label_set = "synthetic_indoor"

    def __init__(self, num_scans: int) -> None:
        super().__init__("counting")
        self.world = SyntheticSource(parse_domain(f"source:{SMALL}"), num_scans, seed=4, spec="world", keep=0)
        self.live = 0
        self.most_live = 0
        self.loads = 0

    def __len__(self) -> int:
        return len(self.world)

    def load(self, index: int) -> Scan:
        if index == BROKEN:
            raise ValueError(f"scan {index}: unreadable")
        scan = self.world[index]
        self.loads += 1
        self.live += 1
        weakref.finalize(scan, self._freed)
        gc.collect()  # what is only held by a reference cycle does not count as alive
        self.most_live = max(self.most_live, self.live)
        return scan

    def _freed(self) -> None:
        self.live -= 1

    def item_name(self, index: int) -> str:
        return f"counting scan {index}"


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> CountingSource:
    """The source every ``NAME=synthetic:...`` split opens in this test."""
    source = CountingSource(6)
    monkeypatch.setattr(splits_module, "open_source", lambda text, **defaults: source)
    return source


@pytest.fixture(scope="module")
def joint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = net_config("ttt_kd_small", teacher_dim=32, teacher_resolution=(28, 28), kd_hidden=8,
                        encoder_planes=(4, 8), encoder_blocks=(0, 1), decoder_planes=(8,), decoder_blocks=(1,),
                        voxel_size_m=0.1)
    return save_checkpoint(TTTKDNet(config), tmp_path_factory.mktemp("ckpt") / "joint.safetensors")


def test_generate_split_keeps_no_scan_counts_the_unloadable_and_reads_the_same_again(
        counting: CountingSource) -> None:
    split = generate_split(parse_split("c=synthetic:any"), 6, base_seed=4)
    gc.collect()
    assert counting.live == 0 and counting.most_live <= 2
    assert len(split.scans) == 5 and split.notes["skipped"] == 1 and split.notes["scans"] == 5
    assert list(split.notes["skipped_files"]) == [f"counting scan {BROKEN}"]
    split = generate_split(parse_split("c=synthetic:any"), 6, base_seed=4, max_points=100, subsample="crop")
    first = [(s.points_xyz_m.copy(), s.labels.copy(), s.stamp_ns) for s in split.scans]
    again = [(s.points_xyz_m, s.labels, s.stamp_ns) for s in split.scans]
    for (p1, l1, t1), (p2, l2, t2) in zip(first, again, strict=True):
        assert np.array_equal(p1, p2) and np.array_equal(l1, l2) and t1 == t2 and len(p1) == 100
    assert [s.stamp_ns for s in split.scans[1:3]] == [100_000_000, 300_000_000]  # scan 2 did not load


def test_run_table_and_curve_hold_one_scan_at_a_time(counting: CountingSource, joint: Path) -> None:
    split = generate_split(parse_split("c=synthetic:any"), 6, base_seed=4)
    loads_to_open = counting.loads
    settings = RunSettings({"joint": joint}, tiny_teacher(resolution=(28, 28)), {})
    rows = [EVAL_STRATEGIES["joint_train"], EVAL_STRATEGIES["ttt_kd"]]
    results = run_table(settings, rows, [split])
    assert [len(r.scan_miou) for r in results] == [5, 5]
    assert counting.loads - loads_to_open == 5  # each scan read once for every row together
    run_curve(settings, [split], [0, 1], max_scans=3)
    gc.collect()
    assert counting.most_live <= 2 and counting.live == 0


def _args(joint: Path, out: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--checkpoint", str(joint), "--teacher", "tiny", "--strategies", "joint_train",
            "--in-distribution", ID_SPEC, "--curve-scans", "0", *extra]


def test_main_shows_a_bar_per_split_unless_told_not_to(joint: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(joint, tmp_path / "bars", "--scans", "2", "--shift", f"off=office:{SMALL}")) == 0
    err = capsys.readouterr().err
    for text in ("opening split src", "opening split off", "src: 1 rows", "off: 1 rows", "2/2"):
        assert text in err
    assert main(_args(joint, tmp_path / "quiet", "--scans", "2", "--no-progress")) == 0
    assert "src: 1 rows" not in capsys.readouterr().err


def test_table_says_how_many_scans_each_split_really_has(joint: Path, tmp_path: Path) -> None:
    out = tmp_path / "counts"
    one = f"one=synthetic:source:{SMALL}?scans=1"
    assert main(_args(joint, out, "--scans", "3", "--shift", one, "-q")) == 0
    table = (out / "table.md").read_text()
    assert "3 scans each" not in table and "scans per split: src 3, one 1" in table
    same = tmp_path / "same"
    assert main(_args(joint, same, "--scans", "2", "-q")) == 0
    assert "; 2 scans each" in (same / "table.md").read_text()
