"""Each validation scan's two shift measures, and a model's in-distribution levels of them (its shift refs).

    PYTHONPATH=. python scripts/validation_shifts.py --checkpoint builtin --suite rgbd --out runs/shifts_rgbd.json
    PYTHONPATH=. python scripts/validation_shifts.py --checkpoint runs/joint_oracle/model.safetensors \
        --teacher oracle --splits in_dist          # only the refs

Why: the teacher's share moves with how far a scan's shifts are above what the model sees on its own data
(fusion.scan_weight_2d, shift.py). The per-scan values let scripts/choose_output_rule.py (``--shifts``) score
slopes offline; the refs (the means over the in-distribution split) are what ``fusion.shift_ref_3d`` /
``shift_ref_2d`` store, and they belong to the model and its teacher, not to the rule. Scans are those of
scripts/validation_candidates.py (seed 777, 16k-point crops, the same order): the 3D network's batch-norm
variance shift in an unadapted forward, and the norm of the scan's mean centred teacher feature. The last line
printed is the refs as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from ttt_kd_ros.adapt.class_prior import source_prior
from ttt_kd_ros.checkpoint_format import load_checkpoint
from ttt_kd_ros.checkpoints import shipped_path
from ttt_kd_ros.evaluation.splits import generate_split, parse_split
from ttt_kd_ros.evaluation.suites import VALIDATION_SEED, suite_splits
from ttt_kd_ros.model import TTTKDNet
from ttt_kd_ros.scan import Scan
from ttt_kd_ros.shift import BatchNormShift, teacher_shift
from ttt_kd_ros.targets import distillation_targets
from ttt_kd_ros.teachers.resolve import BUILTIN, resolve
from ttt_kd_ros.teachers.teacher import Teacher


def scan_shifts(net: TTTKDNet, teacher: Teacher, scan: Scan) -> dict[str, float | list[float] | None]:
    """The scan's 3D shift (an unadapted eval forward), teacher shift (None when no camera sees a point) and the
    forward's mean class probabilities (what the model's source class prior is averaged from)."""
    with torch.no_grad(), BatchNormShift(net.backbone) as shift:
        output = net(net.prepare(scan), with_kd=False)
    targets = distillation_targets(scan, teacher, center=net.config.kd_target_center)
    mix = torch.softmax(output.logits.float(), dim=1).mean(dim=0)
    return {"shift_3d": shift.value, "shift_2d": teacher_shift(targets.features), "class_mix": mix.tolist()}


def rounded_source_prior(mixes: list[list[float]]) -> list[float]:
    """The in-distribution scans' mean class mix as the class prior a model stores (``NetConfig.class_prior``,
    adapt/class_prior.source_prior), rounded for the command line of set_validated_settings.py."""
    return [round(v, 4) for v in source_prior(torch.tensor(mixes, dtype=torch.float64).mean(dim=0))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="joint checkpoint (builtin, builtin:lidar or a path)")
    p.add_argument("--teacher", default=BUILTIN)
    p.add_argument("--suite", default="rgbd")
    p.add_argument("--splits", default="", help="comma-separated split names (default: all)")
    p.add_argument("--scans", type=int, default=4)
    p.add_argument("--out", type=Path, default=None, help="per-scan values as JSON {split: [{shift_3d, shift_2d}]}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=VALIDATION_SEED, help="the suite's scans (validation_candidates')")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    net = load_checkpoint(shipped_path(args.checkpoint), "cpu").eval()
    teacher = resolve(args.teacher, net.config.teacher_resolution, torch.device("cpu"), offline=True,
                      num_classes=net.config.num_classes)
    in_distribution, shifts = suite_splits(args.suite)
    wanted = {s for s in args.splits.split(",") if s}
    values: dict[str, list[dict[str, float | None]]] = {}
    for text in [f"in_dist={in_distribution}", *shifts]:
        spec = parse_split(text)
        if wanted and spec.name not in wanted:
            continue
        split = generate_split(spec, args.scans, args.seed, 16000, "crop")
        values[spec.name] = [scan_shifts(net, teacher, scan) for scan in split.scans]
        print(f"{spec.name}: {len(split.scans)} scans", file=sys.stderr, flush=True)
    if args.out:
        args.out.write_text(json.dumps(values))
    own = values.get("in_dist", [])
    ref_2d = [v["shift_2d"] for v in own if v["shift_2d"] is not None]
    print(json.dumps({"checkpoint": args.checkpoint, "teacher": args.teacher, "suite": args.suite,
                      "shift_ref_3d": round(statistics.mean(v["shift_3d"] for v in own), 4) if own else None,
                      "shift_ref_2d": round(statistics.mean(ref_2d), 4) if ref_2d else None,
                      "source_prior": rounded_source_prior([v["class_mix"] for v in own]) if own else None}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
