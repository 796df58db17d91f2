"""The checkpoint format: safetensors weights + a JSON header, never pickle.

Weights and BatchNorm running statistics are tensors in a safetensors file; the
network's NetConfig, class names, teacher id and resolution and free-form
``extra`` (the training command, history) are one JSON string in its metadata.
A wrong file fails at start-up with a ValueError naming the file and the
field, and checkpoints written before a NetConfig field existed load with the
value that reproduces their behaviour (``_OPTIONAL_CONFIG_FIELDS``).
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ttt_kd_ros.checkpoints import shipped_path
from ttt_kd_ros.labels import LABEL_SETS, get_label_set
from ttt_kd_ros.model import NetConfig, TTTKDNet

CHECKPOINT_FORMAT_VERSION = 1
_METADATA_KEY = "ttt_kd_ros"


def save_checkpoint(model: TTTKDNet, path: str | os.PathLike, extra: dict | None = None,
                    validated: dict | None = None) -> Path:
    """Weights + running statistics as safetensors; config, class names and ``extra`` as JSON metadata.

    ``validated``: the adaptation and fusion settings chosen for this model on validation scans
    (``{"adapt": {AdaptConfig fields}, "fusion": {FusionConfig fields}, "source": "how they were chosen"}``);
    the node, the evaluator and the demo start from them (``validated_settings``).

    Written to a temporary file and renamed, so a crash never leaves half a checkpoint.
    """
    path = Path(path)
    config = model.config
    meta = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "config": config.to_dict(),
        "class_names": list(get_label_set(config.label_set).class_names) if config.label_set in LABEL_SETS else [],
        "voxel_size_m": config.voxel_size_m,
        "teacher_id": config.teacher_id,
        "teacher_resolution": config.teacher_resolution if isinstance(config.teacher_resolution, int)
        else list(config.teacher_resolution),
        "extra": extra or {},
        "validated": validated or {},
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={_METADATA_KEY: json.dumps(meta)})
    tmp.replace(path)
    return path


_OPTIONAL_CONFIG_FIELDS = {"kd_target_center": [], "fusion_head": False, "class_prior": []}
"""NetConfig fields added after checkpoints were shipped, with the value that reproduces the older behaviour."""

_REQUIRED_META = ("format_version", "config", "class_names", "voxel_size_m", "teacher_id", "teacher_resolution")


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint (a path, or a shipped model's name: ``builtin:lidar``), validated;
    ValueError names the file and the field."""
    path = Path(shipped_path(os.fspath(path)))
    if not path.is_file():
        raise ValueError(f"checkpoint {path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_METADATA_KEY)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"checkpoint {path}: not a readable safetensors file ({err})") from err
    if raw is None:
        raise ValueError(f"checkpoint {path}: metadata field {_METADATA_KEY!r} missing (not a ttt_kd_ros checkpoint)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"checkpoint {path}: metadata field {_METADATA_KEY!r} is not valid JSON ({err})") from err
    for key in _REQUIRED_META:
        if key not in meta:
            raise ValueError(f"checkpoint {path}: metadata field {key!r} missing")
    if meta["format_version"] != CHECKPOINT_FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path}: format_version expected {CHECKPOINT_FORMAT_VERSION}, got {meta['format_version']}"
        )
    return meta


def validated_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's validated settings (``save_checkpoint``'s ``validated``); {} for older checkpoints."""
    meta = read_checkpoint_metadata(path)
    validated = meta.get("validated") or {}
    if not isinstance(validated, dict) or not all(isinstance(validated.get(k, {}), dict) for k in ("adapt", "fusion")):
        raise ValueError(f"checkpoint {path}: metadata field 'validated' expected {{'adapt': {{...}}, "
                         f"'fusion': {{...}}}}, got {validated!r}")
    return validated


def _config_from_meta(path: Path, meta: dict[str, Any], backend: str | None) -> NetConfig:
    stored = {**_OPTIONAL_CONFIG_FIELDS, **meta["config"]}
    names = {f.name for f in fields(NetConfig)}
    missing = sorted(names - set(stored))
    unknown = sorted(set(stored) - names)
    if missing or unknown:
        raise ValueError(f"checkpoint {path}: config fields missing {missing}, unknown {unknown}")
    if backend is not None:
        stored["backend"] = backend
    try:
        return NetConfig(**stored)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {path}: config invalid: {err}") from err


def _check_expectations(path: Path, meta: dict[str, Any], config: NetConfig, expect: dict[str, Any]) -> None:
    config_dict = config.to_dict()
    for key, want in expect.items():
        if key in config_dict:
            have = config_dict[key]
        elif key in meta:
            have = meta[key]
        else:
            raise ValueError(f"checkpoint {path}: expect names an unknown field {key!r}")
        if isinstance(want, tuple):
            want = list(want)
        if have != want:
            raise ValueError(f"checkpoint {path}: field {key!r} is {have!r} in the checkpoint, but this run needs "
                             f"{want!r}")


def load_checkpoint(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    expect: dict[str, Any] | None = None,
    backend: str | None = None,
) -> TTTKDNet:
    """Rebuild the TTTKDNet stored at ``path`` (or a shipped model: ``builtin:lidar``) (eval mode) on ``device``.

    ``expect`` maps config / metadata fields to required values (e.g.
    {"teacher_dim": 384, "label_set": "scannet20"}); ``backend`` overrides the
    stored sparse backend (weights are backend-independent). Every problem is
    a ValueError naming the file and the field.
    """
    path = Path(shipped_path(os.fspath(path)))
    meta = read_checkpoint_metadata(path)
    config = _config_from_meta(path, meta, backend)
    if config.label_set in LABEL_SETS:
        names = list(get_label_set(config.label_set).class_names)
        if meta["class_names"] != names:
            raise ValueError(
                f"checkpoint {path}: class_names for label set {config.label_set!r} expected {names}, "
                f"got {meta['class_names']}"
            )
    _check_expectations(path, meta, config, expect or {})
    model = TTTKDNet(config)
    wanted = model.state_dict()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            stored_keys = set(f.keys())
            missing = sorted(set(wanted) - stored_keys)
            unexpected = sorted(stored_keys - set(wanted))
            if missing or unexpected:
                raise ValueError(f"checkpoint {path}: tensors missing {missing[:10]}, unexpected {unexpected[:10]}")
            tensors = {}
            for key, ref in wanted.items():
                tensor = f.get_tensor(key)
                if tensor.shape != ref.shape or tensor.dtype != ref.dtype:
                    raise ValueError(
                        f"checkpoint {path}: tensor {key!r} expected {tuple(ref.shape)} {ref.dtype}, "
                        f"got {tuple(tensor.shape)} {tensor.dtype}"
                    )
                tensors[key] = tensor
    except SafetensorError as err:
        raise ValueError(f"checkpoint {path}: tensor data unreadable ({err})") from err
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval()


__all__ = ["CHECKPOINT_FORMAT_VERSION", "load_checkpoint", "read_checkpoint_metadata", "save_checkpoint",
           "validated_settings"]
