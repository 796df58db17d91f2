"""A message's ``data`` field as a uint8 numpy array, without copying where the source allows it."""

from __future__ import annotations

from typing import Any

import numpy as np


def message_bytes(data: Any) -> np.ndarray:
    """The message's byte buffer as a uint8 array, zero-copy for bytes, array.array and numpy data.

    rclpy gives ``array.array('B')`` (or bytes right after assignment), rosbags
    gives a numpy uint8 array; a plain list (hand-built messages) is copied.
    """
    if isinstance(data, np.ndarray):
        return data.view(np.uint8).reshape(-1) if data.dtype != np.uint8 else data.reshape(-1)
    if isinstance(data, (list, tuple)):
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)
