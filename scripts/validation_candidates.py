"""Dump, per validation scan, every candidate prediction the output rule could pick from (for choosing it offline).

Why: a rule (fusion mode, safety test, BN mode) is chosen by trying many combinations on a broad validation
suite. Running the evaluator once per combination would repeat the expensive part (20 adaptation steps per
scan) dozens of times; instead this script runs each adaptation variant once per scan and stores the class
probabilities, the visible points, the teacher head's probabilities and the KD losses in one .npz per split.
scripts/choose_output_rule.py then scores any rule from these files in seconds.

    python scripts/validation_candidates.py --suite rgbd --out /work/runs/cand_rgbd --scans 4 --threads 1 \
        --checkpoint runs/rgbd_head.safetensors --source-only-checkpoint ttt_kd_ros/checkpoints/..._source_only...

Variants: src (source-only checkpoint), joint (no adaptation), bn (BN-stats, 20 passes), and TTT-KD with
bn_train at lr 1e-4 (kd_bn) and with running statistics at lr 1e-4 and 3e-4 (kd_run, kd_run3), 20 steps each;
the same two with the decoder alone adapted (kd_run_dec, kd_run3_dec: the frozen-encoder path); the decoder's
last stage alone at lr 1e-4, 3e-4 and 1e-3 (kd_run_dl, kd_run3_dl, kd_run10_dl: a frozen prefix up to it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ttt_kd_ros.adapt import AdaptConfig, build_strategy
from ttt_kd_ros.checkpoint_format import load_checkpoint
from ttt_kd_ros.evaluation.splits import generate_split, parse_split
from ttt_kd_ros.evaluation.suites import VALIDATION_SEED, suite_splits
from ttt_kd_ros.fusion import teacher_probabilities
from ttt_kd_ros.targets import distillation_targets
from ttt_kd_ros.teachers.resolve import resolve

VARIANTS = {
    "bn": AdaptConfig(strategy="bn_stats", steps=20),
    "kd_bn": AdaptConfig(strategy="ttt_kd", steps=20, lr=1e-4, bn_train=True),
    "kd_run": AdaptConfig(strategy="ttt_kd", steps=20, lr=1e-4, bn_train=False),
    "kd_run3": AdaptConfig(strategy="ttt_kd", steps=20, lr=3e-4, bn_train=False),
    "kd_run_dec": AdaptConfig(strategy="ttt_kd", steps=20, lr=1e-4, bn_train=False, params="decoder"),
    "kd_run3_dec": AdaptConfig(strategy="ttt_kd", steps=20, lr=3e-4, bn_train=False, params="decoder"),
    "kd_run_dl": AdaptConfig(strategy="ttt_kd", steps=20, lr=1e-4, bn_train=False, params="decoder_last"),
    "kd_run3_dl": AdaptConfig(strategy="ttt_kd", steps=20, lr=3e-4, bn_train=False, params="decoder_last"),
    "kd_run10_dl": AdaptConfig(strategy="ttt_kd", steps=20, lr=1e-3, bn_train=False, params="decoder_last"),
}


def probabilities(output) -> np.ndarray:
    return torch.softmax(output.logits.float(), dim=1).numpy().astype(np.float16)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suite", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--checkpoint", required=True, help="joint checkpoint with a fusion head")
    p.add_argument("--source-only-checkpoint", required=True)
    p.add_argument("--teacher", default="builtin")
    p.add_argument("--scans", type=int, default=4)
    p.add_argument("--seed", type=int, default=VALIDATION_SEED)
    p.add_argument("--max-points", type=int, default=16000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated adaptation variants")
    p.add_argument("--splits", default="", help="comma-separated split names (default: all, in-distribution first)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    joint = load_checkpoint(args.checkpoint, "cpu")
    source = load_checkpoint(args.source_only_checkpoint, "cpu")
    if joint.fusion_head is None:
        raise SystemExit(f"{args.checkpoint}: no fusion head (ttt_kd_fit_fusion_head adds one)")
    teacher = resolve(args.teacher, joint.config.teacher_resolution, torch.device("cpu"))
    center = joint.config.kd_target_center
    id_spec, shifts = suite_splits(args.suite)
    texts = [f"in_dist={id_spec}", *shifts]
    wanted = {s for s in args.splits.split(",") if s}
    chosen = [v for v in args.variants.split(",") if v]
    strategies = {name: build_strategy(joint, VARIANTS[name]) for name in chosen}
    kd = build_strategy(joint, VARIANTS["kd_bn"])  # reports KD losses (its loss form; it never adapts here)
    none = build_strategy(joint, AdaptConfig(strategy="none", steps=0))
    for text in texts:
        spec = parse_split(text)
        if wanted and spec.name not in wanted:
            continue
        target = args.out / f"{spec.name}.npz"
        if target.is_file():
            continue  # resumable: a finished split is kept
        split = generate_split(spec, args.scans, args.seed, args.max_points, "crop")
        start = time.perf_counter()
        arrays: dict[str, np.ndarray] = {}
        stats: list[dict] = []
        for i, scan in enumerate(split.scans):
            prepared_s = source.prepare(scan)
            prepared = joint.prepare(scan)
            targets = distillation_targets(scan, teacher, center=center)
            arrays[f"{i}/labels"] = np.asarray(scan.labels)
            arrays[f"{i}/visible"] = targets.point_index.numpy()
            with torch.no_grad():
                source.eval()
                arrays[f"{i}/src"] = probabilities(source(prepared_s, with_kd=False))
                out = none.predict(prepared)
                arrays[f"{i}/joint"] = probabilities(out)
                record = {"visible": int(targets.num_targets), "points": int(scan.num_points)}
                if targets.num_targets:
                    arrays[f"{i}/p2d"] = teacher_probabilities(joint.fusion_head, targets.features).numpy().astype(
                        np.float16)
                    record["kd_joint"] = kd.kd_loss_of(out, targets)
            for name, strategy in strategies.items():
                if strategy.needs_targets and not targets.num_targets:
                    arrays[f"{i}/{name}"] = arrays[f"{i}/joint"]
                    continue
                result = strategy.adapt(prepared, targets)
                out = strategy.predict(prepared)
                arrays[f"{i}/{name}"] = probabilities(out)
                if targets.num_targets:
                    record[f"kd_{name}"] = kd.kd_loss_of(out, targets)
                record[f"first_loss_{name}"] = result.loss_before
                record[f"last_loss_{name}"] = result.loss_after
                strategy.reset()
            stats.append(record)
        np.savez_compressed(target, **arrays)
        (args.out / f"{spec.name}.json").write_text(json.dumps({"spec": spec.spec, "scans": stats,
                                                                "seconds": time.perf_counter() - start}))
        print(f"{spec.name}: {len(split.scans)} scans in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
