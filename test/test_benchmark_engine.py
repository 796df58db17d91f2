"""The engine benchmark writes one JSON line per (steps, points, cameras) row and a table from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ttt_kd_ros.tools.benchmark_engine import main, markdown_from_json


def test_benchmark_rows_as_json_lines_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "engine.jsonl"
    assert main(["--points", "1500", "--cameras", "1", "--steps", "1", "2", "--teacher", "tiny", "--device", "cpu",
                 "--reps", "1", "--warmup", "0", "--json", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["steps"], r["points"], r["cameras"], r["backend"], r["amp"]) for r in rows] == [
        (1, 1500, 1, "torch", False), (2, 1500, 1, "torch", False)]
    assert all(r["stats_s"]["ttt_step"] > 0 and r["stats_s"]["steps"] == r["steps"] for r in rows)
    table = markdown_from_json(out)
    assert table.count("| cpu | torch | off | 1k | 1 |") == 2
    capsys.readouterr()
    assert main(["--table", str(out)]) == 0
    assert capsys.readouterr().out == table
