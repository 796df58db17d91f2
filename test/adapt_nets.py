"""A small real network with the TTTKDNet interface, and shifted scans for it (used by test_adapt_*.py).

Per-point MLP backbone with BatchNorm (encoder + decoder halves), a
segmentation head and a distillation head. The "prepared scan" is a (N, C)
feature tensor; the distillation targets are a fixed random linear function
of the clean inputs, so KD steps on a shifted scan have something to learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

IN_DIM, WIDTH, NUM_CLASSES, KD_DIM = 4, 16, 5, 8


@dataclass
class TinyOutput:
    logits: torch.Tensor  # (N, K)
    kd: torch.Tensor | None  # (N, D)
    point_features: torch.Tensor  # (N, F)


@dataclass
class TinyTargets:
    point_index: torch.Tensor  # (M,)
    features: torch.Tensor  # (M, D)


class TinyBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(IN_DIM, WIDTH), nn.BatchNorm1d(WIDTH), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.BatchNorm1d(WIDTH), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class TinyNet(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = TinyBackbone()
        self.seg_head = nn.Linear(WIDTH, NUM_CLASSES)
        self.kd_head = nn.Linear(WIDTH, KD_DIM)

    def backbone_features(self, prepared: torch.Tensor) -> torch.Tensor:
        return self.backbone(prepared)

    def kd_features(self, prepared: torch.Tensor, point_index: torch.Tensor) -> torch.Tensor:
        return self.kd_head(self.backbone_features(prepared).index_select(0, point_index))

    def forward(self, prepared: torch.Tensor, with_kd: bool = True) -> TinyOutput:
        feats = self.backbone_features(prepared)
        return TinyOutput(self.seg_head(feats), self.kd_head(feats) if with_kd else None, feats)


def make_scan(seed: int, n: int = 256, shift: float = 1.5, visible: int = 128) -> tuple[torch.Tensor, TinyTargets]:
    """A shifted, scaled scan (N, IN_DIM) and targets on its first ``visible`` points."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(n, IN_DIM, generator=g)
    teacher_map = torch.randn(IN_DIM, KD_DIM, generator=torch.Generator().manual_seed(1234))
    prepared = clean * 2.0 + shift
    index = torch.arange(visible)
    return prepared, TinyTargets(index, torch.nn.functional.normalize(clean[:visible] @ teacher_map, dim=1))


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
