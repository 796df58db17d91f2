"""The weights shipped with the package, named in one place.

The node, the demo, the evaluation and the training tool all ask here, so a
retrained default only changes these files, not their callers. Paths point
into the installed package (setup.py package_data installs the files).
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).resolve().parent

DEFAULT_CHECKPOINT_NAME = "ttt_kd_small_synthetic.safetensors"
"""ttt_kd_small trained jointly (CE + KD) on the synthetic "source" domain with the stand-in teacher."""

SOURCE_ONLY_CHECKPOINT_NAME = "ttt_kd_small_synthetic_source_only.safetensors"
"""The same network, data and budget trained with CE only: the baseline TTT-KD is compared with."""

DEFAULT_TEACHER_NAME = "teacher_synthetic_vit"
"""Hugging Face folder of the stand-in DINOv2-architecture teacher (docs/TRAINING.md)."""

DEFAULT_TEACHER_RESOLUTION = (120, 160)
"""(H, W) the stand-in teacher was trained at: the synthetic cameras' native size (patch 8 -> 15 x 20)."""


def default_checkpoint() -> Path:
    """The shipped joint-trained model (may be absent in a source tree that has not trained it yet)."""
    return CHECKPOINT_DIR / DEFAULT_CHECKPOINT_NAME


def source_only_checkpoint() -> Path:
    """The shipped source-only baseline, when it was trained."""
    return CHECKPOINT_DIR / SOURCE_ONLY_CHECKPOINT_NAME


def default_teacher() -> Path:
    """Folder of the stand-in teacher, a spec that ``teacher_weights.load_teacher`` reads like any DINOv2 folder."""
    return CHECKPOINT_DIR / DEFAULT_TEACHER_NAME


def default_teacher_resolution() -> tuple[int, int]:
    """(H, W) to pass as load_teacher(resolution=...) with default_teacher()."""
    return DEFAULT_TEACHER_RESOLUTION


__all__ = [
    "CHECKPOINT_DIR",
    "DEFAULT_TEACHER_RESOLUTION",
    "default_checkpoint",
    "default_teacher",
    "default_teacher_resolution",
    "source_only_checkpoint",
]
