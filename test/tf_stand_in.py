"""Test support only: a raw-CDR stand-in for tf2_msgs/msg/TFMessage, for where tf2_msgs is not installed.

The package itself ships no forged message type: its node follows /tf only
with a real tf2_msgs (or tf2_ros) and otherwise uses parameter extrinsics.
The tests still exercise the node's own tf buffer over DDS by registering
this stand-in (``install()``, before the node configures). It advertises
MarkerArray's type hash and type description, which is why it lives here.
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache
from pathlib import Path
from typing import Any

from ttt_kd_ros.ros import compat

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
    returns None (no tf in that test). Known limits: the
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


def stand_in() -> compat.TfMessageType | None:
    """The stand-in as the node takes it (raw CDR samples); None where the type support cannot be assembled."""
    message_class = _raw_tf_message_type()
    return None if message_class is None else compat.TfMessageType(message_class, raw=True)


def tf_message_type() -> compat.TfMessageType | None:
    """What a test publisher uses for /tf_static: tf2_msgs when importable, else the stand-in."""
    if compat.have("tf2_msgs"):
        return compat.tf_message_type()
    return stand_in()


def install() -> bool:
    """Register the stand-in with the package (unless tf2_msgs is importable); whether /tf can be followed now."""
    if not compat.have("tf2_msgs"):
        compat.use_tf_message_stand_in(stand_in())
    return compat.tf_message_type() is not None
