"""Crops at equal steps: the default output of a shipped model on a family-spanning subset of its validation suite.

    PYTHONPATH=. python scripts/crop_validation.py rgbd 8000 runs/crop_rgbd_8000
    PYTHONPATH=. python scripts/crop_validation.py rgbd 0 runs/crop_rgbd_whole      # whole-scan steps
    PYTHONPATH=. python scripts/crop_validation.py lidar 2000 runs/crop_lidar_dl params=decoder_last,lr=3e-4

Runs ``ttt_kd_evaluate`` on whole scans (``--max-points 0``: where crops actually cut), seed 777 (validation),
2 scans per split, rows source-only and default, with ``adapt.crop_voxels`` set to the given value and any
other AdaptConfig fields given after the output folder (docs/EVALUATION.md, "Crops at equal steps").
"""

from __future__ import annotations

import subprocess
import sys

from ttt_kd_ros.evaluation.suites import suite_splits
from ttt_kd_ros.segmenter import resolve_builtin

PICK = {"rgbd": ["pitch_down", "cam_low", "dim", "blocky", "depth_noise", "big_rooms", "clutter", "palette", "noisy",
                 "lidar"],
        "lidar": ["beams16", "mount_low", "lidar_dropout", "range_noise", "dim", "blocky", "big_rooms", "clutter",
                  "lidar16", "office_noise"]}
"""One or two shifts per family of each suite (camera pose, light, image, sensor, layout, combinations)."""
MODELS = {"rgbd": ("builtin", "ttt_kd_ros/checkpoints/ttt_kd_small_synthetic_source_only.safetensors"),
          "lidar": ("builtin:lidar", "ttt_kd_ros/checkpoints/ttt_kd_small_synthetic_lidar_source_only.safetensors")}


def main() -> int:
    suite, crop, out = sys.argv[1], sys.argv[2], sys.argv[3]
    more = f",{sys.argv[4]}" if len(sys.argv) > 4 else ""  # other AdaptConfig fields, e.g. params=decoder_last
    in_distribution, shifts = suite_splits(suite)
    joint, source_only = MODELS[suite]
    command = [sys.executable, "-m", "ttt_kd_ros.tools.evaluate", "--seed", "777", "--scans", "2",
               "--strategies", "source_only,default", "--curve-scans", "0", "--max-points", "0", "--threads", "1",
               "--no-progress", "-q", "--out", out, "--checkpoint", resolve_builtin(joint),
               "--source-only-checkpoint", source_only, "--adapt", f"ttt_kd:crop_voxels={crop}{more}",
               "--in-distribution", in_distribution]
    for shift in shifts:
        if shift.split("=")[0] in PICK[suite]:
            command += ["--shift", shift]
    print(" ".join(command[1:]), flush=True)
    return subprocess.call(command)


if __name__ == "__main__":
    raise SystemExit(main())
