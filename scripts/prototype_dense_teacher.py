"""A measured lead for the teacher issue: how semantic an image-only dense CNN gets on the stand-in's renders.

    python scripts/prototype_dense_teacher.py --renders runs/teacher_v2/renders --minutes 12 --threads 2 \
        --out runs/dense_teacher
    python scripts/prototype_dense_teacher.py ... --resume runs/dense_teacher/net.pt   # continue (fresh optimiser)

Reads the render cache ``ttt_kd_pretrain_teacher`` writes (``renders/train.npz`` and ``held_out.npz``: images,
per-pixel class labels, domain ids and names; loaded with allow_pickle=False), trains a small U-Net with
per-pixel cross-entropy under palette / light / exposure augmentation for a fixed wall-clock time, and prints
the held-out pixel mIoU per domain every 100 steps. Not a teacher the package ships or loads: docs/TRAINING.md
(section 1b) holds the numbers and what a teacher built on it would need.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_CLASSES = 11  # SYNTHETIC_INDOOR
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class DenseNet(nn.Module):
    """A 4-level U-Net (0.86 M parameters): per-pixel class logits, or the 64-channel features before them."""

    def __init__(self, widths: tuple[int, ...] = (24, 48, 96, 128)) -> None:
        super().__init__()
        w = widths
        self.encoder = nn.ModuleList([conv_block(3, w[0]), conv_block(w[0], w[1]), conv_block(w[1], w[2]),
                                      conv_block(w[2], w[3])])
        self.decoder = nn.ModuleList([conv_block(w[3] + w[2], w[2]), conv_block(w[2] + w[1], w[1]),
                                      conv_block(w[1] + w[0], 64)])
        self.head = nn.Conv2d(64, NUM_CLASSES, 1)

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.decoder, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return x if features else self.head(x)


def normalise(images: torch.Tensor, augment: bool, gen: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalised float; augment: random colour mixing, grey, exposure, offsets, noise
    (what makes a class not a colour: the renders' palettes change with the domain)."""
    x = images.float() / 255
    if augment:
        b = x.shape[0]
        mix = torch.eye(3).expand(b, 3, 3) + 0.35 * torch.randn(b, 3, 3, generator=gen)
        x = torch.einsum("bij,bjhw->bihw", mix, x)
        grey = (torch.rand(b, 1, 1, 1, generator=gen) < 0.2).float()
        x = grey * x.mean(1, keepdim=True).expand_as(x) + (1 - grey) * x
        x = x * (0.5 + torch.rand(b, 1, 1, 1, generator=gen)) + 0.2 * (torch.rand(b, 3, 1, 1, generator=gen) - 0.5)
        x = x + 0.05 * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
        x = x.clamp(0, 1)
    return (x - MEAN) / STD


def pixel_miou(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean IoU (%) over the classes present in truth or prediction."""
    ious = []
    for c in range(NUM_CLASSES):
        truth, hit = labels == c, pred == c
        union = int((truth | hit).sum())
        if union:
            ious.append(int((truth & hit).sum()) / union)
    return 100 * float(np.mean(ious))


@torch.no_grad()
def held_out_miou(net: DenseNet, images: torch.Tensor, labels: torch.Tensor, domains: np.ndarray,
                  names: np.ndarray) -> dict[str, float]:
    net.eval()
    pred = torch.cat([net(normalise(images[i:i + 32], False)).argmax(1) for i in range(0, len(images), 32)])
    net.train()
    return {str(name): round(pixel_miou(pred[domains == k], labels[domains == k]), 1)
            for k, name in enumerate(names) if (domains == k).any()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--renders", type=Path, required=True, help="a ttt_kd_pretrain_teacher renders/ folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=12.0, help="wall-clock training time")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--resume", type=Path, default=None, help="weights of an earlier run (net.pt)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train = np.load(args.renders / "train.npz", allow_pickle=False)
    held = np.load(args.renders / "held_out.npz", allow_pickle=False)
    images, labels = torch.from_numpy(train["images"]), torch.from_numpy(train["labels"]).long()
    h_images, h_labels = torch.from_numpy(held["images"]), torch.from_numpy(held["labels"]).long()
    torch.manual_seed(args.seed)
    net = DenseNet()
    if args.resume is not None:
        net.load_state_dict(torch.load(args.resume, weights_only=True))
    optimizer = torch.optim.AdamW(net.parameters(), args.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    start, step = time.time(), 0
    while time.time() - start < 60 * args.minutes:
        pick = torch.randint(0, len(images), (args.batch,), generator=gen)
        x, y = normalise(images[pick], True, gen), labels[pick]
        if torch.rand(1, generator=gen) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        loss = F.cross_entropy(net(x), y, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 100 == 0:
            report = held_out_miou(net, h_images, h_labels, held["domain"], held["names"])
            print(json.dumps({"step": step, "seconds": round(time.time() - start), "loss": round(float(loss), 3),
                              "held_out_pixel_miou": report}), flush=True)
    final = held_out_miou(net, h_images, h_labels, held["domain"], held["names"])
    print(json.dumps({"step": step, "final_held_out_pixel_miou": final}))
    torch.save(net.state_dict(), args.out / "net.pt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
