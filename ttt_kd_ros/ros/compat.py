"""The one place that decides: the real ROS helper package, or this package's own implementation.

A ROS 2 install has message_filters, tf2_ros, sensor_msgs_py and cv_bridge;
the PyPI wheels this package is developed and tested with have none of them
(../shared/ENVIRONMENT.md). Every caller asks here, so the choice is made
once, can be forced in tests, and is reported (``backends()``) in logs.

Nothing is imported at module import time: each probe runs on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from ttt_kd_ros.ros.sync import ApproximateTimeSynchronizer, SyncInput

OPTIONAL_PACKAGES = ("message_filters", "tf2_ros", "sensor_msgs_py", "cv_bridge")


@cache
def _module(name: str) -> Any | None:
    """The imported package, or None when it is not installed (or fails to import)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def have(name: str) -> bool:
    """Whether the optional ROS package ``name`` (one of OPTIONAL_PACKAGES) is importable here."""
    if name not in OPTIONAL_PACKAGES:
        raise ValueError(f"name: expected one of {OPTIONAL_PACKAGES}, got {name!r}")
    return _module(name) is not None


def backends() -> dict[str, str]:
    """Package -> "ros" or "builtin", for a start-up log line."""
    return {name: "ros" if have(name) else "builtin" for name in OPTIONAL_PACKAGES}


@dataclass
class SyncPipeline:
    """A synchroniser and the inputs a node feeds (``inputs[i].add(msg)``) from its subscriptions."""

    synchronizer: Any
    inputs: list[Any]
    backend: str  # "message_filters" or "builtin"

    def add(self, index: int, msg: Any) -> None:
        self.inputs[index].add(msg)


def _message_filters_inputs(message_filters: Any, names: Sequence[str]) -> list[Any]:
    class _Feed(message_filters.SimpleFilter):
        """A message_filters input fed by the node's own subscription (so QoS / raw stay the node's)."""

        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def add(self, msg: Any) -> None:
            self.signalMessage(msg)

    return [_Feed(name) for name in names]


def make_synchronizer(
    input_names: Sequence[str],
    queue_size: int,
    slop_s: float,
    callback: Callable[..., Any],
    use_message_filters: bool | None = None,
) -> SyncPipeline:
    """Approximate-time synchroniser over ``len(input_names)`` inputs calling ``callback(*msgs)`` in input order.

    ``use_message_filters`` None picks message_filters when importable;
    True requires it (ImportError otherwise); False forces the builtin one.
    The node keeps its own subscriptions either way and pushes messages in
    through ``inputs[i].add(msg)``.
    """
    message_filters = _module("message_filters") if use_message_filters in (None, True) else None
    if use_message_filters and message_filters is None:
        raise ImportError("message_filters was requested (use_message_filters=True) but is not importable")
    if message_filters is not None:
        inputs = _message_filters_inputs(message_filters, input_names)
        sync = message_filters.ApproximateTimeSynchronizer(inputs, queue_size, slop_s)
        backend = "message_filters"
    else:
        inputs = [SyncInput(name) for name in input_names]
        sync = ApproximateTimeSynchronizer(inputs, queue_size, slop_s)
        backend = "builtin"
    sync.registerCallback(callback)
    return SyncPipeline(synchronizer=sync, inputs=inputs, backend=backend)


def make_tf_buffer(node: Any, cache_time_s: float = 10.0) -> tuple[Any, Any] | None:
    """(tf2_ros.Buffer, TransformListener) subscribed to /tf and /tf_static, or None without tf2_ros.

    Without tf2_ros, extrinsics come from parameters (ttt_kd_ros.ros.transforms).
    """
    tf2_ros = _module("tf2_ros")
    if tf2_ros is None:
        return None
    from rclpy.duration import Duration

    buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_time_s))
    listener = tf2_ros.TransformListener(buffer, node)
    return buffer, listener
