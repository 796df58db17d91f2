"""Sweep TTT-KD adaptation settings on VALIDATION scans (a base seed the test table does not use).

Why a script and not ``ttt_kd_evaluate``: the sweep scores many AdaptConfigs on
the same few scans, so it generates the splits and caches the teacher once,
and scores every step count of a config in one pass (``run_curve``: k steps
taken cumulatively are the same updates as a k-step per-scan run). The
unadapted source-only and joint checkpoints are scored on the same scans as
the reference rows. Output: one JSON line per config and a summary table.

    .venv/bin/python scripts/sweep_ttt_kd.py --out runs/sweep_old.json --threads 1 \
        --grid "adam:1e-5,3e-5,1e-4:all,norm,norm_decoder:0"
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from ttt_kd_ros.adapt import AdaptConfig
from ttt_kd_ros.checkpoints import (
    default_checkpoint,
    default_teacher_resolution,
    source_only_checkpoint,
)
from ttt_kd_ros.evaluation.evaluator import JOINT, SOURCE_ONLY, RunSettings, run_curve
from ttt_kd_ros.evaluation.splits import DEFAULT_SHIFTS, IN_DISTRIBUTION, generate_split, parse_split
from ttt_kd_ros.teachers.resolve import resolve

VALIDATION_SEED = 777  # not the table's 20261121, nor training's 0 / 7919


def parse_grid(text: str) -> list[dict]:
    """"opt:lr,lr:params,params:bn[,bn][:kd_points,...];..." -> AdaptConfig field dicts (product per block)."""
    configs = []
    for block in text.split(";"):
        opt, lrs, params, bns, *rest = block.strip().split(":")
        points = rest[0].split(",") if rest else [None]
        for lr in lrs.split(","):
            for p in params.split(","):
                for bn in bns.split(","):
                    for kd in points:
                        fields = {"optimizer": opt, "lr": float(lr), "params": p, "bn_train": bn == "1"}
                        configs.append(fields if kd is None else {**fields, "kd_points_per_step": int(kd)})
    return configs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, default=default_checkpoint())
    p.add_argument("--source-only-checkpoint", type=Path, default=source_only_checkpoint())
    p.add_argument("--grid", default="adam:1e-5,3e-5,1e-4:all,norm,norm_decoder:0")
    p.add_argument("--steps", default="0,1,2,3,5")
    p.add_argument("--scans", type=int, default=4)
    p.add_argument("--max-points", type=int, default=16000)
    p.add_argument("--seed", type=int, default=VALIDATION_SEED)
    p.add_argument("--kd-points", type=int, default=8192)
    p.add_argument("--teacher", default="default",
                   help="'default' (the shipped stand-in), 'oracle[:corrupt=..]', 'tiny' or a teachers.resolve spec")
    p.add_argument("--shift", action="append", default=None, help="shift split specs (default: the table's)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    steps = [int(s) for s in args.steps.split(",")]
    t0 = time.perf_counter()
    # kept in memory: a few scans visited by every grid point, whose teacher features then stay cached
    splits = [generate_split(parse_split(s), args.scans, args.seed, args.max_points, "crop").kept()
              for s in (IN_DISTRIBUTION, *(args.shift or DEFAULT_SHIFTS))]
    teacher = resolve(args.teacher, default_teacher_resolution(), torch.device("cpu"), offline=True)
    teacher.cache_size = sum(len(s.cameras) for sp in splits for s in sp.scans) + 8
    print(f"splits + teacher: {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for role, path in ((SOURCE_ONLY, args.source_only_checkpoint), (JOINT, args.checkpoint)):
        settings = RunSettings({JOINT: path}, teacher, {})
        curve = run_curve(settings, splits, [0], args.scans)
        rows.append({"row": role, "checkpoint": str(path), "curve": {k: v[0] for k, v in curve.miou.items()},
                     "kd_loss": {k: v[0] for k, v in curve.kd_loss.items()}})
        print(json.dumps(rows[-1]), flush=True)
    for fields in parse_grid(args.grid):
        t = time.perf_counter()
        config = AdaptConfig(strategy="ttt_kd", **{"kd_points_per_step": args.kd_points, **fields})
        settings = RunSettings({JOINT: args.checkpoint}, teacher, {"ttt_kd": config})
        curve = run_curve(settings, splits, steps, args.scans)
        rows.append({"row": "ttt_kd", "kd_points_per_step": args.kd_points, **fields,
                     "checkpoint": str(args.checkpoint),
                     "curve": {split: {str(k): v for k, v in c.items()} for split, c in curve.miou.items()},
                     "kd_loss": {split: {str(k): v for k, v in c.items()} for split, c in curve.kd_loss.items()},
                     "seconds": time.perf_counter() - t})
        print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seed": args.seed, "scans": args.scans, "max_points": args.max_points,
                                    "teacher": teacher.teacher_id, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
