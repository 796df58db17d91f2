"""Pool evaluation runs made with different seeds (or run as separate jobs) into one table.

The paper-style mIoU is over a split's accumulated confusion matrix, so two
runs of the same rows and splits on different scan seeds pool exactly by
adding their confusion matrices: the pooled table is what one run over all
their scans would print, while the runs themselves can go in parallel
background jobs. Runs must agree on rows, split names, checkpoints and teacher;
anything else is a ValueError naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ttt_kd_ros.evaluation.evaluator import SplitResult
from ttt_kd_ros.metrics import ConfusionMatrix

MUST_AGREE = ("checkpoints", "teacher", "in_distribution", "shifts", "adapt", "rows")


def read_results(path: Path) -> dict[str, Any]:
    """A results.json written by ttt_kd_evaluate (a run folder or the file itself)."""
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"{file}: no results.json (run ttt_kd_evaluate with --out there first)")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None
    if "results" not in data:
        raise ValueError(f"{file}: no 'results' field; is it a ttt_kd_evaluate results.json?")
    data["_file"] = str(file)
    return data


def pool_runs(runs: Sequence[dict[str, Any]]) -> tuple[list[SplitResult], dict[str, Any]]:
    """Sum the confusion matrices of every (row, split) over the runs; returns the pooled results and a header."""
    if not runs:
        raise ValueError("pool: no runs given")
    first = runs[0]
    for run in runs[1:]:
        for key in MUST_AGREE:
            if json.dumps(run.get(key), sort_keys=True) != json.dumps(first.get(key), sort_keys=True):
                raise ValueError(f"pool: {run['_file']} differs from {first['_file']} in {key!r}; only runs of the "
                                 "same rows, splits, checkpoints and teacher pool")
    keys = [(r["strategy"], r["split"]) for r in first["results"]]
    pooled: dict[tuple[str, str], SplitResult] = {}
    for run in runs:
        found = {(r["strategy"], r["split"]): r for r in run["results"]}
        if set(found) != set(keys):
            raise ValueError(f"pool: {run['_file']} has rows x splits {sorted(found)}, expected {sorted(keys)}")
        for key in keys:
            record = found[key]
            counts = np.asarray(record["confusion"], dtype=np.int64)
            result = pooled.get(key)
            if result is None:
                result = pooled[key] = SplitResult(key[0], key[1], ConfusionMatrix(counts.shape[0]))
            result.confusion.counts += counts
            result.scan_miou += list(record["scan_miou"])
            result.seconds += list(record["seconds"])
            result.steps_run += list(record["steps_run"])
    header = {key: first.get(key) for key in MUST_AGREE}
    header["pooled_from"] = [{"file": run["_file"], "seed": run.get("seed"), "scans_per_split": run.get(
        "scans_per_split"), "command": run.get("command")} for run in runs]
    header["scans_per_split"] = sum(int(run.get("scans_per_split") or 0) for run in runs)
    return [pooled[key] for key in keys], header


__all__ = ["pool_runs", "read_results"]
