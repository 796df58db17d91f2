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
from ttt_kd_ros.ros.transforms import TransformBuffer, cam_from_cloud_from_tf2

OPTIONAL_PACKAGES = ("message_filters", "tf2_ros", "tf2_msgs", "sensor_msgs_py", "cv_bridge")


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

    Without tf2_ros, extrinsics come from parameters or ``make_tf_lookup``'s own buffer.
    """
    tf2_ros = _module("tf2_ros")
    if tf2_ros is None:
        return None
    from rclpy.duration import Duration

    buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_time_s))
    listener = tf2_ros.TransformListener(buffer, node)
    return buffer, listener


class Tf2Lookup:
    """tf2_ros.Buffer + TransformListener behind the same ``lookup`` as ``TransformBuffer``.

    tf2's own policy applies (interpolation between samples, no
    extrapolation, ``cache_time_s`` of history).
    """

    backend = "tf2_ros"

    def __init__(self, buffer: Any, listener: Any) -> None:
        self.buffer, self.listener = buffer, listener

    def lookup(self, target: str, source: str, stamp_ns: int | None = None) -> Any:
        """(4, 4) target_from_source at ``stamp_ns`` (None: latest), or None when tf2 cannot answer."""
        try:
            return self.why_or_matrix(target, source, stamp_ns)
        except LookupError:
            return None

    def why_not(self, target: str, source: str, stamp_ns: int | None = None) -> str:
        try:
            self.why_or_matrix(target, source, stamp_ns)
        except LookupError as exc:
            return str(exc)
        return ""

    def why_or_matrix(self, target: str, source: str, stamp_ns: int | None) -> Any:
        from builtin_interfaces.msg import Time

        stamp = None if stamp_ns is None else Time(sec=int(stamp_ns) // 1_000_000_000,
                                                   nanosec=int(stamp_ns) % 1_000_000_000)
        return cam_from_cloud_from_tf2(self.buffer, target, source, stamp)


TF_TOPIC, TF_STATIC_TOPIC = "/tf", "/tf_static"


def tf_qos(static: bool) -> Any:
    """QoS as tf uses it: /tf_static latched (TRANSIENT_LOCAL, RELIABLE, depth 1 per publisher), /tf volatile."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    if static:
        return QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
    return QoSProfile(depth=100, durability=DurabilityPolicy.VOLATILE, reliability=ReliabilityPolicy.RELIABLE)


def make_tf_lookup(node: Any, cache_time_s: float = 10.0) -> tuple[Any, list[Any]] | None:
    """The node's tf source: (lookup object, subscriptions it created), or None when tf cannot be followed here.

    tf2_ros importable: ``Tf2Lookup`` (tf2's listener, no subscriptions of
    ours). Otherwise, with tf2_msgs importable: ``TransformBuffer`` fed by our
    own /tf and /tf_static subscriptions. Neither: None (no TFMessage type
    to subscribe with; cameras need ``cam_from_cloud`` parameters).
    Both objects answer ``lookup(target, source, stamp_ns) -> (4, 4) | None``
    and ``why_not(...) -> str``.
    """
    made = make_tf_buffer(node, cache_time_s)
    if made is not None:
        return Tf2Lookup(*made), []
    if _module("tf2_msgs") is None:
        return None
    buffer = TransformBuffer(cache_time_s)
    tf_message = importlib.import_module("tf2_msgs.msg").TFMessage
    subscriptions = [
        node.create_subscription(tf_message, TF_TOPIC, lambda msg: buffer.add_message(msg, static=False),
                                 tf_qos(static=False)),
        node.create_subscription(tf_message, TF_STATIC_TOPIC, lambda msg: buffer.add_message(msg, static=True),
                                 tf_qos(static=True)),
    ]
    return buffer, subscriptions
