"""tf2_msgs/msg/TFMessage <-> CDR bytes through the rosbags typestore (no tf2_msgs package needed).

The node's own tf buffer decodes raw /tf samples with ``tf_message_from_cdr``
when it subscribes with a raw stand-in type; publishers in tests and bag
writers build messages with ``tf_message_to_cdr``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ttt_kd_ros.msgs.stamps import ns_to_sec_nanosec
from ttt_kd_ros.msgs.transforms import matrix_to_quaternion
from ttt_kd_ros.msgs.typestore import ros2_typestore

TF_MESSAGE = "tf2_msgs/msg/TFMessage"


def tf_message_from_cdr(raw: bytes) -> Any:
    """CDR bytes of a tf2_msgs/msg/TFMessage -> a TFMessage-like (rosbags) object with ``.transforms``."""
    return ros2_typestore().deserialize_cdr(raw, TF_MESSAGE)


def tf_message_to_cdr(links: Sequence[tuple[str, str, Any, int]]) -> bytes:
    """(parent, child, parent_from_child (4, 4), stamp_ns) links -> CDR bytes of a TFMessage (publishers, tests)."""
    store = ros2_typestore()
    types = store.types
    transforms = []
    for parent, child, T, stamp_ns in links:
        sec, nanosec = ns_to_sec_nanosec(stamp_ns)
        qx, qy, qz, qw = (float(v) for v in matrix_to_quaternion(T[:3, :3]))
        transforms.append(types["geometry_msgs/msg/TransformStamped"](
            header=types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                                frame_id=parent),
            child_frame_id=child,
            transform=types["geometry_msgs/msg/Transform"](
                translation=types["geometry_msgs/msg/Vector3"](x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                rotation=types["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw))))
    msg = types[TF_MESSAGE](transforms=transforms)
    return bytes(store.serialize_cdr(msg, TF_MESSAGE))
