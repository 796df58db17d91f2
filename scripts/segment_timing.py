"""Whole ``Segmenter.segment`` calls timed end to end, as the node calls them: the numbers a robot sees.

    PYTHONPATH=. python scripts/segment_timing.py --device cuda --json gpu_out/segment.jsonl

Why not a sum of stage medians: stages overlap with asynchronous GPU work and a sum leaves out what lies between
them, so "end to end" is measured as one wall-clock interval from the call to the returned labels, with the
device synchronised on both sides. Scans: 120k points + one 640x480 camera, 150k points + six (the engine
benchmark's synthetic rooms); the shipped LiDAR model and teacher with their validated settings (guard, mix,
fusion); TTT-KD with 1 / 5 / 10 steps; mixed precision off and on; every sparse backend importable here. Each
row: median and p90 of ``--reps`` calls after ``--warmup`` calls. Prints JSON lines and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ttt_kd_ros.adapt import AdaptConfig, build_strategy
from ttt_kd_ros.checkpoint_format import load_checkpoint
from ttt_kd_ros.segmenter import Segmenter, SegmenterConfig, resolve_builtin
from ttt_kd_ros.sparse import available_backends
from ttt_kd_ros.tools.benchmark_engine import synthetic_scan

CASES = ((120_000, 1), (150_000, 6))


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_segment(segmenter: Segmenter, scan, reps: int, warmup: int) -> list[float]:
    """Wall-clock seconds of ``reps`` segment() calls after ``warmup`` untimed ones, device synchronised."""
    times = []
    for i in range(warmup + reps):
        synchronise(segmenter.device)
        start = time.perf_counter()
        segmenter.segment(scan)
        synchronise(segmenter.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def build(device: str, backend: str, steps: int, amp: bool) -> Segmenter:
    config = SegmenterConfig(checkpoint="builtin:lidar", teacher="builtin", device=device, amp=amp,
                             adapt=AdaptConfig(strategy="ttt_kd", steps=steps), given=("adapt.steps",))
    segmenter = Segmenter.from_config(config)
    if backend == segmenter.model.config.backend:
        return segmenter
    model = load_checkpoint(resolve_builtin("builtin:lidar"), segmenter.device, backend=backend)
    return Segmenter(model, segmenter.teacher, build_strategy(model, segmenter.strategy.config),
                     device=segmenter.device, amp=amp, fusion=segmenter.fusion)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--backends", nargs="+", default=None, help="default: every importable one")
    p.add_argument("--amp", choices=("off", "on", "both"), default="both")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    amps = {"off": [False], "on": [True], "both": [False, True]}[args.amp]
    rows = []
    for backend in args.backends or available_backends():
        for amp in amps:
            for points, cameras in CASES:
                scan = synthetic_scan(points, cameras)
                for steps in args.steps:
                    try:
                        times = time_segment(build(args.device, backend, steps, amp), scan, args.reps, args.warmup)
                    except Exception as err:  # a failing combination is a row that says so, not a lost run
                        row = {"backend": backend, "amp": amp, "points": points, "cameras": cameras,
                               "steps": steps, "error": f"{type(err).__name__}: {err}"[:300]}
                    else:
                        ordered = sorted(times)
                        row = {"backend": backend, "amp": amp, "points": points, "cameras": cameras, "steps": steps,
                               "median_ms": 1000 * statistics.median(times),
                               "p90_ms": 1000 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
                               "device": args.device}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    if args.json is not None:
                        args.json.parent.mkdir(parents=True, exist_ok=True)
                        with args.json.open("a") as f:
                            f.write(json.dumps(row) + "\n")
    print("\n| backend | amp | points | cameras | steps | median (ms) | p90 (ms) |")
    print("|" + " --- |" * 7)
    for r in rows:
        timing = (f"{r['median_ms']:.1f} | {r['p90_ms']:.1f}" if "median_ms" in r else f"failed: {r['error']} | -")
        print(f"| {r['backend']} | {'bf16' if r['amp'] else 'fp32'} | {r['points'] // 1000}k | {r['cameras']} | "
              f"{r['steps']} | {timing} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
