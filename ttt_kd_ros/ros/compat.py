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

import numpy as np

from ttt_kd_ros.msgs.stamps import stamp_to_ns
from ttt_kd_ros.msgs.tf_message import tf_message_from_cdr
from ttt_kd_ros.msgs.transforms import TransformBuffer, transform_stamped_to_matrix
from ttt_kd_ros.ros.sync import ApproximateTimeSynchronizer, SyncInput

OPTIONAL_PACKAGES = ("message_filters", "tf2_ros", "tf2_msgs", "sensor_msgs_py", "cv_bridge", "vision_msgs")


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
    The node keeps its own subscriptions either way; ros/pairing.py pushes
    their messages in through ``inputs[i].add(msg)``.
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

    def lookup_latest(self, target: str, source: str) -> tuple[np.ndarray, int | None] | None:
        """(newest target_from_source, its stamp; None for an all-static chain (stamp 0)), or None."""
        from rclpy.time import Time

        try:
            msg = self.buffer.lookup_transform(target, source, Time())
        except _module("tf2_ros").TransformException:
            return None
        stamp = stamp_to_ns(msg.header.stamp)
        return transform_stamped_to_matrix(msg), (stamp or None)

    def close(self) -> None:
        """Destroy the listener's /tf and /tf_static subscriptions (lifecycle cleanup)."""
        unregister = getattr(self.listener, "unregister", None)
        if unregister is not None:
            unregister()
            return
        for name in ("tf_sub", "tf_static_sub"):  # tf2_ros versions without unregister()
            sub = getattr(self.listener, name, None)
            if sub is not None:
                self.listener.node.destroy_subscription(sub)


def cam_from_cloud_from_tf2(buffer: Any, camera_frame: str, cloud_frame: str, stamp: Any = None,
                            timeout_s: float = 0.0) -> np.ndarray:
    """(4, 4) cam_from_cloud from a tf2_ros Buffer (latest transform when ``stamp`` is None).

    Raises LookupError (with tf2's own message) when the chain is unknown, so
    callers catch one exception type for tf2 and for TransformGraph.
    """
    from rclpy.duration import Duration
    from rclpy.time import Time

    when = Time() if stamp is None else Time(nanoseconds=stamp_to_ns(stamp))
    tf2_ros = _module("tf2_ros")
    try:
        msg = buffer.lookup_transform(camera_frame, cloud_frame, when, timeout=Duration(seconds=timeout_s))
    except tf2_ros.TransformException as err:  # Lookup / Connectivity / Extrapolation
        raise LookupError(f"tf2: no transform from {cloud_frame!r} to {camera_frame!r}: {err}") from err
    return transform_stamped_to_matrix(msg)


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
    ours). Otherwise, with a TFMessage type (``tf_message_type``: tf2_msgs,
    or a stand-in test support registered): ``TransformBuffer`` fed by our
    own /tf and /tf_static subscriptions. Neither: None (nothing to subscribe
    with; cameras need ``cam_from_cloud`` parameters).
    Both objects answer ``lookup(target, source, stamp_ns) -> (4, 4) | None``,
    ``lookup_latest(target, source) -> ((4, 4), stamp_ns | None) | None`` and
    ``why_not(...) -> str``; ``release_tf_lookup`` undoes this function.
    """
    made = make_tf_buffer(node, cache_time_s)
    if made is not None:
        return Tf2Lookup(*made), []
    message_type = tf_message_type()
    if message_type is None:
        return None
    tf_message, raw = message_type.message_class, message_type.raw
    buffer = TransformBuffer(cache_time_s)

    def feed(static: bool) -> Callable[[Any], None]:
        def add(msg: Any) -> None:
            if raw:
                try:
                    msg = tf_message_from_cdr(msg)
                except (ValueError, KeyError, IndexError, TypeError, AssertionError):  # a malformed sample
                    buffer.rejected += 1
                    return
            buffer.add_message(msg, static=static)

        return add

    subscriptions = [
        node.create_subscription(tf_message, TF_TOPIC, feed(False), tf_qos(static=False), raw=raw),
        node.create_subscription(tf_message, TF_STATIC_TOPIC, feed(True), tf_qos(static=True), raw=raw),
    ]
    return buffer, subscriptions


@dataclass(frozen=True)
class TfMessageType:
    """The message class /tf and /tf_static are subscribed with, and whether its samples arrive as CDR bytes."""

    message_class: Any
    raw: bool  # True: subscribe with raw=True and decode with msgs.tf_message.tf_message_from_cdr


_stand_in: TfMessageType | None = None


def use_tf_message_stand_in(stand_in: TfMessageType | None) -> None:
    """Register (None: forget) a TFMessage type to use where tf2_msgs is not importable.

    WHY: the PyPI ROS wheels have no tf2_msgs, and this package ships no
    forged type support of its own; test support registers a stand-in so the
    node's own tf buffer is exercised over DDS. A real tf2_msgs always wins.
    """
    global _stand_in
    _stand_in = stand_in


def tf_message_type() -> TfMessageType | None:
    """tf2_msgs' TFMessage when importable, else the registered stand-in, else None (tf cannot be followed)."""
    if _module("tf2_msgs") is not None:
        return TfMessageType(importlib.import_module("tf2_msgs.msg").TFMessage, raw=False)
    return _stand_in


def release_tf_lookup(node: Any, tf: Any, subscriptions: list[Any]) -> None:
    """Destroy what ``make_tf_lookup`` subscribed: our own /tf and /tf_static readers, or tf2_ros' listener's."""
    for sub in subscriptions:
        node.destroy_subscription(sub)
    close = getattr(tf, "close", None)
    if close is not None:
        close()


class LabelInfoPublisher:
    """A latched vision_msgs/LabelInfo: the checkpoint's class ids and names, for consumers that look them up."""

    def __init__(self, node: Any, topic: str, message_module: Any) -> None:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        self._node, self._msgs = node, message_module
        self._pub = node.create_publisher(message_module.LabelInfo, topic, QoSProfile(
            depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE))

    def publish(self, label_set: Any, stamp: Any) -> None:
        msg = self._msgs.LabelInfo()
        msg.header.stamp = stamp
        msg.class_map = [self._msgs.VisionClass(class_id=i, class_name=name)
                         for i, name in enumerate(label_set.class_names)]
        msg.threshold = 0.0
        self._pub.publish(msg)

    def destroy(self) -> None:
        self._node.destroy_publisher(self._pub)


def label_info_publisher(node: Any, topic: str) -> LabelInfoPublisher | None:
    """A latched LabelInfo publisher where vision_msgs is importable (a ROS install), else None (no wheel here)."""
    vision_msgs = _module("vision_msgs")
    if vision_msgs is None:
        return None
    return LabelInfoPublisher(node, topic, importlib.import_module("vision_msgs.msg"))
