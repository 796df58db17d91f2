"""Time the per-scan map build and forward+backward passes with maps reused vs rebuilt.

    python -m ttt_kd_ros.tools.benchmark_sparse --points 50000 150000 --threads 2

Test-time training repeats passes over one scan's geometry, so the number
that matters is a pass with reused maps; the rebuild column shows what
building maps inside every pass would cost. Medians over --reps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from ttt_kd_ros.model import TTTKDNet, net_config
from ttt_kd_ros.scan import Scan


def surface_scan(num_points: int, seed: int = 0) -> Scan:
    """Points on a floor, four walls and a few boxes of a 10 m x 10 m x 3 m room (a LiDAR/RGB-D-like surface set)."""
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    per = num_points // 10
    parts.append(np.c_[rng.uniform(0, 10, (per * 3, 2)), np.zeros(per * 3)])  # floor
    for axis, value in ((0, 0.0), (0, 10.0), (1, 0.0), (1, 10.0)):
        wall = np.c_[rng.uniform(0, 10, per), rng.uniform(0, 10, per), rng.uniform(0, 3, per)]
        wall[:, axis] = value
        wall[:, 2] = rng.uniform(0, 3, per)
        parts.append(wall)
    rest = num_points - sum(len(p) for p in parts)
    centers = rng.uniform(1, 9, (6, 2))
    for i in range(6):
        n = rest // 6 if i < 5 else rest - 5 * (rest // 6)
        box = rng.uniform(-0.5, 0.5, (n, 3))
        face = rng.integers(0, 3, n)
        box[np.arange(n), face] = np.sign(box[np.arange(n), face]) * 0.5
        parts.append(box * [1.0, 1.0, 1.5] + [centers[i, 0], centers[i, 1], 0.75])
    pts = np.concatenate(parts).astype(np.float32)
    return Scan(pts, rgb=rng.uniform(0, 1, (len(pts), 3)).astype(np.float32))


def _median_time(fn, reps: int) -> tuple[float, float]:
    """Median (wall, process CPU) seconds; CPU time is the steadier one on a shared machine."""
    wall, cpu = [], []
    for _ in range(reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def _ms(times: tuple[float, float]) -> str:
    return f"{times[0] * 1e3:7.1f} / {times[1] * 1e3:7.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, nargs="+", default=[50_000, 150_000])
    parser.add_argument("--preset", default="ttt_kd_small")
    parser.add_argument("--voxel-size-m", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = TTTKDNet(net_config(args.preset, voxel_size_m=args.voxel_size_m)).to(args.device).train()
    params = sum(p.numel() for p in net.parameters())
    print(f"{args.preset}: {params / 1e6:.2f} M params, voxel {args.voxel_size_m} m, {args.threads} threads")
    for num in args.points:
        scan = surface_scan(num)
        prepared = net.prepare(scan, args.device)
        target = torch.randint(0, net.config.num_classes, (scan.num_points,), device=args.device)

        def sync() -> None:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        def pass_reused(prepared=prepared, target=target) -> None:
            out = net(prepared, with_kd=False)
            torch.nn.functional.cross_entropy(out.logits, target).backward()
            sync()

        def pass_rebuilt(scan=scan, target=target) -> None:
            out = net(net.prepare(scan, args.device), with_kd=False)
            torch.nn.functional.cross_entropy(out.logits, target).backward()
            sync()

        def build(scan=scan) -> None:
            net.prepare(scan, args.device)
            sync()

        pass_reused()  # warm-up
        t_build = _median_time(build, args.reps)
        t_reused = _median_time(pass_reused, args.reps)
        t_rebuilt = _median_time(pass_rebuilt, args.reps)
        print(
            f"{num:>7} points, {prepared.num_voxels:>7} voxels (wall / CPU ms): prepare {_ms(t_build)} | "
            f"fwd+bwd reused maps {_ms(t_reused)} | rebuilt each pass {_ms(t_rebuilt)}"
        )


if __name__ == "__main__":
    main()
