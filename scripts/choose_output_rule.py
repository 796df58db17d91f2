"""Score output rules (adaptation variant x BN-mode choice x safety x fusion) on dumped validation candidates.

Reads the per-split .npz / .json files of scripts/validation_candidates.py and prints, per rule, the
in-distribution mIoU, the OOD average, the worst shift's change against the source-only model and the
number of shifts more than 1 point below it. Nothing here runs a network: every rule is a function of the
stored probabilities and KD losses, so dozens of rules cost seconds.

    python scripts/choose_output_rule.py /work/runs/cand_rgbd [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ttt_kd_ros.fusion import FusionConfig, fuse_probabilities
from ttt_kd_ros.metrics import ConfusionMatrix
from ttt_kd_ros.scan import IGNORE_LABEL

Scan = dict[str, np.ndarray]


def load_splits(folder: Path) -> dict[str, tuple[list[Scan], list[dict]]]:
    splits = {}
    for path in sorted(folder.glob("*.npz")):
        data = np.load(path)
        stats = json.loads(path.with_suffix(".json").read_text())["scans"]
        scans: list[Scan] = [{} for _ in stats]
        for key in data.files:
            i, name = key.split("/", 1)
            scans[int(i)][name] = data[key]
        splits[path.stem] = (scans, stats)
    return splits


def fused(probs: np.ndarray, scan: Scan, fusion: FusionConfig) -> np.ndarray:
    if not fusion.enabled or "p2d" not in scan:
        return probs
    out = probs.astype(np.float32).copy()
    vis = scan["visible"]
    out[vis] = fuse_probabilities(torch.from_numpy(out[vis]), torch.from_numpy(scan["p2d"].astype(np.float32)),
                                  fusion).numpy()
    return out


Rule = Callable[[Scan, dict], np.ndarray]


def variant(name: str) -> Rule:
    return lambda scan, stat: scan[name].astype(np.float32)


def guarded(inner: Rule, names: tuple[str, ...], fallback: str, margin: float) -> Rule:
    """The inner rule unless the chosen variant's KD loss fell by less than ``margin`` (relative) from the
    unadapted one; then the fallback variant."""
    def rule(scan: Scan, stat: dict) -> np.ndarray:
        before = stat.get("kd_joint")
        after = min((stat[f"kd_{n}"] for n in names if f"kd_{n}" in stat), default=None)
        if before is None or after is None or after > before * (1.0 - margin):
            return scan[fallback].astype(np.float32)
        return inner(scan, stat)
    return rule


def mixed(inner: Rule, other: str, weight: float) -> Rule:
    """(1 - weight) x inner + weight x another variant: an ensemble with the unadapted model."""
    return lambda scan, stat: (1 - weight) * inner(scan, stat) + weight * scan[other].astype(np.float32)


def score(splits: dict, rule: Rule, fusion: FusionConfig, classes: int) -> dict[str, float]:
    out = {}
    for name, (scans, stats) in splits.items():
        cm = ConfusionMatrix(classes)
        for scan, stat in zip(scans, stats, strict=True):
            labels = fused(rule(scan, stat), scan, fusion).argmax(axis=1)
            truth = scan["labels"]
            keep = truth != IGNORE_LABEL
            cm.update(truth[keep], labels[keep])
        out[name] = 100.0 * cm.miou()
    return out


def summary(result: dict[str, float], src: dict[str, float]) -> dict[str, float]:
    shifts = [k for k in result if k != "in_dist"]
    deltas = [result[k] - src[k] for k in shifts]
    return {"id": result["in_dist"], "ood": float(np.mean([result[k] for k in shifts])),
            "worst": float(min(deltas)), "losses": sum(d < -1.0 for d in deltas),
            "worst_split": shifts[int(np.argmin(deltas))]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    splits = load_splits(args.folder)
    first = next(iter(splits.values()))[0][0]
    classes = first["joint"].shape[1]
    variants = [v for v in ("joint", "bn", "kd_bn", "kd_run", "kd_run3") if v in first]
    rules: dict[str, Rule] = {v: variant(v) for v in variants}
    kd = [v for v in variants if v.startswith("kd_")]
    for name in kd:
        for margin in (0.2, 0.3, 0.35, 0.4, 0.45, 0.5):
            guard = f"guard{margin}[{name}]"
            rules[guard] = guarded(variant(name), (name,), "joint", margin)
            for w in (0.3, 0.5):
                rules[f"mix{w}joint[{guard}]"] = mixed(rules[guard], "joint", w)
        for w in (0.3, 0.5):
            rules[f"mix{w}joint[{name}]"] = mixed(variant(name), "joint", w)
    fusions = [FusionConfig("off")] + [FusionConfig(m, w) for m in ("mean", "entropy", "geometric")
                                       for w in (0.15, 0.2, 0.25, 0.3, 0.4, 0.5)]
    src = score(splits, variant("src"), FusionConfig("off"), classes)
    rows = []
    print(f"{len(splits) - 1} shifts; source-only: id {src['in_dist']:.1f}, ood "
          f"{np.mean([v for k, v in src.items() if k != 'in_dist']):.1f}")
    for (name, rule), fusion in itertools.product(rules.items(), fusions):
        s = summary(score(splits, rule, fusion, classes), src)
        rows.append({"rule": name, "fusion": f"{fusion.mode}:{fusion.weight_2d}", **s})
    rows.append({"rule": "src", "fusion": "off:0.5", **summary(src, src)})
    rows.sort(key=lambda r: (r["losses"], -r["ood"]))
    print(f"{'rule':40s} {'fusion':14s} {'id':>6s} {'ood':>6s} {'worst':>7s} losses worst_split")
    for r in rows[:60]:
        print(f"{r['rule']:40s} {r['fusion']:14s} {r['id']:6.1f} {r['ood']:6.1f} {r['worst']:7.1f} {r['losses']:6d} "
              f"{r['worst_split']}")
    if args.json:
        per_split = {name: score(splits, rules.get(name, variant("src")), FusionConfig("off"), classes)
                     for name in ["joint", *kd]}
        args.json.write_text(json.dumps({"rows": rows, "source_only": src, "variants": per_split}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
