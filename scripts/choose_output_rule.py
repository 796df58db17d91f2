"""Score output rules (adaptation variant x BN-mode choice x safety x fusion) on dumped validation candidates.

Reads the per-split .npz / .json files of scripts/validation_candidates.py and prints, per rule, the
in-distribution mIoU, the OOD average, the worst shift's change against the source-only model and the
number of shifts more than 1 point below it. Nothing here runs a network: every rule is a function of the
stored probabilities and KD losses, so dozens of rules cost seconds.

    python scripts/choose_output_rule.py /work/runs/cand_rgbd [more candidate folders] [--json out.json]

Several folders are scored as one suite: a later dump of new splits beside the first one, or of other variants
on the same scans (each scan then holds both dumps' variants). The grids are flags;
``--ceilings`` are multiples of the in-distribution median unadapted KD loss, stored as the absolute
``guard_kd_max`` the Segmenter reads. ``--shifts`` reads each scan's shift measures (scripts/validation_shifts.py)
and adds the shift-adaptive teacher share's slopes to the fusion grid (``--slopes-3d``, ``--slopes-2d``); their
refs are the file's in-distribution means. ``--prior-strengths`` / ``--prior-iterations`` add the label-shift
correction of the output (ttt_kd_ros/adapt/class_prior.py) to every rule; the fusion column then ends in
``:prior<strength>x<iterations>``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ttt_kd_ros.adapt.class_prior import correct, source_prior
from ttt_kd_ros.fusion import FusionConfig, fuse_scan
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
    fusion = fusion.at_shifts(scan.get("shift_3d"), scan.get("shift_2d"))  # the Segmenter's per-scan share
    fused_rows, _ = fuse_scan(torch.from_numpy(out[vis]), torch.from_numpy(scan["p2d"].astype(np.float32)), fusion)
    out[vis] = fused_rows.numpy()
    return out


def merge_splits(into: dict[str, tuple[list[Scan], list[dict]]],
                 more: dict[str, tuple[list[Scan], list[dict]]]) -> None:
    """A later dump's splits: new ones are added; one of the same scans (another run's variants on the same suite
    and seed) gives each scan its variants and stats; one of other scans replaces the earlier (and says so)."""
    for name, (scans, stats) in more.items():
        have, have_stats = into.get(name, ([], []))
        if len(have) != len(scans) or any(not np.array_equal(a["labels"], b["labels"]) for a, b in zip(have, scans,
                                                                                                         strict=True)):
            if have:
                print(f"{name}: a later dump holds other scans; its split replaces the earlier one")
            into[name] = (scans, stats)
            continue
        for a, b, sa, sb in zip(have, scans, have_stats, stats, strict=True):
            a.update({k: v for k, v in b.items() if k not in a})
            sa.update({k: v for k, v in sb.items() if k not in sa})


Rule = Callable[[Scan, dict], np.ndarray]


def variant(name: str) -> Rule:
    return lambda scan, stat: scan[name].astype(np.float32)


def guarded(inner: Rule, names: tuple[str, ...], fallback: str, margin: float, ceiling: float = 0.0) -> Rule:
    """The inner rule unless the chosen variant's KD loss fell by less than ``margin`` (relative) from the
    unadapted one, or the unadapted one is above ``ceiling`` (absolute, 0 = none: the Segmenter's
    ``guard_kd_max``); then the fallback variant."""
    def rule(scan: Scan, stat: dict) -> np.ndarray:
        before = stat.get("kd_joint")
        after = min((stat[f"kd_{n}"] for n in names if f"kd_{n}" in stat), default=None)
        if before is None or after is None or after > before * (1.0 - margin) or 0 < ceiling < before:
            return scan[fallback].astype(np.float32)
        return inner(scan, stat)
    return rule


def mixed(inner: Rule, other: str, weight: float) -> Rule:
    """(1 - weight) x inner + weight x another variant: an ensemble with the unadapted model."""
    return lambda scan, stat: (1 - weight) * inner(scan, stat) + weight * scan[other].astype(np.float32)


class Prior(NamedTuple):
    """The label-shift correction (ttt_kd_ros/adapt/class_prior.py) a rule's output gets: strength 0 = none."""

    strength: float = 0.0
    iterations: int = 2
    source: tuple[float, ...] = ()

    def apply(self, probs: np.ndarray) -> np.ndarray:
        if self.strength == 0.0:
            return probs
        return correct(torch.from_numpy(probs), self.source, self.strength, self.iterations)[0].numpy()


def dumped_source_prior(splits: dict) -> tuple[float, ...]:
    """The unadapted joint model's mean class probabilities on the in-distribution scans (what
    scripts/validation_shifts.py stores as the model's class prior, here from the dumped float16 copies)."""
    probs = np.concatenate([scan["joint"].astype(np.float64) for scan in splits["in_dist"][0]])
    return source_prior(torch.from_numpy(probs.mean(axis=0)))


NO_PRIOR = Prior()


def score(splits: dict, rule: Rule, fusion: FusionConfig, classes: int, prior: Prior = NO_PRIOR) -> dict[str, float]:
    out = {}
    for name, (scans, stats) in splits.items():
        cm = ConfusionMatrix(classes)
        for scan, stat in zip(scans, stats, strict=True):
            labels = prior.apply(fused(rule(scan, stat), scan, fusion)).argmax(axis=1)
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


def attach_shifts(splits: dict, path: Path) -> tuple[float, float]:
    """Each scan's shift_3d / shift_2d from scripts/validation_shifts.py's file, put into the scan dicts; returns
    the in-distribution means (the refs the Segmenter would store)."""
    values = json.loads(path.read_text())
    for name, (scans, _) in splits.items():
        if name not in values or len(values[name]) != len(scans):
            raise SystemExit(f"{path}: no shift values for the {len(scans)} scans of split {name!r}")
        for scan, value in zip(scans, values[name], strict=True):
            scan["shift_3d"], scan["shift_2d"] = value["shift_3d"], value["shift_2d"]
    own = values["in_dist"]
    return (float(np.mean([v["shift_3d"] for v in own])),
            float(np.mean([v["shift_2d"] for v in own if v["shift_2d"] is not None])))


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", type=Path, nargs="+")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--margins", default="0.2,0.3,0.35,0.4,0.45,0.5", help="1 - guard_kd_ratio values")
    p.add_argument("--ceilings", default="0", help="guard_kd_max as multiples of the in-distribution median KD")
    p.add_argument("--mixes", default="0.3,0.5", help="unadapted_weight values besides 0")
    p.add_argument("--modes", default="mean,entropy,geometric")
    p.add_argument("--weights", default="0.15,0.2,0.25,0.3,0.4,0.5")
    p.add_argument("--disagreements", default="1.0", help="fusion max_disagreement values")
    p.add_argument("--variants", default="", help="adaptation variants to score (default: every kd_* stored)")
    p.add_argument("--shifts", type=Path, default=None, help="per-scan shift values (scripts/validation_shifts.py)")
    p.add_argument("--slopes-3d", default="0", help="fusion shift_slope_3d values (with --shifts)")
    p.add_argument("--slopes-2d", default="0", help="fusion shift_slope_2d values (with --shifts)")
    p.add_argument("--prior-strengths", default="0", help="adapt.prior_strength values (0 = no label-shift "
                   "correction; the source prior is the in-distribution scans' mean unadapted probabilities)")
    p.add_argument("--prior-iterations", default="2", help="adapt.prior_iterations values (with a strength > 0)")
    p.add_argument("--shift-refs", default="", help="3D,teacher shift refs the model stores (default: the --shifts "
                   "file's in-distribution means)")
    p.add_argument("--source-prior", default="", help="the model's class prior, comma-separated (default: from the "
                   "dumped in-distribution scans)")
    args = p.parse_args()
    splits: dict[str, tuple[list[Scan], list[dict]]] = {}
    for folder in args.folders:
        merge_splits(splits, load_splits(folder))
    ref_3d = ref_2d = 0.0
    if args.shifts:
        ref_3d, ref_2d = attach_shifts(splits, args.shifts)
        if args.shift_refs:
            ref_3d, ref_2d = floats(args.shift_refs)
        print(f"shift refs: 3D {ref_3d:.4f}, teacher {ref_2d:.4f}")
    first = next(iter(splits.values()))[0][0]
    classes = first["joint"].shape[1]
    variants = [v for v in ("joint", "bn", "kd_bn", "kd_run", "kd_run3", "kd_run_dec", "kd_run3_dec", "kd_run_dl",
                            "kd_run3_dl", "kd_run10_dl")
                if all(v in scans[0] for scans, _ in splits.values())]  # stored for every split
    rules: dict[str, Rule] = {v: variant(v) for v in variants}
    kd = [v for v in variants if v.startswith("kd_") and (not args.variants or v in args.variants.split(","))]
    reference = float(np.median([stat["kd_joint"] for stat in splits["in_dist"][1]]))
    print(f"in-distribution median unadapted KD loss {reference:.4f} (ceilings are multiples of it)")
    for name in kd:
        for margin, times in itertools.product(floats(args.margins), floats(args.ceilings)):
            guard = f"guard{margin}" + (f"max{times * reference:.3f}" if times else "") + f"[{name}]"
            rules[guard] = guarded(variant(name), (name,), "joint", margin, times * reference)
            for w in floats(args.mixes):
                rules[f"mix{w}joint[{guard}]"] = mixed(rules[guard], "joint", w)
        for w in floats(args.mixes):
            rules[f"mix{w}joint[{name}]"] = mixed(variant(name), "joint", w)
    slopes = list(itertools.product(floats(args.slopes_3d), floats(args.slopes_2d))) if args.shifts else [(0, 0)]
    fusions = [FusionConfig("off")] + [
        FusionConfig(m, w, d, shift_slope_3d=s3, shift_ref_3d=ref_3d, shift_slope_2d=s2, shift_ref_2d=ref_2d)
        for m in args.modes.split(",") for w in floats(args.weights) for d in floats(args.disagreements)
        for s3, s2 in slopes]
    src = score(splits, variant("src"), FusionConfig("off"), classes)
    prior = tuple(floats(args.source_prior)) if args.source_prior else dumped_source_prior(splits)
    priors = [NO_PRIOR] + [Prior(strength, int(k), prior) for strength in floats(args.prior_strengths) if strength > 0
                          for k in floats(args.prior_iterations)]
    if len(priors) > 1:
        print(f"source prior: {[round(v, 4) for v in prior]}")
    rows = []
    print(f"{len(splits) - 1} shifts; source-only: id {src['in_dist']:.1f}, ood "
          f"{np.mean([v for k, v in src.items() if k != 'in_dist']):.1f}")
    for (name, rule), fusion, correction in itertools.product(rules.items(), fusions, priors):
        s = summary(score(splits, rule, fusion, classes, correction), src)
        label = f"{fusion.mode}:{fusion.weight_2d}:{fusion.max_disagreement}"
        if fusion.shift_adaptive:
            label += f":+{fusion.shift_slope_3d}x3d-{fusion.shift_slope_2d}x2d"
        if correction.strength:
            label += f":prior{correction.strength}x{correction.iterations}"
        rows.append({"rule": name, "fusion": label, **s})
    rows.append({"rule": "src", "fusion": "off:0.5", **summary(src, src)})
    rows.sort(key=lambda r: (r["losses"], -r["ood"]))
    print(f"{'rule':40s} {'fusion (:prior strength x rounds)':28s} {'id':>6s} {'ood':>6s} {'worst':>7s} losses "
          "worst_split")
    for r in rows[:60]:
        print(f"{r['rule']:40s} {r['fusion']:28s} {r['id']:6.1f} {r['ood']:6.1f} {r['worst']:7.1f} {r['losses']:6d} "
              f"{r['worst_split']}")
    if args.json:
        per_split = {name: score(splits, rules.get(name, variant("src")), FusionConfig("off"), classes)
                     for name in ["joint", *kd]}
        args.json.write_text(json.dumps({"rows": rows, "source_only": src, "variants": per_split}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
