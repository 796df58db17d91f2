"""ttt_kd_pretrain_dense_teacher: train the dense (CNN) stand-in teacher on domain-randomised renders.

The images are ``ttt_kd_pretrain_teacher``'s renders (rooms of data seed
2024 in every named domain plus 600 randomised domains; no 3D training or
evaluation scan comes from them), made once and cached as npz in
``--renders`` (or in ``--out/renders``). The objective is per-pixel
cross-entropy against the rendered classes under strong photometric
augmentation (a random 3x3 colour mixing, grey, exposure, colour offsets,
noise, flips), so a class is never a colour. The run is resumable: the
training state is saved every ``--checkpoint-every`` steps and read back
with ``torch.load(weights_only=True)``. The folder ends with
``dense_teacher.json`` + ``model.safetensors`` (teachers/dense.py) and
``pretrain_report.json``: held-out pixel mIoU of the network's own head and
the patch linear probe / feature similarity of the output the 3D network
distils, per held-out domain.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ttt_kd_ros.metrics import miou
from ttt_kd_ros.teachers.dense import (
    DenseSegNet,
    DenseTeacherConfig,
    load_dense_net,
    patch_outputs,
    read_dense_config,
    save_dense_teacher,
)
from ttt_kd_ros.teachers.probe import fit_patch_probe, patch_miou, similarity_report
from ttt_kd_ros.teachers.teacher import normalise_pixels
from ttt_kd_ros.tools.pretrain_teacher import (
    PretrainConfig,
    RenderSet,
    cached_renders,
    load_render_set,
    majority_classes,
)

IGNORE = 255


@dataclass
class DenseTrainConfig:
    """Optimisation of the dense teacher (the architecture is DenseTeacherConfig's)."""

    steps: int = 3000
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    colour_mix: float = 0.35
    seed: int = 0
    checkpoint_every: int = 100


def augment(images: torch.Tensor, generator: torch.Generator, colour_mix: float) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float in [0, 1] with a random colour mixing matrix, grey, exposure, offsets, noise.

    The named domains differ in palette, light colour and sensor noise; mixing the channels with a random
    matrix per image (identity plus N(0, colour_mix)) makes every palette a plausible input.
    """
    x = images.float() / 255
    b = x.shape[0]
    mix = torch.eye(3).expand(b, 3, 3) + colour_mix * torch.randn(b, 3, 3, generator=generator)
    x = torch.einsum("bij,bjhw->bihw", mix, x)
    grey = (torch.rand(b, 1, 1, 1, generator=generator) < 0.2).float()
    x = grey * x.mean(1, keepdim=True).expand_as(x) + (1 - grey) * x
    x = x * (0.5 + torch.rand(b, 1, 1, 1, generator=generator))
    x = x + 0.2 * (torch.rand(b, 3, 1, 1, generator=generator) - 0.5)
    x = x + 0.05 * torch.rand(b, 1, 1, 1, generator=generator) * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1)


def seeded_net(arch: DenseTeacherConfig, seed: int) -> DenseSegNet:
    """A fresh U-Net whose initial weights depend on ``seed`` only (not on what ran before), so runs repeat."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DenseSegNet(arch)


def _cosine(config: DenseTrainConfig):
    return lambda s: float(0.5 * (1 + np.cos(np.pi * min(1.0, s / config.steps))))


def pixel_predictions(net: DenseSegNet, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, H, W) the head's class per pixel."""
    return _in_batches(net, images, lambda pixels: net(pixels).argmax(1))


def patch_vectors(net: DenseSegNet, config: DenseTeacherConfig, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N * Hp * Wp, D) the patch vectors the 3D network would distil."""
    maps = _in_batches(net, images, lambda pixels: patch_outputs(net, config, pixels))
    return maps.permute(0, 2, 3, 1).flatten(0, 2)


@torch.no_grad()
def _in_batches(net: DenseSegNet, images: torch.Tensor, fn, batch: int = 32) -> torch.Tensor:
    """fn over normalised batches of uint8 images, in eval mode (BN running statistics), concatenated."""
    net.eval()
    return torch.cat([fn(normalise_pixels(images[i:i + batch].float() / 255)) for i in range(0, len(images), batch)])


def dense_report(net: DenseSegNet, config: DenseTeacherConfig, train: RenderSet,
                 held_out: RenderSet) -> dict[str, dict[str, float]]:
    """Per held-out domain: the head's pixel mIoU, and for each output kind the patch probe (fitted on 'source'
    training views only) and the similarity report against the source views."""
    classes = config.num_classes
    source = train.subset("source")
    y_source = majority_classes(source.labels, config.patch, classes)
    fitted = {}
    for output in ("features", "posterior"):
        kind = replace(config, output=output)
        x = patch_vectors(net, kind, source.images)
        fitted[output] = (kind, x, fit_patch_probe(x, y_source, classes))
    report = {}
    for name in held_out.names:
        part = held_out.subset(name)
        pred = pixel_predictions(net, part.images)
        row = {"pixel_miou": round(100 * miou(part.labels.numpy().ravel(), pred.numpy().ravel(), classes), 1)}
        y = majority_classes(part.labels, config.patch, classes)
        for output, (kind, x_source, probe) in fitted.items():
            x = patch_vectors(net, kind, part.images)
            similarity = similarity_report(x, y, x_source, y_source, classes)
            row[f"{output}_probe_miou"] = round(100 * patch_miou(probe, x, y, classes), 1)
            row[f"{output}_within"] = round(similarity.within, 3)
            row[f"{output}_between"] = round(similarity.between, 3)
            row[f"{output}_centroid_agreement"] = round(similarity.centroid_agreement, 3)
        report[name] = row
    return report


def _load_renders(renders: Path | None, out_dir: Path) -> tuple[RenderSet, RenderSet]:
    """Cached renders from ``renders`` (a renders/ folder), else made (or reused) under out_dir/renders."""
    if renders is not None:
        missing = [n for n in ("train.npz", "held_out.npz") if not (renders / n).is_file()]
        if missing:
            raise FileNotFoundError(f"--renders {renders}: missing {missing} (a ttt_kd_pretrain_teacher renders/)")
        return load_render_set(renders / "train.npz"), load_render_set(renders / "held_out.npz")
    train, held, _ = cached_renders(PretrainConfig(), out_dir)
    return train, held


def train_dense_teacher(config: DenseTrainConfig, arch: DenseTeacherConfig, out_dir: Path,
                        renders: Path | None = None, init: Path | None = None, command: str = "",
                        max_minutes: float | None = None, log=print) -> dict | None:
    """Train (resuming a saved state), then write the teacher folder and its report.

    max_minutes stops early with the state saved (for background runs on a shared machine); None is returned
    then, the report when the run completed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    train_set, held_out = _load_renders(renders, out_dir)
    net = load_dense_net(init, read_dense_config(init)) if init is not None else seeded_net(arch, config.seed)
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(config))
    generator = torch.Generator().manual_seed(config.seed)
    state_path, history, start, train_s = out_dir / "train_state.pt", [], 0, 0.0
    key = json.dumps({"train": asdict(config), "arch": asdict(arch), "init": str(init)}, sort_keys=True)
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["key"] != key:
            raise ValueError(f"{state_path}: saved for another configuration; remove it or use another --out")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        start, train_s, history = int(state["step"]), float(state["train_s"]), json.loads(state["history"])
        log(f"resumed at step {start}")

    def save_state(step: int) -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "generator": generator.get_state(), "step": step, "train_s": train_s,
                    "history": json.dumps(history), "key": key}, tmp)
        tmp.replace(state_path)

    began = time.perf_counter()
    for step in range(start, config.steps):
        t1 = time.perf_counter()
        pick = torch.randint(len(train_set.images), (config.batch_size,), generator=generator)
        images, labels = train_set.images[pick], train_set.labels[pick]
        if step % 2:
            images, labels = images.flip(-1), labels.flip(-1)
        pixels = normalise_pixels(augment(images, generator, config.colour_mix))
        loss = F.cross_entropy(net(pixels), labels, ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        train_s += time.perf_counter() - t1
        history.append(float(loss.detach()))
        done = step + 1
        if done % config.checkpoint_every == 0 and done < config.steps:
            save_state(done)
            pred = pixel_predictions(net, held_out.images)
            net.train()
            log(json.dumps({"step": done, "train_s": round(train_s), "loss": round(float(np.mean(history[-100:])), 3),
                            "held_out_pixel_miou": round(100 * miou(held_out.labels.numpy().ravel(),
                                                                     pred.numpy().ravel(), arch.num_classes), 1)}))
            if max_minutes is not None and time.perf_counter() - began > 60 * max_minutes:
                log(f"stopped at step {done} after {max_minutes} min; run again to resume")
                return None
    net.eval()
    save_dense_teacher(net, arch, out_dir)
    tail = max(1, min(50, len(history) // 10))  # mean loss over the first / last tenth (at most 50 steps)
    report = {
        "what": "dense stand-in teacher: a U-Net trained on domain-randomised synthetic renders (not DINOv2)",
        "objective": "per-pixel cross-entropy on the rendered classes under colour-mixing augmentation",
        "train": asdict(config),
        "arch": asdict(arch),
        "init": str(init) if init is not None else None,
        "parameters": sum(p.numel() for p in net.parameters()),
        "train_images": len(train_set.images),
        "held_out_images": len(held_out.images),
        "train_s": round(train_s, 1),
        "loss_first": float(np.mean(history[:tail])) if history else None,
        "loss_last": float(np.mean(history[-tail:])) if history else None,
        "held_out": dense_report(net, arch, train_set, held_out),
        "note": "pixel_miou: the network's own head on held-out rooms; *_probe_miou: ridge probe from the patch "
                "vectors of that output to the patch's majority class, fitted on 'source' training views only; "
                "within / between / centroid_agreement as in ttt_kd_pretrain_teacher's report",
        "command": command,
    }
    (out_dir / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    state_path.unlink(missing_ok=True)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ttt_kd_pretrain_dense_teacher", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="teacher folder to write; a run left there resumes")
    p.add_argument("--renders", type=Path, default=None,
                   help="a ttt_kd_pretrain_teacher renders/ folder (default: render into --out/renders)")
    p.add_argument("--init", type=Path, default=None, help="start from this dense teacher folder's weights")
    for name, value in asdict(DenseTrainConfig()).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--output", choices=("features", "posterior"), default="features",
                   help="what the folder's teacher gives the 3D network (resolve can override)")
    p.add_argument("--patch", type=int, default=DenseTeacherConfig.patch, help="pixels per side of a patch")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (state saved) after this long")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = DenseTrainConfig(**{k: getattr(args, k) for k in asdict(DenseTrainConfig())})
    arch = read_dense_config(args.init) if args.init is not None else DenseTeacherConfig()
    arch = replace(arch, output=args.output, patch=args.patch)
    command = shlex.join(["ttt_kd_pretrain_dense_teacher", *(sys.argv[1:] if argv is None else argv)])
    report = train_dense_teacher(config, arch, args.out, renders=args.renders, init=args.init, command=command,
                                 max_minutes=args.max_minutes, log=lambda m: print(m, flush=True))
    if report is None:
        return 0
    print(json.dumps(report["held_out"], indent=1))
    print(f"teacher written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
