"""TTTKDNet: sparse U-Net backbone psi_3D with a segmentation head rho_Y and a distillation head rho_2D.

One network fits LiDAR and RGB-D clouds: it reads a fixed list of named
per-point inputs and fills the ones a scan lacks with zeros. All geometry work
(voxels, neighbour maps) happens once per scan in ``prepare``; the passes that
test-time training repeats only run convolutions on that PreparedScan.
Normalisation is nn.BatchNorm1d everywhere in the backbone because TENT and
BN-stats adaptation work on exactly those layers. The on-disk format lives in
checkpoint_format.py.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ttt_kd_ros.labels import LABEL_SETS, get_label_set
from ttt_kd_ros.scan import Scan
from ttt_kd_ros.sparse import SparseGeometry, Voxelization, get_backend, rows_of, voxelize
from ttt_kd_ros.teachers.teacher import resolution_value

FEATURE_WIDTHS: dict[str, int] = {"ones": 1, "xyz": 3, "height": 1, "floor_height": 1, "intensity": 1, "rgb": 3}
"""Per-point inputs the net can read. xyz: offset from the voxel centre in voxel units ([-0.5, 0.5));
height: z in metres in the scan frame (frame-dependent: a LiDAR's z = 0 is its mount, an RGB-D room's the floor);
floor_height: z minus the scan's floor estimate (``floor_z``), the same in any z-shifted frame;
intensity: [0, 1]; rgb: [0, 1]. Missing ones are zeros."""

FLOOR_PERCENTILE = 2.0
"""Percentile of z taken as the floor: low enough to sit on the floor when a scan sees any floor, high enough that
a few stray points below it (noise, reflections) do not move it."""

@dataclass
class NetConfig:
    """Everything needed to rebuild a TTTKDNet; stored in every checkpoint.

    encoder_planes[l] is the width at U-Net level l (tensor stride 2^l);
    decoder_planes[i] the width after upsampling onto level L-2-i. Blocks are
    residual pairs of 3x3x3 submanifold convs; 0 encoder blocks at level 0
    means the stem alone, as in MinkUNet.
    """

    name: str = "ttt_kd_small"
    input_features: tuple[str, ...] = ("ones", "xyz", "floor_height", "intensity", "rgb")
    num_classes: int = 11
    label_set: str = "synthetic_indoor"
    teacher_dim: int = 384
    teacher_id: str = ""
    teacher_resolution: int | tuple[int, int] = (224, 224)
    """The teacher's input resolution as the teacher was built with: a short side (the image's aspect kept) or
    (H, W). Recorded as given, not as one training image's input size, so evaluation and the node rebuild the
    same teacher (and find the feature cache bound to it) on images of any size."""
    voxel_size_m: float = 0.05
    encoder_planes: tuple[int, ...] = (16, 32, 64, 128)
    encoder_blocks: tuple[int, ...] = (1, 1, 1, 1)
    decoder_planes: tuple[int, ...] = (64, 32, 32)
    decoder_blocks: tuple[int, ...] = (1, 1, 1)
    kd_hidden: int = 128
    bn_momentum: float = 0.1
    backend: str = "torch"
    kd_target_center: tuple[float, ...] = ()
    """Mean teacher feature subtracted from every distillation target before re-normalising
    (``targets.center_targets``); estimated once over the training targets and stored here so training and test
    time centre identically. Empty: targets used as the teacher gives them (checkpoints older than the field)."""
    fusion_head: bool = False
    """Whether the net carries rho_F, a linear head on teacher features (fusion.py) fitted on labelled source
    scans: the teacher's own class prediction, fused with the 3D one on visible points. False in checkpoints
    older than the field and in nets trained without images."""
    class_prior: tuple[float, ...] = ()
    """The unadapted model's mean class probabilities on its in-distribution validation scans
    (scripts/validation_shifts.py): the source prior the label-shift correction divides out
    (adapt/class_prior.py, ``AdaptConfig.prior_strength``). Empty: not measured, and the correction cannot run."""

    def __post_init__(self) -> None:
        for name in ("input_features", "encoder_planes", "encoder_blocks", "decoder_planes", "decoder_blocks",
                     "kd_target_center", "class_prior"):
            setattr(self, name, tuple(getattr(self, name)))
        self.teacher_resolution = resolution_value(self.teacher_resolution, "teacher_resolution")
        unknown = [f for f in self.input_features if f not in FEATURE_WIDTHS]
        if unknown or not self.input_features:
            raise ValueError(f"input_features: expected names from {list(FEATURE_WIDTHS)}, got {self.input_features}")
        levels = len(self.encoder_planes)
        if levels < 1 or len(self.encoder_blocks) != levels:
            raise ValueError(
                f"encoder_blocks: expected {levels} entries (one per encoder_planes), got {self.encoder_blocks}"
            )
        if len(self.decoder_planes) != levels - 1 or len(self.decoder_blocks) != levels - 1:
            raise ValueError(
                f"decoder_planes/decoder_blocks: expected {levels - 1} entries each, "
                f"got {self.decoder_planes} / {self.decoder_blocks}"
            )
        if self.label_set in LABEL_SETS and get_label_set(self.label_set).num_classes != self.num_classes:
            raise ValueError(
                f"num_classes: label set {self.label_set!r} has {get_label_set(self.label_set).num_classes} "
                f"classes, got {self.num_classes}"
            )
        if not self.voxel_size_m > 0:
            raise ValueError(f"voxel_size_m: expected > 0, got {self.voxel_size_m}")
        self.kd_target_center = tuple(float(v) for v in self.kd_target_center)
        if self.kd_target_center and len(self.kd_target_center) != self.teacher_dim:
            raise ValueError(f"kd_target_center: expected {self.teacher_dim} values (teacher_dim) or none, got "
                             f"{len(self.kd_target_center)}")
        self.class_prior = tuple(float(v) for v in self.class_prior)
        if self.class_prior and (len(self.class_prior) != self.num_classes or abs(sum(self.class_prior) - 1) > 1e-3
                                 or not all(math.isfinite(v) and v > 0 for v in self.class_prior)):
            raise ValueError(f"class_prior: expected {self.num_classes} finite class shares above 0 summing to 1 "
                             f"(num_classes) or none, got {self.class_prior}")

    @property
    def in_channels(self) -> int:
        return sum(FEATURE_WIDTHS[f] for f in self.input_features)

    @property
    def num_levels(self) -> int:
        return len(self.encoder_planes)

    @property
    def out_channels(self) -> int:
        return self.decoder_planes[-1] if self.decoder_planes else self.encoder_planes[0]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class MinkUNet34Config(NetConfig):
    """MinkUNet34C widths and depths (about 38 M params): the paper's backbone family, for GPU robots."""

    name: str = "mink_unet34"
    encoder_planes: tuple[int, ...] = (32, 32, 64, 128, 256)
    encoder_blocks: tuple[int, ...] = (0, 2, 3, 4, 6)
    decoder_planes: tuple[int, ...] = (256, 128, 96, 96)
    decoder_blocks: tuple[int, ...] = (2, 2, 2, 2)
    kd_hidden: int = 256


@dataclass
class MinkUNet18Config(NetConfig):
    """MinkUNet18A-like: a middle ground between the small default and MinkUNet34C."""

    name: str = "mink_unet18"
    encoder_planes: tuple[int, ...] = (32, 32, 64, 128, 256)
    encoder_blocks: tuple[int, ...] = (0, 2, 2, 2, 2)
    decoder_planes: tuple[int, ...] = (128, 128, 96, 96)
    decoder_blocks: tuple[int, ...] = (2, 2, 2, 2)


PRESETS: dict[str, type[NetConfig]] = {"ttt_kd_small": NetConfig, "mink_unet18": MinkUNet18Config,
                                       "mink_unet34": MinkUNet34Config}


def net_config(preset: str = "ttt_kd_small", **overrides: Any) -> NetConfig:
    """A preset's NetConfig with some fields changed (e.g. num_classes, label_set, teacher_dim)."""
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    names = {f.name for f in fields(NetConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"net_config overrides: unknown fields {unknown}; known: {sorted(names)}")
    return PRESETS[preset](**overrides)


# ----------------------------------------------------------------------------- layers


class SparseBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over (V, C) voxel rows that tolerates a single row in training.

    Tiny scans can shrink to one voxel at the coarsest level, where batch
    statistics do not exist; that row is then normalised with the running
    statistics instead of raising.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] <= 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def _kernel(volume: int, cin: int, cout: int) -> nn.Parameter:
    """(volume, Cin, Cout) weight, He-initialised for ReLU over volume * Cin inputs."""
    return nn.Parameter(torch.randn(volume, cin, cout) * (2.0 / (volume * cin)) ** 0.5)


class SubmConv3(nn.Module):
    """3x3x3 submanifold conv at one level (outputs at the input voxels)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = _kernel(27, cin, cout)

    def forward(self, x: torch.Tensor, geometry: SparseGeometry, level: int) -> torch.Tensor:
        return geometry.subm_conv(x, self.weight, level)


class ConvBNReLU(nn.Module):
    """A conv of one kind ("subm", "down": level -> level+1, "up": level+1 -> level), then BN and ReLU."""

    def __init__(self, kind: str, cin: int, cout: int, momentum: float) -> None:
        super().__init__()
        self.kind = kind
        self.weight = _kernel(27 if kind == "subm" else 8, cin, cout)
        self.bn = SparseBatchNorm(cout, momentum=momentum)

    def forward(self, x: torch.Tensor, geometry: SparseGeometry, level: int) -> torch.Tensor:
        conv = {"subm": geometry.subm_conv, "down": geometry.down_conv, "up": geometry.up_conv}[self.kind]
        return F.relu(self.bn(conv(x, self.weight, level)))


class ResBlock(nn.Module):
    """Basic residual block (two 3x3x3 submanifold convs); a 1x1 projection when widths differ."""

    def __init__(self, cin: int, cout: int, momentum: float) -> None:
        super().__init__()
        self.conv1 = SubmConv3(cin, cout)
        self.bn1 = SparseBatchNorm(cout, momentum=momentum)
        self.conv2 = SubmConv3(cout, cout)
        self.bn2 = SparseBatchNorm(cout, momentum=momentum)
        self.project: nn.Module | None = None
        self.project_bn: nn.Module | None = None
        if cin != cout:
            self.project = nn.Linear(cin, cout, bias=False)
            self.project_bn = SparseBatchNorm(cout, momentum=momentum)

    def forward(self, x: torch.Tensor, geometry: SparseGeometry, level: int) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x, geometry, level)))
        out = self.bn2(self.conv2(out, geometry, level))
        skip = x if self.project is None else self.project_bn(self.project(x))
        return F.relu(out + skip)


class Stage(nn.Module):
    """The entry conv of a level (stem, stride-2 down, or transposed up) followed by residual blocks."""

    def __init__(self, entry: ConvBNReLU, block_in: int, width: int, blocks: int, momentum: float) -> None:
        super().__init__()
        self.entry = entry
        self.blocks = nn.ModuleList(
            ResBlock(block_in if i == 0 else width, width, momentum) for i in range(blocks)
        )
        self.out_channels = width if blocks else entry.weight.shape[2]


class SparseUNet(nn.Module):
    """psi_3D: (V_0, Cin) voxel inputs -> (V_0, F) voxel features through an L-level sparse U-Net.

    encoder[l] runs at tensor stride 2^l (encoder[0]: stem at stride 1;
    encoder[l>0]: 2x2x2 stride-2 conv from stride 2^(l-1)); decoder[i]
    upsamples onto level L-2-i, concatenates that level's encoder output and
    runs its blocks.
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        m = config.bn_momentum
        enc, dec = config.encoder_planes, config.decoder_planes
        self.encoder = nn.ModuleList()
        self.encoder.append(Stage(ConvBNReLU("subm", config.in_channels, enc[0], m), enc[0], enc[0],
                                  config.encoder_blocks[0], m))
        for level in range(1, config.num_levels):
            self.encoder.append(Stage(ConvBNReLU("down", enc[level - 1], enc[level], m), enc[level], enc[level],
                                      config.encoder_blocks[level], m))
        self.decoder = nn.ModuleList()
        width = enc[-1]
        for i, level in enumerate(range(config.num_levels - 2, -1, -1)):
            self.decoder.append(Stage(ConvBNReLU("up", width, dec[i], m), dec[i] + enc[level], dec[i],
                                      config.decoder_blocks[i], m))
            width = dec[i]
            if config.decoder_blocks[i] == 0:
                raise ValueError(f"decoder_blocks[{i}]: expected >= 1 (the skip concatenation needs a block), got 0")
        self.out_channels = width

    def forward(self, x: torch.Tensor, geometry: SparseGeometry, skips: list[torch.Tensor] | None = None,
                start: int = 0, decoded: torch.Tensor | None = None) -> torch.Tensor:
        """The U-Net on voxel inputs ``x``; with ``skips`` (an earlier ``encode`` of the same voxels) the decoder
        alone runs on them and ``x`` is not read; with ``start`` > 0 too, ``decoded`` is decoder stage
        ``start - 1``'s output (``decode_stages``) and the stages from ``start`` on run."""
        return self.decode(self.encode(x, geometry) if skips is None else skips, geometry, start, decoded)

    def encode(self, x: torch.Tensor, geometry: SparseGeometry) -> list[torch.Tensor]:
        """The encoder's output at every level (level l: (V_l, encoder_planes[l])), coarsest last."""
        skips: list[torch.Tensor] = []
        for level, stage in enumerate(self.encoder):
            # encoder[0].entry is the stem at stride 1; the others go from stride 2^(level-1) to 2^level.
            x = stage.entry(x, geometry, level if level == 0 else level - 1)
            for block in stage.blocks:
                x = block(x, geometry, level)
            skips.append(x)
        return skips

    def decode(self, skips: list[torch.Tensor], geometry: SparseGeometry, start: int = 0,
               decoded: torch.Tensor | None = None) -> torch.Tensor:
        """(V_0, F) features from the encoder's outputs: upsample from the coarsest level, one skip per level.

        From decoder stage ``start`` on, with ``decoded`` the output of stage ``start - 1`` (required when
        ``start`` > 0: at level ``decoded_level(start)``).
        """
        return self.decode_stages(skips, geometry, start, len(self.decoder), decoded)

    def decode_stages(self, skips: list[torch.Tensor], geometry: SparseGeometry, start: int, stop: int,
                      decoded: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder stages ``start`` .. ``stop - 1`` on the encoder's outputs (and stage ``start - 1``'s output
        ``decoded`` when ``start`` > 0): the output of stage ``stop - 1``, at level ``decoded_level(stop)``."""
        if start > 0 and decoded is None:
            raise ValueError(f"decode_stages: start={start} needs decoder stage {start - 1}'s output")
        x = skips[-1] if start == 0 else decoded
        levels = len(self.encoder)
        for i in range(start, stop):
            stage = self.decoder[i]
            level = levels - 2 - i  # upsample from stride 2^(level+1) onto stride 2^level
            x = stage.entry(x, geometry, level)
            x = torch.cat((x, skips[level].to(x.dtype)), dim=1)
            for block in stage.blocks:
                x = block(x, geometry, level)
        return x

    def decoded_level(self, stages: int) -> int:
        """The level the output of the first ``stages`` decoder stages lives at (the coarsest for 0 stages)."""
        return len(self.encoder) - 1 - stages


# ----------------------------------------------------------------------------- network


@dataclass
class PreparedScan:
    """A scan made ready for any number of passes: inputs, voxels and neighbour maps on one device.

    features: (V, Cin) float32 voxel inputs (mean of the scan's points per voxel).
    voxels.point_to_voxel: (N,) row of each input point.
    """

    features: torch.Tensor
    voxels: Voxelization
    geometry: SparseGeometry
    device: torch.device
    encoder_skips: list[torch.Tensor] | None = None
    """The frozen encoder's outputs per level (``TTTKDNet.with_frozen_encoder``), or None: every pass runs the
    whole backbone. When set, passes run the decoder alone on them (valid while the encoder does not change)."""
    decoder_start: int = 0
    """Decoder stages already applied to ``encoder_skips`` (a frozen prefix that reaches into the decoder):
    passes run the decoder from this stage on."""
    decoded: torch.Tensor | None = None
    """The output of decoder stage ``decoder_start - 1`` (None when ``decoder_start`` is 0)."""

    @property
    def num_points(self) -> int:
        return int(self.voxels.point_to_voxel.shape[0])

    @property
    def num_voxels(self) -> int:
        return self.voxels.num_voxels


@dataclass
class NetOutput:
    """Per input point: logits (N, C), kd (N, D) or None when not asked for, point_features (N, F)."""

    logits: torch.Tensor
    kd: torch.Tensor | None
    point_features: torch.Tensor


def floor_z(points_xyz_m: np.ndarray) -> float:
    """The scan's floor height in its own frame: the FLOOR_PERCENTILE-th percentile of z (0.0 for no points).

    Subtracting it makes the height input the same whether the cloud is in a room frame (floor at z = 0) or a
    sensor frame (floor at minus the mount height), which is the LiDAR-vs-RGB-D shift of the synthetic domains.
    """
    if len(points_xyz_m) == 0:
        return 0.0
    return float(np.percentile(points_xyz_m[:, 2], FLOOR_PERCENTILE))


def point_inputs(scan: Scan, config: NetConfig) -> np.ndarray:
    """(N, Cin) float32 per-point inputs in config.input_features order; missing ones are zeros."""
    pts = scan.points_xyz_m
    n = len(pts)
    columns: list[np.ndarray] = []
    for name in config.input_features:
        if name == "ones":
            columns.append(np.ones((n, 1), np.float32))
        elif name == "xyz":
            voxel = pts / config.voxel_size_m
            columns.append((voxel - np.floor(voxel) - 0.5).astype(np.float32))
        elif name == "height":
            columns.append(pts[:, 2:3].astype(np.float32))
        elif name == "floor_height":
            columns.append((pts[:, 2:3].astype(np.float64) - floor_z(pts)).astype(np.float32))
        elif name == "intensity":
            value = scan.intensity
            columns.append(np.zeros((n, 1), np.float32) if value is None else np.asarray(value, np.float32)[:, None])
        elif name == "rgb":
            columns.append(np.zeros((n, 3), np.float32) if scan.rgb is None else np.asarray(scan.rgb, np.float32))
    return np.concatenate(columns, axis=1)


TORCH_FLOOR = (2, 4)
"""The oldest torch the package runs on: the sparse convolutions ask autocast about their device type
(``torch.is_autocast_enabled(device)``, ``torch.get_autocast_dtype``) and mixed precision runs bfloat16 autocast on
CPUs, both from torch 2.4. README, "torch", says what to do on an older JetPack."""


def require_torch_floor(version: str | None = None) -> None:
    """RuntimeError naming the installed torch when it is older than TORCH_FLOOR.

    Why at network construction: on an old robot build the first convolution would fail deep inside a scan with
    an AttributeError; every path (node, training, evaluation) builds a TTTKDNet first, so the user reads this.
    """
    text = torch.__version__ if version is None else version
    try:
        have = tuple(int(part) for part in text.split("+")[0].split(".")[:2])
    except ValueError:
        return  # a development build without a plain version: nothing to compare
    if have < TORCH_FLOOR:
        raise RuntimeError(f"torch {text} is older than {TORCH_FLOOR[0]}.{TORCH_FLOOR[1]}, the oldest ttt_kd_ros "
                           "runs on: install a newer torch (on Jetson: JetPack 6.1 or later; README, 'torch')")


class TTTKDNet(nn.Module):
    """backbone (psi_3D) + seg_head (rho_Y, class logits) + kd_head (rho_2D, teacher feature space).

    Heads are per-voxel MLPs without normalisation, so they are applied to the
    (fewer) voxels and gathered to points; every point of a voxel gets that
    voxel's outputs.
    """

    def __init__(self, config: NetConfig) -> None:
        require_torch_floor()
        super().__init__()
        self.config = config
        self.sparse_backend = get_backend(config.backend)
        self.backbone = SparseUNet(config)
        width = self.backbone.out_channels
        self.seg_head = nn.Linear(width, config.num_classes)
        self.kd_head = nn.Sequential(
            nn.Linear(width, config.kd_hidden), nn.ReLU(inplace=True), nn.Linear(config.kd_hidden, config.teacher_dim)
        )
        # rho_F reads teacher features, never the backbone: adaptation cannot move it (collect_params takes
        # backbone parameters only), and it is fitted after the net, on frozen teacher features.
        self.fusion_head = nn.Linear(config.teacher_dim, config.num_classes) if config.fusion_head else None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def prepare(self, scan: Scan, device: torch.device | str | None = None) -> PreparedScan:
        """Inputs, voxelisation and all neighbour maps of ``scan``: run once per scan, reuse for every pass."""
        device = torch.device(device) if device is not None else self.device
        if scan.num_points == 0:
            raise ValueError("scan.points_xyz_m: expected at least one point, got 0")
        points = torch.from_numpy(scan.points_xyz_m).to(device)
        voxels = voxelize(points, self.config.voxel_size_m)
        inputs = torch.from_numpy(point_inputs(scan, self.config)).to(device)
        features = voxels.voxel_mean(inputs)
        geometry = self.sparse_backend.build_geometry(voxels.coords, self.config.num_levels)
        return PreparedScan(features, voxels, geometry, device)

    def crop(self, prepared: PreparedScan, rows: torch.Tensor) -> PreparedScan:
        """The sub-scan of voxels ``rows`` (ascending) as a PreparedScan of its own, one "point" per voxel.

        Features are the scan's own voxel inputs (no re-voxelisation); only the neighbour maps are built anew,
        for the crop. Adaptation steps run on crops so their cost is bounded (adapt/crops.py).
        """
        rows = rows.to(prepared.device)
        coords = prepared.voxels.coords.index_select(0, rows)
        count = rows.numel()
        voxels = Voxelization(coords, torch.arange(count, device=prepared.device),
                              torch.ones(count, dtype=torch.long, device=prepared.device),
                              prepared.voxels.voxel_size_m)
        # a frozen prefix into the decoder leaves the passes the levels below its output's: the crop's maps and
        # rows stop at that level (a crop of the last stage alone needs levels 0 and 1, not the whole pyramid)
        levels = self.config.num_levels
        if prepared.decoded is not None:
            levels = self.backbone.decoded_level(prepared.decoder_start) + 1
        geometry = self.sparse_backend.build_geometry(coords, levels)
        skips, decoded = None, None
        if prepared.encoder_skips is not None:  # the crop's rows of the scan's frozen outputs, level by level
            level_rows = [rows] + [rows_of(prepared.geometry.coords(level), geometry.coords(level))
                                   for level in range(1, levels)]
            # the skips of the levels the passes run at (every level, or those below the decoded output's)
            skip_levels = levels if prepared.decoded is None else levels - 1
            skips = [prepared.encoder_skips[level].index_select(0, level_rows[level]) for level in range(skip_levels)]
            if prepared.decoded is not None:
                decoded = prepared.decoded.index_select(0, level_rows[-1])
        return PreparedScan(prepared.features.index_select(0, rows), voxels, geometry, prepared.device, skips,
                            prepared.decoder_start, decoded)

    @torch.no_grad()
    def with_frozen_encoder(self, prepared: PreparedScan, decoder_stages: int = 0) -> PreparedScan:
        """``prepared`` with the encoder's outputs (and the first ``decoder_stages`` decoder stages' output)
        computed once (in the modes the caller set, no gradient).

        Why: when adaptation moves the decoder alone (or its last stages) and normalises with running statistics,
        everything before the first layer that moves gives the same output in every step and in the final
        forward. Computed once here, each step runs the rest alone (on the crop's rows of these outputs: with the
        whole scan's context) and the final forward costs the rest. The caller sets the modes; training mode
        would move the running statistics.
        """
        if not 0 <= decoder_stages < len(self.backbone.decoder):
            raise ValueError(f"decoder_stages: expected 0..{len(self.backbone.decoder) - 1} (at least the last stage "
                             f"runs per pass), got {decoder_stages}")
        skips = [s.detach() for s in self.backbone.encode(prepared.features, prepared.geometry)]
        decoded = None
        if decoder_stages:
            decoded = self.backbone.decode_stages(skips, prepared.geometry, 0, decoder_stages).detach()
        return dataclasses.replace(prepared, encoder_skips=skips, decoder_start=decoder_stages, decoded=decoded)

    def pass_size(self, prepared: PreparedScan) -> int:
        """How much work one pass over ``prepared`` does, in units whose time is about constant across scans: the
        voxels and neighbour pairs (when the backend says them) of every level the pass runs convs at.

        Why not voxels alone: real KITTI frames of 78k-91k voxels hold 210k-500k level-0 pairs, and a pass of the
        last decoder stage costs 0.10-0.16 s in the order of their pairs, not of their voxels. A frozen prefix
        leaves the levels below its output's to the pass (the encoder's coarsest level, or the decoded level).
        """
        geometry = prepared.geometry
        top = geometry.num_levels - 1
        if prepared.encoder_skips is not None:
            top = self.backbone.decoded_level(prepared.decoder_start) - 1
        pairs = getattr(geometry, "neighbour_pairs", lambda level: 0)
        return sum(geometry.num_voxels(level) + pairs(level) for level in range(top + 1))

    def voxel_features(self, prepared: PreparedScan) -> torch.Tensor:
        """(V, F) backbone features per voxel (the rest of the network alone on a frozen prefix when it has one)."""
        return self.backbone(prepared.features, prepared.geometry, prepared.encoder_skips, prepared.decoder_start,
                             prepared.decoded)

    def backbone_features(self, prepared: PreparedScan) -> torch.Tensor:
        """(N, F) backbone features per input point (its voxel's features)."""
        return self.voxel_features(prepared).index_select(0, prepared.voxels.point_to_voxel)

    def kd_features(
        self, prepared: PreparedScan, point_index: torch.Tensor, voxel_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(M,) point indices -> (M, D) rho_2D outputs at those points only (the TTT loss needs no more).

        Pass ``voxel_features`` from an earlier ``voxel_features()`` call to
        share one backbone pass between several heads.
        """
        if voxel_features is None:
            voxel_features = self.voxel_features(prepared)
        rows = prepared.voxels.point_to_voxel.index_select(0, point_index.to(prepared.device))
        return self.kd_head(voxel_features.index_select(0, rows))

    def forward(self, prepared: PreparedScan, with_kd: bool = True) -> NetOutput:
        vf = self.voxel_features(prepared)
        p2v = prepared.voxels.point_to_voxel
        logits = self.seg_head(vf).index_select(0, p2v)
        kd = self.kd_head(vf).index_select(0, p2v) if with_kd else None
        return NetOutput(logits=logits, kd=kd, point_features=vf.index_select(0, p2v))


__all__ = [
    "FEATURE_WIDTHS",
    "PRESETS",
    "MinkUNet18Config",
    "MinkUNet34Config",
    "NetConfig",
    "NetOutput",
    "PreparedScan",
    "TTTKDNet",
    "floor_z",
    "net_config",
    "point_inputs",
]
