"""A teacher spec -> a Teacher: the one place that reads one.

Every caller (the Segmenter, the node through it, training, evaluation, the
feature cache, the scripts) names its teacher with the same spec strings:

- ``builtin`` (or ``default``): the dense stand-in shipped in
  ttt_kd_ros/checkpoints, at its native resolution;
- a ``RANDOM_TEACHERS`` name: a random-weight DINOv2-architecture ViT (the
  lower-bound control and the tests; no files);
- ``oracle[:corrupt=..,dim=..]``: the offline bracket's upper bound, accepted
  only with ``offline=True`` (it reads rendered class images a robot never has);
- anything else is read from disk, nothing downloaded: a dense stand-in folder,
  a Hugging Face DINOv2 folder, a hub id already in the local HF cache, or an
  official ``dinov2_vit*14*.pth``. Their teacher ids carry a digest of the
  weights (``weights.weights_digest``), never a file name: the same weights
  read any way are one teacher, other weights under the same name another.

Before, four functions in four files did parts of this, each with its own
default resolution; now ``resolution=None`` means one thing everywhere: the
shipped stand-in's and the oracle's native size, 224 for a ViT.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ttt_kd_ros.labels import SYNTHETIC_INDOOR
from ttt_kd_ros.teachers.dense import DENSE_CONFIG_NAME, is_dense_teacher_folder, load_dense_teacher
from ttt_kd_ros.teachers.oracle import OracleTeacher, is_oracle, parse_oracle
from ttt_kd_ros.teachers.teacher import DEFAULT_RESOLUTION, Teacher, resolution_value
from ttt_kd_ros.teachers.weights import dinov2_teacher_id, load_hf_dinov2, load_official_dinov2, tiny_teacher

BUILTIN = "builtin"
"""The teacher shipped with the package (ttt_kd_ros/checkpoints), the node's default."""
DEFAULT = "default"
"""The offline tools' name for BUILTIN."""

RANDOM_TEACHERS: dict[str, dict[str, int]] = {
    "tiny": {},  # tiny_teacher's defaults: 32-dim, 2 layers, for tests and the demo
    "random-vits14": {"hidden_size": 384, "num_layers": 12, "num_heads": 6},  # DINOv2 ViT-S/14's cost, no weights
}
"""Teacher specs that build a random-weight DINOv2 (no files needed)."""

Resolution = int | tuple[int, int]


def is_builtin(spec: str) -> bool:
    """True for the names of the shipped teacher."""
    return spec in (BUILTIN, DEFAULT)


def builtin_folder() -> Path:
    """The shipped teacher's folder; a ValueError naming it when a source tree lacks it."""
    from ttt_kd_ros.checkpoints import default_teacher

    folder = default_teacher()
    if not any((folder / name).is_file() for name in ("config.json", DENSE_CONFIG_NAME)):
        raise ValueError(f"teacher {BUILTIN!r}: the shipped teacher folder {folder} is missing")
    return folder


def default_resolution(spec: str) -> Resolution:
    """The resolution a spec gets when the caller has none (no checkpoint recording one, no flag)."""
    from ttt_kd_ros.checkpoints import default_teacher_resolution

    if is_builtin(spec) or is_oracle(spec):
        return default_teacher_resolution()
    return DEFAULT_RESOLUTION


def resolution_from_flag(values: list[int] | None, flag: str = "--teacher-resolution") -> Resolution | None:
    """A tool's resolution flag (a short side, or H W) as resolve takes it; None when not given."""
    return resolution_value(values, flag) if values else None


def resolve(spec: str | Path, resolution: Resolution | None = None, device: str | torch.device = "cpu",
            seed: int = 0, offline: bool = False, num_classes: int = SYNTHETIC_INDOOR.num_classes) -> Teacher:
    """The Teacher a spec names (module docstring), at ``resolution`` (None: ``default_resolution``).

    ``offline`` admits the oracle control; without it the oracle is refused with a ValueError saying why,
    so the node and everything built from a SegmenterConfig cannot be pointed at it. ``seed`` seeds a
    random teacher; ``num_classes`` sizes the oracle's class vectors.
    """
    spec = str(spec)
    res = default_resolution(spec) if resolution is None else resolution
    if is_oracle(spec):
        if not offline:
            raise ValueError(f"teacher {spec!r}: the oracle is an offline control for synthetic scans "
                             "(ttt_kd_train / ttt_kd_evaluate --teacher oracle), not a teacher a robot can run")
        return OracleTeacher(parse_oracle(spec), num_classes, res, device)
    if spec in RANDOM_TEACHERS:
        return tiny_teacher(seed=seed, resolution=res, device=device, **RANDOM_TEACHERS[spec])
    if is_builtin(spec):
        spec = str(builtin_folder())
    return _from_disk(spec, res, device)


def _from_disk(spec: str, resolution: Resolution, device: str | torch.device) -> Teacher:
    """A teacher from local files only: which reader depends on what the path holds."""
    path = Path(spec)
    if path.is_dir() and is_dense_teacher_folder(path):
        return load_dense_teacher(path, resolution=resolution, device=device)
    if path.is_dir():
        model = load_hf_dinov2(str(path), spec_kind="folder")
    elif path.is_file():
        if path.suffix not in (".pth", ".pt"):
            raise ValueError(f"teacher {spec}: a file must be an official DINOv2 .pth checkpoint, got {path.suffix!r}")
        model = load_official_dinov2(path)
    elif spec.endswith((".pth", ".pt")) or spec.startswith((".", "/", "~")):
        raise FileNotFoundError(f"teacher {spec}: no such file or folder")
    else:
        model = load_hf_dinov2(spec, spec_kind="hub id")
    return Teacher(model, dinov2_teacher_id(model), resolution, device)


__all__ = ["BUILTIN", "DEFAULT", "RANDOM_TEACHERS", "builtin_folder", "default_resolution", "is_builtin",
           "resolution_from_flag", "resolve"]
