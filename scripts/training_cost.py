"""What one training scan costs on this machine: loading, the teacher forward, cached targets, one step.

    python scripts/training_cost.py --data 'kitti:../shared/data/real/kitti_object' --teacher random-vits14 \
        --teacher-resolution 224 --crop-points 0 --threads 2

Prints one JSON line per scan and a summary (medians) with the cache bytes per
image, so the cost of a whole data set is (scans x per-scan numbers) / the
parallelism you run. ``random-vits14`` has DINOv2 ViT-S/14's shape and cost
without its weights (none can be downloaded here); pass a real folder to time
the real one. The step is forward + backward + AdamW of the joint loss on the
scan after augmentation, i.e. what ttt_kd_train does per scan.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time

import numpy as np
import torch

from ttt_kd_ros.data.sources import open_source
from ttt_kd_ros.teachers.feature_cache import CachedTeacher
from ttt_kd_ros.teachers.resolve import resolution_from_flag, resolve
from ttt_kd_ros.training.examples import augmented, build_example, training_scan
from ttt_kd_ros.training.loop import Augmentation, TrainConfig, build_model, scan_loss


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="data-source spec")
    p.add_argument("--teacher", default="random-vits14")
    p.add_argument("--teacher-resolution", type=int, nargs="+", default=[224])
    p.add_argument("--preset", default="ttt_kd_small")
    p.add_argument("--crop-points", type=int, default=0, help="as ttt_kd_train (0 = whole scans)")
    p.add_argument("--kd-points", type=int, default=4096)
    p.add_argument("--scans", type=int, default=3)
    p.add_argument("--label-set", default="semantic_kitti19", help="classes of the timed model")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = open_source(args.data)
    teacher = resolve(args.teacher, resolution_from_flag(args.teacher_resolution), torch.device("cpu"), offline=True)
    config = TrainConfig(preset=args.preset, kd_points=args.kd_points,
                         augment=Augmentation(crop_points=args.crop_points))
    model = build_model(config, teacher.feature_dim, teacher.teacher_id, teacher.resolution,
                        label_set=args.label_set)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        cached = CachedTeacher(teacher, cache_dir)
        for i in range(min(args.scans, len(data))):
            t0 = time.perf_counter()
            scan = data[i]
            if scan.labels is None:  # unlabeled (kitti:): time the step on constant labels
                scan.labels = np.zeros(scan.num_points, np.int64)
                scan.label_set = args.label_set
            scan = training_scan(scan, args.label_set, data.item_name(i))
            t1 = time.perf_counter()
            for view in scan.cameras:
                cached.view_feature_map(view)  # cold: the ViT forward, written to the cache
            t2 = time.perf_counter()
            example = build_example(scan, cached, config.kd_points, np.random.default_rng(i))  # warm: cache reads
            t3 = time.perf_counter()
            step_scan, kd_index, kd_features = augmented(example, np.random.default_rng(i), config.augment)
            optimizer.zero_grad(set_to_none=True)
            terms = scan_loss(model, model, step_scan, kd_index, kd_features, config, torch.device("cpu"))
            terms.total.backward()
            optimizer.step()
            t4 = time.perf_counter()
            entry_bytes = sum(p.stat().st_size for p in cached.cache.root.rglob("*.safetensors")) / max(
                1, cached.cache.stats.computed)
            row = {"scan": data.item_name(i), "points": scan.num_points, "step_points": step_scan.num_points,
                   "cameras": len(scan.cameras), "load_s": t1 - t0, "teacher_forward_s": t2 - t1,
                   "targets_from_cache_s": t3 - t2, "train_step_s": t4 - t3, "cache_bytes_per_image": entry_bytes}
            rows.append(row)
            print(json.dumps(row))
    summary = {k: statistics.median(r[k] for r in rows) for k in rows[0] if isinstance(rows[0][k], (int, float))}
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary.update(teacher=teacher.teacher_id, resolution=teacher.resolution, preset=args.preset,
                   threads=args.threads, torch=torch.__version__)
    print(json.dumps({"median": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
