"""The one rosbags typestore of this package (ROS 2 Jazzy message definitions).

Bag writing, raw replay, TFMessage CDR and live-replay scoring all
(de)serialise with it; building a typestore parses every bundled message
definition, so it is built once per process.
"""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def ros2_typestore() -> Any:
    """rosbags ``Typestore`` for ROS 2 Jazzy (``serialize_cdr``, ``deserialize_cdr``, ``ros1_to_cdr``, ``types``)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)
