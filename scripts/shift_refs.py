"""A model's in-distribution shift levels: the ``fusion.shift_ref_3d`` / ``shift_ref_2d`` its validated settings need.

    PYTHONPATH=. python scripts/shift_refs.py --checkpoint builtin --suite rgbd
    PYTHONPATH=. python scripts/shift_refs.py --checkpoint runs/joint_oracle/model.safetensors --teacher oracle

Why: the teacher's share moves with how far a scan's shifts are above what the model sees on its own data
(fusion.scan_weight_2d, shift.py), and that level belongs to the model and its teacher, not to the rule. It is the
mean over the in-distribution split of a validation suite (seed 777, 16k-point crops, as the candidates of
scripts/validation_candidates.py): the 3D network's batch-norm variance shift in an unadapted forward, and the
norm of each scan's mean centred teacher feature. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from ttt_kd_ros.checkpoint_format import load_checkpoint
from ttt_kd_ros.checkpoints import shipped_path
from ttt_kd_ros.evaluation.splits import generate_split, parse_split
from ttt_kd_ros.evaluation.suites import VALIDATION_SEED, suite_splits
from ttt_kd_ros.shift import BatchNormShift, teacher_shift
from ttt_kd_ros.targets import distillation_targets
from ttt_kd_ros.teachers.resolve import BUILTIN, resolve


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="joint checkpoint (builtin, builtin:lidar or a path)")
    p.add_argument("--teacher", default=BUILTIN)
    p.add_argument("--suite", default="rgbd", help="validation suite whose in-distribution split is read")
    p.add_argument("--scans", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    net = load_checkpoint(shipped_path(args.checkpoint), "cpu").eval()
    teacher = resolve(args.teacher, net.config.teacher_resolution, torch.device("cpu"), offline=True,
                      num_classes=net.config.num_classes)
    in_distribution, _ = suite_splits(args.suite)
    split = generate_split(parse_split(f"in_dist={in_distribution}"), args.scans, VALIDATION_SEED, 16000, "crop")
    shifts_3d, shifts_2d = [], []
    for scan in split.scans:
        with torch.no_grad(), BatchNormShift(net.backbone) as shift:
            net(net.prepare(scan), with_kd=False)
        shifts_3d.append(shift.value)
        value = teacher_shift(distillation_targets(scan, teacher, center=net.config.kd_target_center).features)
        if value is not None:
            shifts_2d.append(value)
    print(json.dumps({"checkpoint": args.checkpoint, "teacher": args.teacher, "suite": args.suite,
                      "scans": len(split.scans), "shift_ref_3d": round(statistics.mean(shifts_3d), 4),
                      "shift_ref_2d": round(statistics.mean(shifts_2d), 4) if shifts_2d else None}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
