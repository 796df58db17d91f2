"""The dense stand-in teacher: an image-only CNN whose per-pixel features are pooled onto a patch grid.

Why a CNN and not a bigger ViT: on the two cores this package is built on, a
2.8 M-parameter Dinov2Model trained for an hour on domain-randomised renders
became domain-robust but barely semantic (patch probe 19-30 % mIoU), and the
teacher bracket (docs/EVALUATION.md) showed semantics is what TTT-KD needs. A
small U-Net with per-pixel supervision learns the classes of the renders far
faster for the same compute. What the 3D network distils is unchanged: one
L2-normalised vector per patch, sampled bilinearly at each projected point,
through the same ``Teacher`` interface as DINOv2 (only ``_compute`` differs).

Two outputs of one network (``output`` in the folder's config):

- ``features``: the 64 channels before the class head, averaged over each
  patch: the analogue of a foundation model's patch token;
- ``posterior``: the class head's softmax averaged over each patch: the
  analogue of the oracle control (a class vector per pixel, pooled), with the
  network's errors instead of none.

A folder holds ``dense_teacher.json`` (this module's config) and
``model.safetensors``; ``teachers.resolve`` recognises it.
Training is ``ttt_kd_pretrain_dense_teacher`` (tools/pretrain_dense_teacher.py).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ttt_kd_ros.teachers.teacher import DEFAULT_CACHE_SIZE, Teacher
from ttt_kd_ros.teachers.weights import weights_digest

DENSE_CONFIG_NAME = "dense_teacher.json"
DENSE_WEIGHTS_NAME = "model.safetensors"
DENSE_KIND = "ttt_kd_dense_cnn"
OUTPUTS = ("features", "posterior")


@dataclass(frozen=True)
class DenseTeacherConfig:
    """Architecture of the U-Net and how its output becomes a patch feature map."""

    widths: tuple[int, ...] = (24, 48, 96, 128)
    feature_width: int = 64
    num_classes: int = 11
    output: str = "features"
    patch: int = 8
    label_set: str = "synthetic_indoor"

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"dense teacher: output must be one of {OUTPUTS}, got {self.output!r}")
        if len(self.widths) < 2 or min(self.widths) < 1 or self.feature_width < 1 or self.num_classes < 2:
            raise ValueError(f"dense teacher: bad architecture {self}")
        if self.patch < 1:
            raise ValueError(f"dense teacher: patch must be >= 1, got {self.patch}")

    @property
    def stride(self) -> int:
        """Input sides must be multiples of this: the encoder halves the image len(widths) - 1 times."""
        return 2 ** (len(self.widths) - 1)

    @property
    def feature_dim(self) -> int:
        return self.feature_width if self.output == "features" else self.num_classes

    def to_json(self) -> str:
        return json.dumps({"kind": DENSE_KIND, **asdict(self)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> DenseTeacherConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.pop("kind", None) != DENSE_KIND:
            raise ValueError(f"{source}: not a dense teacher config (expected \"kind\": \"{DENSE_KIND}\")")
        known = set(asdict(cls()))
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown dense teacher config keys {unknown}")
        if "widths" in data:
            data["widths"] = tuple(int(w) for w in data["widths"])
        return cls(**data)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class DenseSegNet(nn.Module):
    """A U-Net: per-pixel class logits (``forward``) and the feature channels before them (``features``)."""

    def __init__(self, config: DenseTeacherConfig = DenseTeacherConfig()) -> None:
        super().__init__()
        w = config.widths
        self.encoder = nn.ModuleList([_conv_block(3, w[0]), *(_conv_block(a, b) for a, b in itertools.pairwise(w))])
        skips = list(reversed(w[:-1]))  # the decoder climbs back through the encoder's levels
        outs = [*skips[:-1], config.feature_width]
        ins = [w[-1], *outs[:-1]]
        self.decoder = nn.ModuleList([_conv_block(i + s, o) for i, s, o in zip(ins, skips, outs, strict=True)])
        self.head = nn.Conv2d(config.feature_width, config.num_classes, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, feature_width, H, W); H, W multiples of the config's stride."""
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.decoder, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def patch_outputs(net: DenseSegNet, config: DenseTeacherConfig, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised pixels -> (B, D, H / patch, W / patch) L2-normalised patch vectors."""
    dense = net.features(pixels) if config.output == "features" else net(pixels).softmax(1)
    return F.normalize(F.avg_pool2d(dense, config.patch), dim=1)


class DenseTeacher(Teacher):
    """The runtime teacher around a DenseSegNet: same cache, sampling and FeatureMap as a ViT teacher."""

    def __init__(self, net: DenseSegNet, config: DenseTeacherConfig, teacher_id: str,
                 resolution: int | tuple[int, int] = (120, 160), device: str | torch.device = "cpu",
                 cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        # The patch grid must also be a multiple of the encoder's stride, or the skips would not line up.
        grid = int(np.lcm(config.patch, config.stride))
        self._init_runtime(teacher_id, feature_dim=config.feature_dim, patch_size=grid, resolution=resolution,
                           device=device, cache_size=cache_size)
        self.config = config
        self.model = self._frozen(net)

    def __repr__(self) -> str:
        return (f"DenseTeacher({self.teacher_id!r}, dim={self.feature_dim}, output={self.config.output}, "
                f"patch={self.config.patch}, resolution={self.resolution}, device={self.device})")

    def _patch_features(self, pixels: torch.Tensor, hp: int, wp: int) -> torch.Tensor:
        """(B, 3, H_in, W_in) -> (B, C, Hp, Wp): the U-Net's outputs pooled onto the patch grid."""
        dtype = next(self.model.parameters()).dtype
        return patch_outputs(self.model, self.config, pixels.to(dtype)).float()


def is_dense_teacher_folder(path: str | Path) -> bool:
    return (Path(path) / DENSE_CONFIG_NAME).is_file()


def read_dense_config(folder: str | Path) -> DenseTeacherConfig:
    path = Path(folder) / DENSE_CONFIG_NAME
    return DenseTeacherConfig.from_json(path.read_text(), source=str(path))


def load_dense_net(folder: str | Path, config: DenseTeacherConfig) -> DenseSegNet:
    """The network of a dense teacher folder; safetensors only, every tensor must match the config."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / DENSE_WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"dense teacher {folder}: {DENSE_WEIGHTS_NAME} is missing")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"dense teacher {path}: unreadable weights ({exc})") from None
    net = DenseSegNet(config)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"dense teacher {path}: weights do not fit {DENSE_CONFIG_NAME} ({exc})") from None
    return net.eval()


def load_dense_teacher(folder: str | Path, resolution: int | tuple[int, int] = (120, 160),
                       device: str | torch.device = "cpu", output: str | None = None) -> DenseTeacher:
    """A DenseTeacher from its folder; ``output`` overrides the folder's choice of features or posterior."""
    config = read_dense_config(folder)
    if output is not None:
        config = replace(config, output=output)
    net = load_dense_net(folder, config)
    teacher_id = f"dense-cnn:{weights_digest(net)}:{config.output}:patch={config.patch}"
    return DenseTeacher(net, config, teacher_id, resolution=resolution, device=device)


def save_dense_teacher(net: DenseSegNet, config: DenseTeacherConfig, folder: str | Path) -> None:
    """Write the folder ``load_dense_teacher`` reads (weights first, config last: a folder with a config is whole)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tmp = folder / (DENSE_WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(folder / DENSE_WEIGHTS_NAME)
    (folder / DENSE_CONFIG_NAME).write_text(config.to_json())


__all__ = ["DENSE_CONFIG_NAME", "DenseSegNet", "DenseTeacher", "DenseTeacherConfig", "is_dense_teacher_folder",
           "load_dense_net", "load_dense_teacher", "patch_outputs", "read_dense_config",
           "save_dense_teacher"]
