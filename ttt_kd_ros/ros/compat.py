"""The one place that decides: the real ROS helper package, or this package's own implementation.

A ROS 2 install has message_filters, tf2_ros, sensor_msgs_py and cv_bridge;
the PyPI wheels this package is developed and tested with have none of them
(../shared/ENVIRONMENT.md). Every caller asks here, so the choice is made
once, can be forced in tests, and is reported (``backends()``) in logs.

Nothing is imported at module import time: each probe runs on first use.
"""

from __future__ import annotations

import ctypes
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
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
    tf_message, raw = tf_message_type()
    if tf_message is None:
        return None
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


def tf_message_type() -> tuple[Any, bool]:
    """(message class for /tf and /tf_static, whether it carries raw CDR bytes), or (None, False).

    tf2_msgs.msg.TFMessage when importable; otherwise the raw-CDR stand-in of
    ``_raw_tf_message_type`` (the PyPI ROS wheels have no tf2_msgs).
    """
    if _module("tf2_msgs") is not None:
        return importlib.import_module("tf2_msgs.msg").TFMessage, False
    stand_in = _raw_tf_message_type()
    return (stand_in, True) if stand_in is not None else (None, False)


@cache
def _typestore() -> Any:
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)


def tf_message_from_cdr(raw: bytes) -> Any:
    """CDR bytes of a tf2_msgs/msg/TFMessage -> a TFMessage-like (rosbags) object with ``.transforms``."""
    return _typestore().deserialize_cdr(raw, "tf2_msgs/msg/TFMessage")


def tf_message_to_cdr(links: Sequence[tuple[str, str, Any, int]]) -> bytes:
    """(parent, child, parent_from_child (4, 4), stamp_ns) links -> CDR bytes of a TFMessage (publishers, tests)."""
    from ttt_kd_ros.ros.transforms import matrix_to_quaternion

    types = _typestore().types
    transforms = []
    for parent, child, T, stamp_ns in links:
        sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
        qx, qy, qz, qw = (float(v) for v in matrix_to_quaternion(T[:3, :3]))
        transforms.append(types["geometry_msgs/msg/TransformStamped"](
            header=types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                                frame_id=parent),
            child_frame_id=child,
            transform=types["geometry_msgs/msg/Transform"](
                translation=types["geometry_msgs/msg/Vector3"](x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                rotation=types["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw))))
    msg = types["tf2_msgs/msg/TFMessage"](transforms=transforms)
    return bytes(_typestore().serialize_cdr(msg, "tf2_msgs/msg/TFMessage"))


_WORD = ctypes.c_void_p
_FASTRTPS_C, _INTROSPECTION_C = b"rosidl_typesupport_fastrtps_c", b"rosidl_typesupport_introspection_c"


@cache
def _raw_tf_message_type() -> Any:
    """A message class whose DDS type is tf2_msgs::msg::dds_::TFMessage_, for raw (CDR bytes) pub/sub only.

    WHY: tf2_msgs is not installable from PyPI, and a subscription needs the
    type's C type support to match /tf publishers. TFMessage is one field,
    ``geometry_msgs/TransformStamped[] transforms``; visualization_msgs/
    MarkerArray has the same shape (one unbounded message sequence), so its
    introspection type support is copied with the names and the element type
    replaced (this is what rmw_fastrtps derives the DDS type object from),
    and TransformStamped's fastrtps callbacks are copied under the TFMessage
    name (used only for the type name and size hints: raw samples are never
    (de)serialised by them). Every copied struct is checked against the
    expected layout first; on any mismatch (another ROS distribution) this
    returns None and the node falls back to parameters. Known limits: the
    advertised type hash and type description are MarkerArray's.
    """
    try:
        return _build_raw_tf_message_type()
    except (OSError, AttributeError, ValueError):
        return None


def _words(address: int, count: int) -> Any:
    return (_WORD * count).from_address(address)


def _handle(package: str, name: str, typesupport: str) -> int:
    lib = ctypes.CDLL(str(Path(sys.prefix) / "lib" / f"lib{package}__rosidl_typesupport_{typesupport}.so"))
    get = getattr(lib, f"rosidl_typesupport_{typesupport}__get_message_type_support_handle__{package}__msg__{name}")
    get.restype = _WORD
    handle = get()
    if not handle:
        raise ValueError(f"{package}/{name}: no {typesupport} type support handle")
    return handle


def _build_raw_tf_message_type() -> Any:
    keep: list[Any] = []  # every buffer the C side points into lives as long as the class

    def text(value: bytes) -> int:
        buf = ctypes.create_string_buffer(value)
        keep.append(buf)
        return ctypes.addressof(buf)

    def copy(address: int, count: int) -> Any:
        words = (_WORD * count)(*_words(address, count))
        keep.append(words)
        return words

    marker_array = _handle("visualization_msgs", "MarkerArray", "introspection_c")
    marker = _handle("visualization_msgs", "Marker", "introspection_c")
    transform_stamped = _handle("geometry_msgs", "TransformStamped", "introspection_c")
    # rosidl_message_type_support_t: identifier, data, func, hash, description, description sources
    introspection = copy(marker_array, 6)
    # MessageMembers: namespace, name, member_count, size_of, has_any_key_member, members, init, fini
    members = copy(introspection[1], 8)
    if ctypes.string_at(members[1]) != b"MarkerArray" or members[2] != 1 or not members[5]:
        raise ValueError("MarkerArray introspection layout is not the expected one")
    # MessageMember: name, type_id, string_upper_bound, members (sub-message type support), flags, ... (14 words)
    member = copy(members[5], 14)
    if ctypes.string_at(member[0]) != b"markers" or member[3] != marker:
        raise ValueError("MarkerArray member layout is not the expected one")
    member[0], member[3] = text(b"transforms"), transform_stamped
    members[0], members[1], members[5] = text(b"tf2_msgs__msg"), text(b"TFMessage"), ctypes.addressof(member)
    introspection[1] = ctypes.addressof(members)
    fastrtps = copy(_handle("geometry_msgs", "TransformStamped", "fastrtps_c"), 6)
    # message_type_support_callbacks_t: namespace, name, then function pointers (16 words cover every distro's)
    callbacks = copy(fastrtps[1], 16)
    if ctypes.string_at(callbacks[1]) != b"TransformStamped":
        raise ValueError("TransformStamped fastrtps callbacks layout is not the expected one")
    callbacks[0], callbacks[1] = text(b"tf2_msgs::msg"), text(b"TFMessage")
    fastrtps[1] = ctypes.addressof(callbacks)

    dispatch_type = ctypes.CFUNCTYPE(_WORD, _WORD, ctypes.c_char_p)

    def dispatch(_handle_address: int, identifier: bytes) -> int | None:
        if identifier == _FASTRTPS_C:
            return ctypes.addressof(fastrtps)
        if identifier == _INTROSPECTION_C:
            return ctypes.addressof(introspection)
        return None

    dispatch_function = dispatch_type(dispatch)
    keep.append(dispatch_function)
    top = copy(marker_array, 6)
    top[0], top[2] = text(b"ttt_kd_ros_raw_tf_message"), ctypes.cast(dispatch_function, _WORD).value
    new_capsule = ctypes.pythonapi.PyCapsule_New
    new_capsule.restype, new_capsule.argtypes = ctypes.py_object, [_WORD, ctypes.c_char_p, _WORD]
    capsule = new_capsule(ctypes.addressof(top), None, None)

    class _Meta(type):
        _CREATE_ROS_MESSAGE = _CONVERT_FROM_PY = _CONVERT_TO_PY = _DESTROY_ROS_MESSAGE = capsule
        _TYPE_SUPPORT = capsule

        @classmethod
        def __import_type_support__(cls) -> None:
            """Already built (rclpy calls this when _TYPE_SUPPORT is None)."""

    class RawTFMessage(metaclass=_Meta):
        """tf2_msgs/msg/TFMessage as raw CDR: subscribe with raw=True, publish bytes (tf_message_to_cdr)."""

        _keep = keep

    return RawTFMessage
