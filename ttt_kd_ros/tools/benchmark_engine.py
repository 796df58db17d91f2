"""ttt_kd_benchmark_engine: what one scan costs, stage by stage, on this machine.

    ttt_kd_benchmark_engine --points 50000 150000 --cameras 1 6 --reps 3 --teacher random-vits14

Builds a synthetic room (points on floor, ceiling, walls and boxes; random
images from 1 or 6 cameras around the sensor), then times each stage the
Segmenter runs: voxelise, neighbour maps, teacher feature maps, projection +
sampling, a TTT step (reusing the scan's maps), a TTT step that rebuilds the
maps first (what a naive loop would do), the final forward and the in-place
restore. Medians over --reps after one warm-up; peak memory is CUDA's
max_memory_allocated on a GPU, the process's peak RSS on a CPU.
``random-vits14`` is a DINOv2 ViT-S/14 with random weights: the realistic
teacher cost without any download.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ttt_kd_ros.adapt import TTTKD, AdaptConfig
from ttt_kd_ros.model import PRESETS, PreparedScan, TTTKDNet, net_config, point_inputs
from ttt_kd_ros.scan import CameraIntrinsics, CameraView, Scan
from ttt_kd_ros.segmenter import resolve_device
from ttt_kd_ros.sparse import voxelize
from ttt_kd_ros.targets import distillation_targets
from ttt_kd_ros.teachers.resolve import RANDOM_TEACHERS, resolve

ROOM_M = (12.0, 8.0, 3.0)
SENSOR_M = (6.0, 4.0, 1.5)
BOXES_M = (  # (min corner, size) of furniture-like boxes
    ((2.0, 1.0, 0.0), (1.5, 0.8, 0.9)),
    ((8.5, 5.5, 0.0), (2.0, 1.2, 0.75)),
    ((4.0, 6.0, 0.0), (0.6, 0.6, 1.8)),
    ((9.0, 1.5, 0.0), (1.0, 1.0, 0.45)),
)
IMAGE_WH = (640, 480)
FOCAL_PX = 320.0  # 90 degree horizontal field of view: six cameras 60 degrees apart overlap


def room_points(num_points: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 3) float32 points spread by area over the room's surfaces and the boxes' visible faces, 1 cm noise."""
    lx, ly, lz = ROOM_M
    rects: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [  # (origin, edge u, edge v)
        (np.zeros(3), np.array([lx, 0, 0]), np.array([0, ly, 0])),  # floor
        (np.array([0, 0, lz]), np.array([lx, 0, 0]), np.array([0, ly, 0])),  # ceiling
        (np.zeros(3), np.array([lx, 0, 0]), np.array([0, 0, lz])),
        (np.array([0, ly, 0]), np.array([lx, 0, 0]), np.array([0, 0, lz])),
        (np.zeros(3), np.array([0, ly, 0]), np.array([0, 0, lz])),
        (np.array([lx, 0, 0]), np.array([0, ly, 0]), np.array([0, 0, lz])),
    ]
    for corner, size in BOXES_M:
        c, (sx, sy, sz) = np.array(corner), size
        rects += [
            (c + np.array([0, 0, sz]), np.array([sx, 0, 0]), np.array([0, sy, 0])),  # top
            (c, np.array([sx, 0, 0]), np.array([0, 0, sz])),
            (c + np.array([0, sy, 0]), np.array([sx, 0, 0]), np.array([0, 0, sz])),
            (c, np.array([0, sy, 0]), np.array([0, 0, sz])),
            (c + np.array([sx, 0, 0]), np.array([0, sy, 0]), np.array([0, 0, sz])),
        ]
    areas = np.array([np.linalg.norm(np.cross(u, v)) for _, u, v in rects])
    which = rng.choice(len(rects), size=num_points, p=areas / areas.sum())
    origin = np.stack([r[0] for r in rects])[which]
    edge_u = np.stack([r[1] for r in rects])[which]
    edge_v = np.stack([r[2] for r in rects])[which]
    st = rng.uniform(0.0, 1.0, (num_points, 2))
    points = origin + st[:, :1] * edge_u + st[:, 1:] * edge_v + rng.normal(0.0, 0.01, (num_points, 3))
    return points.astype(np.float32)


def ring_cameras(num_cameras: int, rng: np.random.Generator) -> list[CameraView]:
    """Horizontal cameras at the sensor, evenly spread in yaw, with random images."""
    w, h = IMAGE_WH
    intrinsics = CameraIntrinsics(K=np.array([[FOCAL_PX, 0, w / 2], [0, FOCAL_PX, h / 2], [0, 0, 1]]),
                                  width_px=w, height_px=h)
    centre = np.array(SENSOR_M)
    views = []
    for i in range(num_cameras):
        yaw = 2 * np.pi * i / num_cameras
        forward = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
        rotation = np.stack([right, np.array([0.0, 0.0, -1.0]), forward])  # rows: camera x (right), y (down), z
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = rotation, -rotation @ centre
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        views.append(CameraView(image, intrinsics, pose, name=f"cam{i}"))
    return views


def synthetic_scan(num_points: int, num_cameras: int, seed: int = 0) -> Scan:
    rng = np.random.default_rng(seed)
    points = room_points(num_points, rng)
    rgb = rng.uniform(0, 1, (num_points, 3)).astype(np.float32)
    return Scan(points, rgb=rgb, cameras=ring_cameras(num_cameras, rng))


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return peak_kib / 1024


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA when asked (what SegmenterConfig.amp does); a no-op elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bench_case(model: TTTKDNet, teacher, scan: Scan, adapt: AdaptConfig, reps: int,
               device: torch.device, warmup: int = 1, amp: bool = False) -> dict[str, float]:
    """Median seconds per stage for one scan (after ``warmup`` untimed reps), plus sizes and peak memory."""
    config = model.config
    strategy = TTTKD(model, adapt)
    rebuild = TTTKD(model, dataclasses.replace(adapt, steps=1))
    samples: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        samples.setdefault(name, []).append(seconds)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    points = torch.from_numpy(scan.points_xyz_m).to(device)
    inputs = torch.from_numpy(point_inputs(scan, config)).to(device)
    sizes: dict[str, float] = {}
    for rep in range(reps + warmup):
        keep = rep >= warmup  # warm-up reps fill caches, the allocator and lazy initialisation
        t_vox, voxels = _timed(lambda: voxelize(points, config.voxel_size_m), device)
        t_maps, geometry = _timed(lambda v=voxels: model.sparse_backend.build_geometry(v.coords, config.num_levels),
                                  device)
        prepared = PreparedScan(voxels.voxel_mean(inputs), voxels, geometry, device)
        teacher.clear_cache()
        t_teacher, _ = _timed(lambda: [teacher.feature_map(c.image_rgb) for c in scan.cameras], device)
        t_proj, targets = _timed(lambda: distillation_targets(scan, teacher), device)
        with _autocast(device, amp):
            result = strategy.adapt(prepared, targets)
            t_fwd, _ = _timed(lambda p=prepared: strategy.predict(p).logits.argmax(dim=1), device)
        t_restore, _ = _timed(strategy.reset, device)

        def rebuilt_step(pts: torch.Tensor = points, tg=targets) -> None:
            v = voxelize(pts, config.voxel_size_m)
            g = model.sparse_backend.build_geometry(v.coords, config.num_levels)
            rebuild.adapt(PreparedScan(v.voxel_mean(inputs), v, g, device), tg)

        t_rebuild, _ = _timed(rebuilt_step, device)
        rebuild.reset()
        with _autocast(device, amp):
            t_plain, _ = _timed(lambda p=prepared: plain_forward_backward(model, p), device)
        strategy.reset()  # the train-mode pass moved BN running statistics: back to the source state
        if keep:
            record("voxelise", t_vox)
            record("maps", t_maps)
            record("teacher", t_teacher)
            record("projection", t_proj)
            record("ttt_step", statistics.median(result.step_times_s))
            record("ttt_step_rebuild", t_rebuild)
            record("forward_backward", t_plain)
            record("forward", t_fwd)
            record("restore", t_restore)
        sizes = {"voxels": voxels.num_voxels, "visible": targets.num_targets, "steps": result.steps_run}
    stats = {name: statistics.median(values) for name, values in samples.items()}
    stats.update(sizes)
    stats["peak_mib"] = _peak_memory_mib(device)
    return stats


def plain_forward_backward(model: TTTKDNet, prepared: PreparedScan) -> None:
    """The yardstick of a TTT step: one training-mode forward of the segmentation network on the whole scan and a
    backward through every parameter (a CE-shaped loss on all points), no optimiser, no distillation."""
    was_training = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    logits = model(prepared, with_kd=False).logits
    logits.float().logsumexp(dim=1).mean().backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)


def summarise(stats: dict[str, float], steps: int) -> dict[str, float]:
    """Per-scan total for ``steps`` steps and the share of stages that are not network passes."""
    non_network = stats["voxelise"] + stats["maps"] + stats["projection"] + stats["restore"]
    network = stats["teacher"] + steps * stats["ttt_step"] + stats["forward"]
    total = non_network + network
    # The rebuilt-maps step does the same pass plus voxelise + maps; deriving the ratio from the medians is
    # steadier on a shared CPU than dividing two separately timed passes (both are printed).
    derived = stats["ttt_step"] / (stats["ttt_step"] + stats["voxelise"] + stats["maps"])
    return {"total": total, "non_network_share": non_network / total, "reuse_ratio": derived,
            "reuse_ratio_measured": stats["ttt_step"] / stats["ttt_step_rebuild"],
            "step_vs_forward_backward": stats["ttt_step"] / stats["forward_backward"],
            "voxels_per_s_step": stats["voxels"] / stats["ttt_step"]}


HEADER = ("| points | cams | voxels | visible | voxelise | maps | teacher | projection | TTT step | "
          "step + rebuilt maps | reuse / rebuild (derived; measured) | forward + backward | step / (fwd + bwd) | "
          "voxels/s per step | forward | restore | scan total ({steps} steps) | non-network share | peak mem |")


def format_row(points: int, cameras: int, stats: dict[str, float], summary: dict[str, float]) -> str:
    def ms(name: str) -> str:
        return f"{1000 * stats[name]:.1f}"

    return (f"| {points // 1000}k | {cameras} | {int(stats['voxels'])} | {int(stats['visible'])} | {ms('voxelise')} "
            f"| {ms('maps')} | {ms('teacher')} | {ms('projection')} | {ms('ttt_step')} | {ms('ttt_step_rebuild')} | "
            f"{summary['reuse_ratio']:.2f}; {summary['reuse_ratio_measured']:.2f} | {ms('forward_backward')} | "
            f"{summary['step_vs_forward_backward']:.2f} | {summary['voxels_per_s_step'] / 1000:.0f}k | "
            f"{ms('forward')} | "
            f"{ms('restore')} | {1000 * summary['total']:.0f} | {100 * summary['non_network_share']:.1f} % | "
            f"{stats['peak_mib']:.0f} MiB |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ttt_kd_benchmark_engine", description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, nargs="+", default=[50_000, 150_000], help="points per scan")
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 6], help="cameras per scan")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    parser.add_argument("--teacher", default="random-vits14", choices=sorted(RANDOM_TEACHERS),
                        help="random-weight teacher (random-vits14: DINOv2 ViT-S/14 cost)")
    parser.add_argument("--teacher-resolution", type=int, default=224, help="teacher input short side, pixels")
    parser.add_argument("--preset", default="ttt_kd_small", choices=sorted(PRESETS), help="network preset")
    parser.add_argument("--steps", type=int, nargs="+", default=[3], help="TTT steps per scan (one row per value)")
    parser.add_argument("--backend", default="torch", choices=("torch", "minkowski", "spconv"),
                        help="sparse convolution backend (minkowski / spconv when importable)")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast for the steps and forward (CUDA only)")
    parser.add_argument("--table", type=Path, default=None, metavar="JSONL",
                        help="only print the markdown table of an earlier --json file")
    parser.add_argument("--json", type=Path, default=None,
                        help="append one JSON line per row (settings, stage medians, totals) to this file")
    parser.add_argument("--kd-points", type=int, default=AdaptConfig().kd_points_per_step,
                        help="visible points sampled per step (0 = all)")
    parser.add_argument("--params", default="all",
                        help="backbone parameters updated (all, norm, norm_decoder, decoder, decoder_last)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:<i>")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.reps < 1 or min(args.steps) < 1 or args.warmup < 0:
        parser.error(f"--reps and --steps must be >= 1 and --warmup >= 0, got {args.reps}, {args.steps}, "
                     f"{args.warmup}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table is not None:
        print(markdown_from_json(args.table), end="")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device, "--device")
    teacher = resolve(args.teacher, args.teacher_resolution, device)
    torch.manual_seed(0)
    model = TTTKDNet(net_config(args.preset, teacher_dim=teacher.feature_dim, backend=args.backend)).to(device)
    n_params = sum(p.numel() for p in model.backbone.parameters())
    print(f"device {device} ({torch.get_num_threads()} CPU threads), net {args.preset} ({n_params / 1e6:.2f} M "
          f"backbone params, voxel {model.config.voxel_size_m} m), teacher {teacher.teacher_id} at short side "
          f"{args.teacher_resolution} px on {IMAGE_WH[0]}x{IMAGE_WH[1]} images, backend {args.backend}, "
          f"amp {args.amp}, {args.kd_points or 'all'} points per step, params={args.params}; medians of {args.reps} "
          f"reps after {args.warmup} warm-up, ms", flush=True)
    for steps in args.steps:
        adapt = AdaptConfig(strategy="ttt_kd", steps=steps, kd_points_per_step=args.kd_points, params=args.params)
        print(HEADER.format(steps=steps))
        print("|" + " --- |" * (HEADER.count("|") - 1))
        for num_points in args.points:
            for num_cameras in args.cameras:
                scan = synthetic_scan(num_points, num_cameras)
                stats = bench_case(model, teacher, scan, adapt, args.reps, device, args.warmup, args.amp)
                summary = summarise(stats, steps)
                print(format_row(num_points, num_cameras, stats, summary), flush=True)
                if args.json is not None:
                    _append_json(args.json, {"device": str(device), "device_name": _device_name(device),
                                             "preset": args.preset, "backend": args.backend, "amp": args.amp,
                                             "teacher": teacher.teacher_id, "points": num_points,
                                             "cameras": num_cameras, "steps": steps, "stats_s": stats,
                                             "summary": summary})
    return 0


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _append_json(path: Path, record: dict) -> None:
    """One line per benchmark row, so several runs (backends, AMP) collect into one file for the table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def markdown_from_json(path: Path) -> str:
    """The rows of a --json file as one markdown table: scan total and TTT step per setting, peak memory."""
    lines = ["| device | backend | amp | points | cameras | steps | TTT step (ms) | forward + backward (ms) | "
             "step / (fwd + bwd) | voxels/s per step | forward (ms) | teacher (ms) | scan total (ms) | "
             "peak mem (MiB) |", "|" + " --- |" * 14]
    for text in path.read_text().splitlines():
        r = json.loads(text)
        st, sm = r["stats_s"], r["summary"]
        amp = "on" if r["amp"] else "off"
        lines.append(f"| {r['device_name']} | {r['backend']} | {amp} | {r['points'] // 1000}k | {r['cameras']} | "
                     f"{r['steps']} | {1000 * st['ttt_step']:.1f} | {1000 * st['forward_backward']:.1f} | "
                     f"{sm['step_vs_forward_backward']:.2f} | {sm['voxels_per_s_step'] / 1000:.0f}k | "
                     f"{1000 * st['forward']:.1f} | "
                     f"{1000 * st['teacher']:.1f} | {1000 * sm['total']:.0f} | {st['peak_mib']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
