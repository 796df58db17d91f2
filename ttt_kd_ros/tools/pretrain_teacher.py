"""ttt_kd_pretrain_teacher: pre-train the small DINOv2-architecture stand-in teacher on synthetic renders.

Real DINOv2 weights cannot be downloaded where this package is built, and a
random-weight ViT gives features that carry colour and position, not
meaning. The stand-in is a transformers ``Dinov2Model`` (so ``load_teacher``
reads it like any DINOv2 folder) trained on rendered views of ALL synthetic
domains, as a foundation model has seen every kind of building and camera
while the 3D network has not. Objective (docs/TRAINING.md says why):

- patch-level class distribution: a linear head on each patch token predicts
  the histogram of pixel classes inside that patch (soft cross-entropy), so
  patch features become semantic; the head is dropped after training;
- photometric invariance: two colour-augmented copies of each image (gain,
  offset, channel swap, grey, noise: the ways domains differ in images) must
  give the same patch tokens (cosine), so features are domain-robust.

The saved folder holds config.json + model.safetensors (save_pretrained) and
pretrain_report.json (objective, data, losses, linear-probe accuracy).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ttt_kd_ros.data.synthetic import DOMAINS, scan_seed
from ttt_kd_ros.data.synthetic.renders import render_labeled_images
from ttt_kd_ros.labels import SYNTHETIC_INDOOR
from ttt_kd_ros.teacher import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class PretrainConfig:
    """Architecture, data and optimisation of the stand-in teacher."""

    hidden_size: int = 96
    num_layers: int = 4
    num_heads: int = 4
    patch_size: int = 8
    rooms_per_domain: int = 24
    views_per_room: int = 4
    steps: int = 160
    batch_size: int = 12
    lr: float = 1e-3
    weight_decay: float = 0.05
    invariance_weight: float = 1.0
    seed: int = 0
    data_seed: int = 2024  # rooms the 3D network never trains on (its scans use other seed streams)
    held_out_rooms: int = 4  # per domain, for the probe report


@dataclass
class RenderSet:
    """images: (N, 3, H, W) uint8; labels: (N, H, W) int64; domain: (N,) int64 index into names."""

    images: torch.Tensor
    labels: torch.Tensor
    domain: torch.Tensor
    names: tuple[str, ...]


def render_set(domains: tuple[str, ...], rooms: range, views: int, data_seed: int) -> RenderSet:
    """Rendered views of rooms ``rooms`` of every domain in ``domains``."""
    images, labels, dom = [], [], []
    for d, name in enumerate(domains):
        for room in rooms:
            for view in render_labeled_images(name, scan_seed(data_seed, room), views):
                images.append(torch.from_numpy(view.image_rgb).permute(2, 0, 1))
                labels.append(torch.from_numpy(view.labels))
                dom.append(d)
    return RenderSet(torch.stack(images), torch.stack(labels), torch.tensor(dom), domains)


def patch_class_distribution(labels: torch.Tensor, patch: int, num_classes: int) -> torch.Tensor:
    """(B, H, W) int64 pixel classes -> (B, Hp * Wp, C) fraction of each class in each patch (rows sum to 1)."""
    h, w = labels.shape[1:]
    if h % patch or w % patch:
        raise ValueError(f"label image {h}x{w}: expected multiples of the patch size {patch}")
    onehot = F.one_hot(labels.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).float()
    pooled = F.avg_pool2d(onehot, patch)  # (B, C, Hp, Wp)
    return pooled.flatten(2).transpose(1, 2)


def photometric(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, H, W) float in [0, 1], colour-changed per image the way domains differ.

    Per-channel gain and offset (lighting and palette), a random channel
    permutation (half the batch), greyscale (a fifth), contrast and Gaussian
    noise (sensor). Geometry is untouched, so patch i of both copies shows the
    same surface.
    """
    x = images.float() / 255.0
    b = x.shape[0]

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=generator)

    x = x * uniform(0.6, 1.4, b, 3, 1, 1) + uniform(-0.15, 0.15, b, 3, 1, 1)
    swap = torch.rand(b, generator=generator) < 0.5
    for i in torch.nonzero(swap).flatten().tolist():
        x[i] = x[i, torch.randperm(3, generator=generator)]
    grey = torch.rand(b, generator=generator) < 0.2
    x[grey] = x[grey].mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(0.6, 1.4, b, 1, 1, 1) + mean
    x = x + torch.randn(x.shape, generator=generator) * uniform(0.0, 0.06, b, 1, 1, 1)
    return x.clamp(0.0, 1.0)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> the ImageNet-normalised input Teacher feeds its model (teacher.py)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def build_model(config: PretrainConfig, image_hw: tuple[int, int]):
    """A randomly initialised transformers Dinov2Model of the configured size."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(config.seed)
    dino = Dinov2Config(hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
                        num_attention_heads=config.num_heads, patch_size=config.patch_size,
                        image_size=max(image_hw), mlp_ratio=4, layerscale_value=1.0, layer_norm_eps=1e-6)
    return Dinov2Model(dino)


def patch_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised pixels -> (B, Hp * Wp, D) final patch tokens (what Teacher distils)."""
    return model(pixel_values=pixels).last_hidden_state[:, 1:]


def pretrain_losses(model, head: torch.nn.Linear, images: torch.Tensor, labels: torch.Tensor, patch: int,
                    invariance_weight: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Soft cross-entropy of patch class distributions on two colour views, plus their token cosine distance."""
    target = patch_class_distribution(labels, patch, head.out_features)
    view_a = patch_tokens(model, normalise(photometric(images, generator)))
    view_b = patch_tokens(model, normalise(photometric(images, generator)))
    ce = sum(-(target * F.log_softmax(head(t), dim=-1)).sum(-1).mean() for t in (view_a, view_b)) / 2
    invariance = (1.0 - F.cosine_similarity(view_a, view_b, dim=-1)).mean()
    return {"total": ce + invariance_weight * invariance, "class": ce, "invariance": invariance}


@torch.no_grad()
def probe_accuracy(model, train: RenderSet, test: RenderSet, patch: int, num_classes: int) -> dict[str, float]:
    """Ridge probe from frozen patch tokens to the majority class, fitted on "source" views only.

    Accuracy per test domain says how well the features carry class across
    domains the probe never saw: the property KD needs from a teacher.
    """
    def features(images: torch.Tensor) -> torch.Tensor:
        toks = [F.normalize(patch_tokens(model, normalise(images[i:i + 32].float() / 255.0)), dim=-1)
                for i in range(0, len(images), 32)]
        return torch.cat(toks).flatten(0, 1)

    def majority(labels: torch.Tensor) -> torch.Tensor:
        return patch_class_distribution(labels, patch, num_classes).argmax(-1).flatten()

    src = train.domain == train.names.index("source")
    x, y = features(train.images[src]), majority(train.labels[src])
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    gram = x.T @ x + 1e-2 * len(x) * torch.eye(x.shape[1])
    weights = torch.linalg.solve(gram, x.T @ F.one_hot(y, num_classes).float())
    out = {}
    for d, name in enumerate(test.names):
        keep = test.domain == d
        xt = features(test.images[keep])
        pred = (torch.cat([xt, torch.ones(len(xt), 1)], dim=1) @ weights).argmax(-1)
        out[name] = float((pred == majority(test.labels[keep])).float().mean())
    return out


def pretrain(config: PretrainConfig, out_dir: Path, command: str = "") -> dict:
    """Render, train, probe, save; returns the report also written to out_dir/pretrain_report.json."""
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    domains = tuple(DOMAINS)
    t0 = time.perf_counter()
    train_set = render_set(domains, range(config.rooms_per_domain), config.views_per_room, config.data_seed)
    held = range(config.rooms_per_domain, config.rooms_per_domain + config.held_out_rooms)
    test_set = render_set(domains, held, config.views_per_room, config.data_seed)
    render_s = time.perf_counter() - t0
    image_hw = tuple(train_set.images.shape[2:])
    num_classes = SYNTHETIC_INDOOR.num_classes
    model = build_model(config, image_hw)
    probe_random = probe_accuracy(model.eval(), train_set, test_set, config.patch_size, num_classes)
    head = torch.nn.Linear(config.hidden_size, num_classes)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, config.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / config.steps))))
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    history: list[dict[str, float]] = []
    t1 = time.perf_counter()
    bar = tqdm(range(config.steps), desc="pretrain teacher", unit="step")
    for step in bar:
        batch = torch.randint(len(train_set.images), (config.batch_size,), generator=generator)
        images, labels = train_set.images[batch], train_set.labels[batch]
        if step % 2:  # horizontal flip of image and labels together
            images, labels = images.flip(-1), labels.flip(-1)
        losses = pretrain_losses(model, head, images, labels, config.patch_size, config.invariance_weight,
                                 generator)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        values = {k: float(v.detach()) for k, v in losses.items()}
        history.append(values)
        bar.set_postfix(cls=f"{values['class']:.3f}", inv=f"{values['invariance']:.3f}")
    train_s = time.perf_counter() - t1
    model.eval()
    probe_trained = probe_accuracy(model, train_set, test_set, config.patch_size, num_classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    first, last = history[: max(1, len(history) // 20)], history[-max(1, len(history) // 20):]
    report = {
        "what": "stand-in for DINOv2: a Dinov2Model pre-trained on synthetic renders of every domain",
        "objective": "patch class-distribution soft CE (linear head, dropped) + photometric-invariance cosine",
        "config": asdict(config),
        "image_size_hw": list(image_hw),
        "teacher_resolution_hw": list(image_hw),
        "domains": list(domains),
        "train_images": len(train_set.images),
        "held_out_images": len(test_set.images),
        "render_s": round(render_s, 1),
        "train_s": round(train_s, 1),
        "loss_first": {k: float(np.mean([h[k] for h in first])) for k in first[0]},
        "loss_last": {k: float(np.mean([h[k] for h in last])) for k in last[0]},
        "probe_patch_accuracy_random_init": probe_random,
        "probe_patch_accuracy_trained": probe_trained,
        "probe_note": "ridge probe fitted on 'source' views only, tested on held-out rooms of each domain",
        "command": command,
    }
    (out_dir / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def build_parser() -> argparse.ArgumentParser:
    defaults = PretrainConfig()
    p = argparse.ArgumentParser(prog="ttt_kd_pretrain_teacher", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="HF model folder to write (save_pretrained)")
    for name, value in asdict(defaults).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    values = {k: getattr(args, k) for k in asdict(PretrainConfig())}
    command = shlex.join(["ttt_kd_pretrain_teacher", *(sys.argv[1:] if argv is None else argv)])
    report = pretrain(PretrainConfig(**values), args.out, command)
    print(json.dumps({k: report[k] for k in ("loss_first", "loss_last", "probe_patch_accuracy_random_init",
                                             "probe_patch_accuracy_trained", "render_s", "train_s")}, indent=1))
    print(f"teacher written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
