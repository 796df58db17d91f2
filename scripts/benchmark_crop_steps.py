"""What a TTT-KD step costs with and without crops, and how far a crop's batch statistics are from the scan's.

    PYTHONPATH=. python scripts/benchmark_crop_steps.py --threads 2

For every scan of ``--data`` (the real KITTI frames by default: 115k-127k points, one front camera) and for a
``--small``-point random subset of it, runs ``--steps`` TTT-KD steps through ``Segmenter.segment`` (no budget)
once per ``--crops`` value and prints the median step time; the first scan of each setting warms up and is not
reported. Then, for ``--bn-data`` (an RGB-D model's scan: ``bn_train`` steps normalise with batch statistics),
compares each batch-norm layer's batch mean and variance on a crop with those on the whole scan: the mean offset
in units of the scan's standard deviation, and the variance ratio, averaged over channels, layers and crops.
Prints JSON lines, then markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch

from ttt_kd_ros.adapt import AdaptConfig
from ttt_kd_ros.adapt.config import FROZEN_PREFIX_PARAM_SETS
from ttt_kd_ros.adapt.crops import nearest_voxels
from ttt_kd_ros.checkpoint_format import load_checkpoint
from ttt_kd_ros.data.sources import open_source
from ttt_kd_ros.model import SparseBatchNorm
from ttt_kd_ros.scan import Scan
from ttt_kd_ros.segmenter import Segmenter, SegmenterConfig, resolve_builtin
from ttt_kd_ros.targets import distillation_targets


def subset(scan: Scan, points: int, seed: int = 0) -> Scan:
    keep = np.sort(np.random.default_rng(seed).choice(scan.num_points, points, replace=False))
    return scan.select(keep)


def step_times(scans: list[Scan], checkpoint: str, crop_voxels: int, steps: int, params: str = "all") -> dict:
    """Median step time (s) over every step of every scan but the first (warm-up), and the voxels per scan.

    params "decoder" or "decoder_last" (with running statistics) takes the frozen-prefix path: a step runs the
    decoder alone, or its last stage alone.
    """
    config = SegmenterConfig(checkpoint=checkpoint, teacher="builtin", device="cpu",
                             adapt=AdaptConfig(strategy="ttt_kd", steps=steps, crop_voxels=crop_voxels,
                                               params=params, bn_train=params not in FROZEN_PREFIX_PARAM_SETS))
    segmenter = Segmenter.from_config(config)
    times, voxels = [], []
    for i, scan in enumerate(scans):
        prediction = segmenter.segment(scan)
        if i == 0:
            continue
        ttt = prediction.timings_s.get("ttt_step", 0.0)
        times.append(ttt / max(1, prediction.steps_run))
        voxels.append(segmenter.model.prepare(scan).num_voxels)
    return {"step_s": statistics.median(times), "voxels": int(statistics.median(voxels))}


def batch_statistics(model: torch.nn.Module, prepared) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(mean, var) of the input of every batch-norm layer on one training-mode pass over ``prepared``."""
    stats: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(_module, inputs, _output) -> None:
        x = inputs[0].detach()
        stats.append((x.mean(dim=0), x.var(dim=0, unbiased=False)))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, SparseBatchNorm)]
    model.train()
    with torch.no_grad():
        model.voxel_features(prepared)
    for handle in handles:
        handle.remove()
    model.eval()
    return stats


def bn_consistency(scan: Scan, checkpoint: str, crop_voxels: int, crops: int) -> dict:
    """How far crop batch statistics are from the whole scan's (see the module docstring)."""
    from ttt_kd_ros.teachers.resolve import resolve

    model = load_checkpoint(resolve_builtin(checkpoint), "cpu")
    prepared = model.prepare(scan)
    whole = batch_statistics(model, prepared)
    teacher = resolve("builtin", model.config.teacher_resolution)
    targets = distillation_targets(scan, teacher, center=model.config.kd_target_center)
    target_voxels = prepared.voxels.point_to_voxel[targets.point_index]
    rng = np.random.default_rng(0)
    offsets, ratios = [], []
    for _ in range(crops):
        centre = int(target_voxels[rng.integers(len(target_voxels))])
        rows = nearest_voxels(prepared.voxels.coords, centre, min(crop_voxels, prepared.num_voxels))
        part = batch_statistics(model, model.crop(prepared, rows))
        for (mean_w, var_w), (mean_c, var_c) in zip(whole, part, strict=True):
            std = var_w.clamp_min(1e-6).sqrt()
            offsets.append(float(((mean_c - mean_w).abs() / std).mean()))
            ratios.append(float((var_c.clamp_min(1e-6) / var_w.clamp_min(1e-6)).mean()))
    return {"voxels": prepared.num_voxels, "crop_voxels": crop_voxels, "mean_offset_in_std": statistics.mean(offsets),
            "variance_ratio": statistics.mean(ratios), "layers": len(whole), "crops": crops}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="kitti:../shared/data/real/kitti_object")
    p.add_argument("--checkpoint", default="builtin:lidar")
    p.add_argument("--small", type=int, default=16000, help="points of the small version of each scan")
    p.add_argument("--crops", type=int, nargs="+", default=[0, AdaptConfig.crop_voxels])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--bn-data", default="synthetic:source?scans=1&seed=777")
    p.add_argument("--bn-checkpoint", default="builtin")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--params", default="all",
                   help="adapt.params: all, or decoder / decoder_last (the frozen-prefix path)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    source = open_source(args.data)
    full = [source[i] for i in range(len(source))]
    sizes = {"full": [full[0], *full], "small": [subset(s, args.small) for s in [full[0], *full]]}
    rows = []
    for crop in args.crops:
        row = {"crop_voxels": crop, "params": args.params}
        for name, scans in sizes.items():
            measured = step_times(scans, args.checkpoint, crop, args.steps, args.params)
            row[f"{name}_step_s"], row[f"{name}_voxels"] = measured["step_s"], measured["voxels"]
        row["ratio"] = row["full_step_s"] / row["small_step_s"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    bn_scan = open_source(args.bn_data)[0]
    bn = [bn_consistency(bn_scan, args.bn_checkpoint, crop, 8) for crop in args.crops if crop > 0]
    for row in bn:
        print(json.dumps(row), flush=True)
    print(f"\n| crop_voxels | step at {full[0].num_points // 1000}k-point scans (s) | voxels | step at "
          f"{args.small // 1000}k points (s) | voxels | ratio |")
    print("|" + " --- |" * 6)
    for r in rows:
        print(f"| {r['crop_voxels'] or 'whole scan'} | {r['full_step_s']:.3f} | {r['full_voxels']} | "
              f"{r['small_step_s']:.3f} | {r['small_voxels']} | {r['ratio']:.2f} |")
    print("\n| scan voxels | crop voxels | mean offset (scan std) | variance ratio | BN layers x crops |")
    print("|" + " --- |" * 5)
    for r in bn:
        print(f"| {r['voxels']} | {r['crop_voxels']} | {r['mean_offset_in_std']:.3f} | {r['variance_ratio']:.3f} | "
              f"{r['layers']} x {r['crops']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
