"""Time the sparse backbone per scan: map build, passes with maps reused vs rebuilt, and a whole adaptation step.

    python -m ttt_kd_ros.tools.benchmark_sparse --points 50000 150000 --threads 2
    git show 4d599dd:ttt_kd_ros/sparse/torch_backend.py > /tmp/torch_backend_4d599dd.py
    python -m ttt_kd_ros.tools.benchmark_sparse --scan room --points 16000 120000 --threads 1 \
        --checkpoint ttt_kd_ros/checkpoints/ttt_kd_small_synthetic.safetensors \
        --conv-path baseline auto table --baseline-backend /tmp/torch_backend_4d599dd.py --count-kernels

Test-time training repeats passes over one scan's geometry, so the numbers
that matter are a pass and a step with reused maps; the rebuild column shows
what building maps inside every pass would cost. *step* is one TTT-KD-like
update: backbone forward, the KD head on 8192 sampled points against random
unit targets, backward through the backbone (heads frozen), Adam. Medians over
--reps of wall and process CPU time, the conv paths interleaved rep by rep so
that a shared machine's load falls on all of them alike.

--per-layer times every distinct conv of the net alone too (what a device's
ConvPolicy is chosen from). --conv-path picks the torch backend's formulation: auto (the device's
policy), pairs (one matmul per kernel offset), table (one gather and one
matmul per conv), baseline (the TorchGeometry of another version's
torch_backend.py, --baseline-backend, over the same maps). --count-kernels
profiles one step per path and prints the operations that launch kernels, per
phase: outermost aten ops on a CPU (about one GPU kernel each), and the CUDA
kernels the profiler saw on a GPU.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from ttt_kd_ros.model import PreparedScan, TTTKDNet, net_config
from ttt_kd_ros.scan import Scan

KD_POINTS_PER_STEP = 8192  # AdaptConfig.kd_points_per_step's default
CONV_RANGE = "sparse_conv"  # the profiler range LabelledGeometry puts around every conv

# Operations that only make a view, allocate or read metadata: no kernel of their own on a GPU.
NO_KERNEL_OPS = frozenset({
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::view", "aten::reshape", "aten::_reshape_alias",
    "aten::as_strided", "aten::t", "aten::transpose", "aten::permute", "aten::expand", "aten::slice", "aten::select",
    "aten::unsqueeze", "aten::squeeze", "aten::detach", "aten::detach_", "aten::alias", "aten::resize_", "aten::to",
    "aten::lift_fresh", "aten::result_type", "aten::_unsafe_view", "aten::contiguous", "aten::flatten",
    "aten::narrow", "aten::unbind", "aten::split", "aten::chunk", "aten::is_nonzero", "aten::numpy_T", "aten::set_",
    "aten::size", "aten::stride", "aten::view_as", "aten::expand_as", "aten::is_same_size",
    "aten::_has_compatible_shallow_copy_type", "aten::_local_scalar_dense", "aten::item", "aten::resolve_conj",
    "aten::resolve_neg", "aten::conj", "aten::new_empty", "aten::promote_types", "aten::new_empty_strided",
})


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


def room_scan(num_points: int, seed: int = 0) -> Scan:
    """The engine benchmark's 12 x 8 x 3 m room (floor, ceiling, walls, four boxes, 1 cm noise), random colours."""
    from ttt_kd_ros.tools.benchmark_engine import room_points

    rng = np.random.default_rng(seed)
    points = room_points(num_points, rng)
    return Scan(points, rgb=rng.uniform(0, 1, (len(points), 3)).astype(np.float32))


SCANS: dict[str, Callable[[int], Scan]] = {"surface": surface_scan, "room": room_scan}


def _median_times(fns: dict[str, Callable[[], None]], reps: int) -> dict[str, tuple[float, float]]:
    """Median (wall, process CPU) seconds of each fn, timed in turn within every rep.

    Interleaving puts every candidate under the same load of a shared machine; CPU time is the steadier column.
    """
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in fns}


def _ms(times: tuple[float, float]) -> str:
    return f"{times[0] * 1e3:7.1f} / {times[1] * 1e3:7.1f}"


class LabelledGeometry:
    """A geometry whose convs are "sparse_conv" ranges in a profile; everything else is the wrapped geometry's.

    Their backward shows up as the autograd node _SparseConvFunctionBackward (in this and older versions), so a
    step's kernels can be split into the sparse convs' and the rest. ``calls`` keeps every distinct conv it ran,
    (method, level, Cin, Cout) in first-call order, for --per-layer.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: dict[tuple[str, int, int, int], None] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not name.endswith("_conv"):
            return attr

        def labelled(x: torch.Tensor, weight: torch.Tensor, level: int) -> torch.Tensor:
            self.calls.setdefault((name, level, weight.shape[1], weight.shape[2]))
            with record_function(CONV_RANGE):
                return attr(x, weight, level)

        return labelled


def load_baseline(path: str) -> ModuleType | None:
    """Another version's torch_backend.py (e.g. from ``git show REV:ttt_kd_ros/sparse/torch_backend.py``), or None."""
    if not path:
        return None
    spec = importlib.util.spec_from_file_location("baseline_torch_backend", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--baseline-backend: expected a torch_backend.py file, got {path!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def with_conv_path(prepared: PreparedScan, path: str, baseline: ModuleType | None) -> PreparedScan:
    """``prepared`` with its own geometry over the same maps, running conv path ``path``.

    "auto": the device's policy; "pairs" / "table": forced; "baseline": the --baseline-backend file's TorchGeometry.
    """
    from ttt_kd_ros.sparse.torch_backend import PAIRS_ONLY, TABLE_ONLY, TorchGeometry, policy_for

    if not isinstance(prepared.geometry, TorchGeometry):
        raise ValueError(f"--conv-path {path}: only the torch backend has conv paths, got {type(prepared.geometry)}")
    maps = prepared.geometry.maps
    if path == "baseline":
        if baseline is None:
            raise ValueError("--conv-path baseline: needs --baseline-backend FILE")
        return dataclasses.replace(prepared, geometry=LabelledGeometry(baseline.TorchGeometry(maps)))
    policy = {"pairs": PAIRS_ONLY, "table": TABLE_ONLY}.get(path) or policy_for(prepared.device)
    return dataclasses.replace(prepared, geometry=LabelledGeometry(TorchGeometry(maps, policy)))


@dataclass
class AdaptStep:
    """One TTT-KD-like update on a prepared scan, split in the phases the kernel count reports."""

    net: TTTKDNet
    prepared: PreparedScan
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    point_index: torch.Tensor
    targets: torch.Tensor
    loss: torch.Tensor | None = None

    @classmethod
    def build(cls, net: TTTKDNet, prepared: PreparedScan, seed: int = 0) -> AdaptStep:
        """Backbone parameters trainable (heads frozen), BN in training mode, Adam, random unit KD targets."""
        from ttt_kd_ros.adapt.config import AdaptConfig
        from ttt_kd_ros.adapt.verbs import collect_params, make_optimizer

        params, _ = collect_params(net, "all")
        gen = torch.Generator().manual_seed(seed)
        num = min(KD_POINTS_PER_STEP, prepared.num_points)
        point_index = torch.randperm(prepared.num_points, generator=gen)[:num].to(prepared.device)
        targets = torch.randn(num, net.config.teacher_dim, generator=gen).to(prepared.device)
        return cls(net, prepared, params, make_optimizer(params, AdaptConfig()), point_index, targets)

    def forward(self) -> None:
        """Modes and frozen heads set first (as every adapt() does), since a plain pass may have run in between."""
        from ttt_kd_ros.adapt.verbs import configure_model
        from ttt_kd_ros.losses import kd_loss

        configure_model(self.net, self.params, bn_train=True)
        self.loss = kd_loss(self.net.kd_features(self.prepared, self.point_index), self.targets)

    def backward(self) -> None:
        self.loss.backward()

    def optimizer_step(self) -> None:
        """Adam, then zero the gradients for the next step (as the adaptation loop does, before its backward)."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)

    def __call__(self) -> None:
        self.forward()
        self.backward()
        self.optimizer_step()


def _in_conv(name: str) -> bool:
    return name == CONV_RANGE or "_SparseConvFunctionBackward" in name


def _kernel_ops(events: list) -> tuple[collections.Counter, int]:
    """(names of the outermost aten ops that do work, how many of them ran inside a sparse conv).

    Outermost: what Python or the autograd engine dispatched. A view or metadata op (NO_KERNEL_OPS) counts what
    it runs instead (``to`` that copies counts its copy); an op that does work counts once, however it is built
    inside (an ``index_add_`` that runs a ``scatter_add_``).
    """
    counts: collections.Counter = collections.Counter()
    in_convs = 0

    def visit(event, in_conv: bool) -> None:
        nonlocal in_convs
        in_conv = in_conv or _in_conv(event.name)
        if event.name.startswith("aten::") and event.name not in NO_KERNEL_OPS:
            counts[event.name] += 1
            in_convs += int(in_conv)
            return
        for child in event.cpu_children:
            visit(child, in_conv)

    for event in events:
        if event.cpu_parent is None:
            visit(event, False)
    return counts, in_convs


def _profile(fn: Callable[[], None], device: torch.device) -> tuple[collections.Counter, int, int | None]:
    """(kernel-launching aten ops by name, how many in sparse convs, CUDA kernels or None on a CPU) of fn()."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = list(prof.events())
    cuda = None
    if device.type == "cuda":
        cuda = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    ops, in_convs = _kernel_ops(events)
    return ops, in_convs, cuda


def count_kernels(step: AdaptStep, device: torch.device) -> list[str]:
    """One line per phase of ``step`` (after a warm-up step) with its kernel counts and the most frequent ops."""
    step()  # warm-up: tables, workspace buffers and optimizer state exist from here on
    lines = []
    totals = collections.Counter()
    for phase in (step.forward, step.backward, step.optimizer_step):
        ops, in_convs, cuda = _profile(phase, device)
        totals.update({"ops": sum(ops.values()), "convs": in_convs, "cuda": cuda or 0})
        top = ", ".join(f"{name.removeprefix('aten::')} {n}" for name, n in ops.most_common(6))
        cuda_text = "" if cuda is None else f", {cuda} CUDA kernels"
        lines.append(f"    {phase.__name__:>14}: {sum(ops.values()):5d} kernel ops, {in_convs:5d} in sparse convs"
                     f"{cuda_text} ({top})")
    cuda_text = "" if device.type != "cuda" else f", {totals['cuda']} CUDA kernels"
    lines.append(f"    {'step':>14}: {totals['ops']:5d} kernel ops, {totals['convs']:5d} in sparse convs{cuda_text}")
    return lines


def build_net(args: argparse.Namespace) -> TTTKDNet:
    """The checkpoint's net when given (weights do not change the cost, its config does), else the preset's."""
    if args.checkpoint:
        from ttt_kd_ros.checkpoint_format import load_checkpoint

        return load_checkpoint(args.checkpoint, device=args.device)
    return TTTKDNet(net_config(args.preset, voxel_size_m=args.voxel_size_m)).to(args.device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _conv_fwd_bwd(conv: Callable[..., torch.Tensor], x: torch.Tensor, weight: torch.Tensor, level: int) -> None:
    out = conv(x, weight, level)
    out.backward(torch.ones_like(out))
    _sync(x.device)


def per_layer(variants: dict[str, PreparedScan], reps: int) -> list[str]:
    """Forward + backward of each distinct conv of the net alone, per conv path, with the map's fill.

    The numbers a device's ConvPolicy is chosen from: which formulation wins for which fill and widths.
    """
    probe = next(iter(variants.values())).geometry
    lines = []
    for method, level, cin, cout in probe.calls:
        kind = "subm" if method == "subm_conv" else "down"
        fill = (probe.maps.subm if kind == "subm" else probe.maps.down)[level].fill
        rows = probe.num_voxels(level + 1 if method == "up_conv" else level)
        x = torch.randn(rows, cin, device=probe.coords(0).device, requires_grad=True)
        weight = torch.randn(27 if kind == "subm" else 8, cin, cout, device=x.device, requires_grad=True)

        fns = {path: functools.partial(_conv_fwd_bwd, getattr(variant.geometry, method), x, weight, level)
               for path, variant in variants.items()}
        for fn in fns.values():
            fn()  # warm-up
        medians = _median_times(fns, reps)
        times = " | ".join(f"{path} {_ms(t)}" for path, t in medians.items())
        lines.append(f"    {method:>9} level {level} {cin:>3} -> {cout:<3} fill {fill:4.2f}: {times}")
    return lines


def bench_scan(net: TTTKDNet, scan: Scan, args: argparse.Namespace, baseline: ModuleType | None) -> list[str]:
    """Timings (and kernel counts) of one scan under every --conv-path, as printable lines."""
    device = torch.device(args.device)
    prepared = net.prepare(scan, device)
    target = torch.randint(0, net.config.num_classes, (scan.num_points,), device=device)

    def fwd_bwd(prep: PreparedScan) -> None:
        """Training mode, every parameter trainable: the plain pass, whatever a step set before it."""
        net.train()
        for p in net.parameters():
            p.requires_grad_(True)
        out = net(prep, with_kd=False)
        torch.nn.functional.cross_entropy(out.logits, target).backward()
        _sync(device)

    fwd_bwd(prepared)  # warm-up
    once = _median_times({
        "prepare": lambda: (net.prepare(scan, device), _sync(device)),
        "rebuilt": lambda: fwd_bwd(net.prepare(scan, device)),
    }, args.reps)
    lines = [f"{scan.num_points:>7} points, {prepared.num_voxels:>7} voxels (wall / CPU ms): prepare "
             f"{_ms(once['prepare'])} | fwd+bwd rebuilt each pass {_ms(once['rebuilt'])}"]
    variants = {path: with_conv_path(prepared, path, baseline) for path in args.conv_path}
    steps = {path: AdaptStep.build(net, variant) for path, variant in variants.items()}
    timed: dict[str, Callable[[], None]] = {}
    for path, variant in variants.items():
        fwd_bwd(variant)  # warm-up: tables and workspace buffers
        steps[path]()  # warm-up: Adam state
        timed[f"pass {path}"] = lambda v=variant: fwd_bwd(v)
        timed[f"step {path}"] = lambda s=steps[path]: (s(), _sync(device))
    medians = _median_times(timed, args.reps)
    for path in variants:
        lines.append(f"    conv path {path:>8}: fwd+bwd reused maps {_ms(medians[f'pass {path}'])} | "
                     f"step {_ms(medians[f'step {path}'])}")
        if args.count_kernels:
            lines += count_kernels(steps[path], device)
    if args.per_layer:
        lines += ["    per conv, forward + backward alone (wall / CPU ms):", *per_layer(variants, args.reps)]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, nargs="+", default=[50_000, 150_000])
    parser.add_argument("--scan", choices=sorted(SCANS), default="surface")
    parser.add_argument("--preset", default="ttt_kd_small")
    parser.add_argument("--checkpoint", default="", help="a .safetensors net to time instead of --preset's")
    parser.add_argument("--voxel-size-m", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--conv-path", nargs="+", choices=["auto", "pairs", "table", "baseline"], default=["auto"],
                        help="torch backend conv formulations to time, interleaved rep by rep")
    parser.add_argument("--baseline-backend", default="",
                        help="another version's torch_backend.py, timed as --conv-path baseline")
    parser.add_argument("--count-kernels", action="store_true", help="profile one step and print its kernel counts")
    parser.add_argument("--per-layer", action="store_true",
                        help="also time every distinct conv of the net alone, per conv path")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build_net(args)
    params = sum(p.numel() for p in net.parameters())
    print(f"{net.config.name}: {params / 1e6:.2f} M params, voxel {net.config.voxel_size_m} m, "
          f"{args.threads} threads, {args.device}, torch {torch.__version__}")
    baseline = load_baseline(args.baseline_backend)
    for num in args.points:
        print("\n".join(bench_scan(net, SCANS[args.scan](num), args, baseline)), flush=True)


if __name__ == "__main__":
    main()
