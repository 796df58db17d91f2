"""The anytime engine on real scans: adapted-scan latency under a time budget, and how many steps fit.

    python scripts/benchmark_budget.py --data kitti:../shared/data/real/kitti_object --budgets 0.5 1 2 --passes 3

Runs the node's engine (``Segmenter.segment``, what the node calls per scan)
with the node's model and teacher, ``adapt.steps`` large (1000) so the budget,
not the step count, ends every scan, and times each scan from the call to the
returned labels (the budget counts from the scan's arrival at the engine and
holds back the final forward). The first pass warms the allocator and caches
and is not reported. Prints one JSON line per budget and a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from ttt_kd_ros.adapt import AdaptConfig
from ttt_kd_ros.data.sources import open_source
from ttt_kd_ros.segmenter import Segmenter, SegmenterConfig
from ttt_kd_ros.teachers.resolve import BUILTIN


def run_budget(source, budget_s: float, passes: int, checkpoint: str, teacher: str, steps: int,
               crop_voxels: int | None, validated: bool) -> dict:
    """Latency and steps of every scan of ``source`` over ``passes`` passes (the first one discarded).

    validated: the checkpoint's validated settings (guard, mix with the unadapted prediction, fusion, the
    parameters that move and the crop size: what the node runs) for every field but steps, budget and a crop size
    given here; else AdaptConfig's defaults as they are. crop_voxels None: the checkpoint's (validated) or the
    default.
    """
    given = ("adapt.steps", "adapt.time_budget_s") if validated else None
    adapt = AdaptConfig(steps=steps, time_budget_s=budget_s)
    if crop_voxels is not None:
        adapt = dataclasses.replace(adapt, crop_voxels=crop_voxels)
        given = None if given is None else (*given, "adapt.crop_voxels")
    config = SegmenterConfig(checkpoint=checkpoint, teacher=teacher, device="cpu", given=given, adapt=adapt)
    segmenter = Segmenter.from_config(config)
    latencies, steps_run, stages, step_s = [], [], [], []
    by_scan: dict[str, list[int]] = {}  # steps of each scan over the passes: frames differ, a median hides which
    for p in range(passes):
        for i in range(len(source)):
            scan = source[i]
            start = time.perf_counter()
            pred = segmenter.segment(scan)
            wall = time.perf_counter() - start
            if p == 0:
                continue
            latencies.append(wall)
            steps_run.append(pred.steps_run)
            by_scan.setdefault(f"{i} ({scan.num_points} points)", []).append(pred.steps_run)
            if pred.steps_run:
                step_s.append(pred.timings_s.get("ttt_step", 0.0) / pred.steps_run)
            stages.append(pred.timings_s)
    names = sorted({k for s in stages for k in s})  # a stage a later scan ran (a guard pass) counts too
    return {"budget_s": budget_s, "scans": len(latencies), "points": source[0].num_points,
            "latency_median_s": statistics.median(latencies),
            "step_median_s": statistics.median(step_s) if step_s else 0.0, "latency_max_s": max(latencies),
            "over_budget": sum(t > budget_s for t in latencies), "steps_median": statistics.median(steps_run),
            "steps_min": min(steps_run), "steps_max": max(steps_run), "steps_by_scan": by_scan,
            "crop_voxels": segmenter.strategy.config.crop_voxels, "params": segmenter.strategy.config.params,
            "stage_median_s": {k: statistics.median(s.get(k, 0.0) for s in stages) for k in names}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="kitti:../shared/data/real/kitti_object", help="data-source spec")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    p.add_argument("--passes", type=int, default=3, help="passes over the scans; the first is a warm-up")
    p.add_argument("--checkpoint", default=BUILTIN)
    p.add_argument("--teacher", default=BUILTIN)
    p.add_argument("--steps", type=int, default=1000, help="adapt.steps: large, so the budget ends each scan")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--crop-voxels", type=int, default=None,
                   help="adapt.crop_voxels (0: every step on the whole scan, as before crops; default: the "
                        "checkpoint's validated size with --validated, else AdaptConfig's)")
    p.add_argument("--validated", action="store_true",
                   help="the checkpoint's validated settings (guard, mix, fusion), as the node runs it")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    source = open_source(args.data)
    rows = []
    for budget in args.budgets:
        row = run_budget(source, budget, args.passes, args.checkpoint, args.teacher, args.steps, args.crop_voxels,
                         args.validated)
        row.update(data=args.data, threads=args.threads, checkpoint=args.checkpoint, teacher=args.teacher,
                   validated=args.validated)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| budget (s) | scans | points | latency median (s) | latency max (s) | over budget | steps median "
          "(min-max) | prepare (s) | encoder (s) | teacher (s) | reference (s) | step (s) | forward (s) |")
    print("|" + " --- |" * 13)
    for r in rows:
        st = r["stage_median_s"]
        print(f"| {r['budget_s']:g} | {r['scans']} | {r['points'] // 1000}k | {r['latency_median_s']:.3f} | "
              f"{r['latency_max_s']:.3f} | {r['over_budget']} | {r['steps_median']:g} ({r['steps_min']}-"
              f"{r['steps_max']}) | {st.get('prepare', 0):.3f} | {st.get('encoder', 0):.3f} | "
              f"{st.get('teacher', 0):.3f} | {st.get('reference', 0):.3f} | {r['step_median_s']:.3f} | "
              f"{st.get('forward', 0):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
