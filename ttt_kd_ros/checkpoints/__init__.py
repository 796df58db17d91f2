"""The weights shipped with the package, named in one place.

The node, the demo, the evaluation and the training tool all ask here, so a
retrained default only changes these files, not their callers. Paths point
into the installed package (setup.py package_data installs the files).
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).resolve().parent

DEFAULT_CHECKPOINT_NAME = "ttt_kd_small_synthetic.safetensors"
"""ttt_kd_small trained jointly (CE + KD) on the synthetic "source" domain (RGB-D) with the dense stand-in teacher."""

SOURCE_ONLY_CHECKPOINT_NAME = "ttt_kd_small_synthetic_source_only.safetensors"
"""The same network, data and budget trained with CE only: the baseline TTT-KD is compared with."""

DEFAULT_TEACHER_NAME = "teacher_synthetic_dense"
"""Folder of the dense stand-in teacher (an image-only U-Net, teachers/dense.py; NOT DINOv2): docs/TRAINING.md 1c."""

DEFAULT_TEACHER_RESOLUTION = (120, 160)
"""(H, W) the stand-in teacher was trained at: the synthetic cameras' native size (8-px patches -> 15 x 20)."""


LIDAR_CHECKPOINT_NAME = "ttt_kd_small_synthetic_lidar.safetensors"
"""ttt_kd_small trained jointly on the synthetic "lidar" domain (32-beam LiDAR, three cameras) with the same teacher."""

LIDAR_SOURCE_ONLY_CHECKPOINT_NAME = "ttt_kd_small_synthetic_lidar_source_only.safetensors"
"""The LiDAR network trained with CE only."""

SENSORS = {
    "rgbd": (DEFAULT_CHECKPOINT_NAME, SOURCE_ONLY_CHECKPOINT_NAME),
    "lidar": (LIDAR_CHECKPOINT_NAME, LIDAR_SOURCE_ONLY_CHECKPOINT_NAME),
}
"""Sensor kind -> (joint, source-only) file names. A robot picks its model by its sensor: the node's
``checkpoint: builtin`` is the RGB-D pair, ``builtin:lidar`` the LiDAR one."""

DEFAULT_SENSOR = "rgbd"


def _sensor_files(sensor: str) -> tuple[str, str]:
    if sensor not in SENSORS:
        raise ValueError(f"shipped model for sensor {sensor!r}: expected one of {sorted(SENSORS)}")
    return SENSORS[sensor]


def default_checkpoint(sensor: str = DEFAULT_SENSOR) -> Path:
    """The shipped joint-trained model for ``sensor`` (may be absent in a source tree that has not trained it)."""
    return CHECKPOINT_DIR / _sensor_files(sensor)[0]


def source_only_checkpoint(sensor: str = DEFAULT_SENSOR) -> Path:
    """The shipped source-only baseline for ``sensor``, when it was trained."""
    return CHECKPOINT_DIR / _sensor_files(sensor)[1]


SHIPPED = "builtin"
"""The name a user gives for a shipped model: ``builtin`` (the RGB-D one) or ``builtin:<sensor>``."""


def shipped_path(checkpoint: str) -> str:
    """``checkpoint`` with ``builtin`` / ``builtin:<sensor>`` replaced by the shipped file's path (other names as
    they are). Why here: every reader of a checkpoint (the node, ttt_kd_evaluate, ttt_kd_replay, training,
    load_checkpoint itself) then takes the node's spelling; ValueError names a sensor that has no shipped model
    and a shipped file that is missing (a source tree whose checkpoints were not trained)."""
    if not (checkpoint == SHIPPED or checkpoint.startswith(SHIPPED + ":")):
        return checkpoint
    sensor = checkpoint.partition(":")[2] or DEFAULT_SENSOR
    if sensor not in SENSORS:
        raise ValueError(f"checkpoint {checkpoint!r}: the shipped models are "
                         f"{', '.join(f'{SHIPPED}:{s}' for s in SENSORS)} ({SHIPPED} = {SHIPPED}:{DEFAULT_SENSOR})")
    path = default_checkpoint(sensor)
    if not path.is_file():
        raise ValueError(f"checkpoint {checkpoint!r}: the shipped file {path} is missing")
    return str(path)


def default_teacher() -> Path:
    """Folder of the stand-in teacher, a spec that ``teachers.resolve`` reads like any teacher folder."""
    return CHECKPOINT_DIR / DEFAULT_TEACHER_NAME


def default_teacher_resolution() -> tuple[int, int]:
    """(H, W) to pass as teachers.resolve(resolution=...) with default_teacher()."""
    return DEFAULT_TEACHER_RESOLUTION


__all__ = [
    "CHECKPOINT_DIR",
    "DEFAULT_SENSOR",
    "DEFAULT_TEACHER_RESOLUTION",
    "SENSORS",
    "default_checkpoint",
    "default_teacher",
    "default_teacher_resolution",
    "source_only_checkpoint",
]
