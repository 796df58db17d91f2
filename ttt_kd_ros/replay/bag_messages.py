"""What a replay needs from a bag besides its Scans: the topic plan, the cameras' extrinsics, raw CDR messages.

The live node takes the bag's messages as they were recorded, so the replay
publishes serialised CDR bytes (``publisher.publish(raw)``) instead of
rebuilding messages: rosbag2 CDR goes out untouched; ROS 1 messages (``.bag``
and ROS 1 MCAP) are converted to ROS 2 CDR by rosbags at the byte level
(``ros1_to_cdr``: the Header's ``seq`` is dropped, everything else kept).

The node here has no tf2_ros, so each camera's cam_from_cloud is read from the
bag's /tf_static once, before the node starts, and handed to it as a
parameter; a bag whose links change over time (KITTI object frames each carry
their own calibration) gets the first value and a note saying so.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ttt_kd_ros.data.rosbag import (
    TF_MESSAGE,
    TF_TOPICS,
    CameraTopics,
    bag_topics,
    detect_topics,
    info_topic_for,
    read_bag_messages,
    resolve_camera_frame,
)
from ttt_kd_ros.msgs.stamps import header_stamp_ns
from ttt_kd_ros.msgs.transforms import TransformGraph
from ttt_kd_ros.msgs.typestore import ros2_typestore
from ttt_kd_ros.replay.bag_writer import CUSTOM_LABEL_SET


@dataclass(frozen=True)
class RawMessage:
    topic: str
    msgtype: str
    log_time_ns: int
    cdr: bytes  # ROS 2 CDR with its 4-byte encapsulation header


def cdr_header_stamp_ns(cdr: bytes) -> int:
    """``header.stamp`` of a CDR message whose first field is a std_msgs/Header (read in place, no deserialising).

    ValueError for a buffer too short to hold one.
    """
    if len(cdr) < 12:
        raise ValueError(f"CDR message: expected at least 12 bytes (encapsulation + stamp), got {len(cdr)}")
    order = "<" if cdr[1] & 1 else ">"  # encapsulation kinds 0x0001 / 0x0003 are little endian
    sec, nanosec = struct.unpack_from(order + "iI", cdr, 4)
    return sec * 1_000_000_000 + nanosec


def read_raw_messages(path: str | Path, topics: Sequence[str]) -> Iterator[RawMessage]:
    """Messages of ``topics`` in log-time order as ROS 2 CDR bytes, from any bag data.rosbag reads."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    store = ros2_typestore()
    if path.is_file() and path.suffix == ".mcap":
        yield from _raw_mcap_file(path, topics, store)
        return
    from rosbags.highlevel import AnyReader

    with AnyReader([path]) as reader:
        ros1 = reader.is2 is False
        connections = [c for c in reader.connections if c.topic in topics]
        for connection, log_time, raw in reader.messages(connections=connections):
            cdr = bytes(store.ros1_to_cdr(raw, connection.msgtype)) if ros1 else bytes(raw)
            yield RawMessage(connection.topic, connection.msgtype, int(log_time), cdr)


def _raw_mcap_file(path: Path, topics: Sequence[str], store: Any) -> Iterator[RawMessage]:
    from mcap.reader import make_reader
    from rosbags.typesys.msg import normalize_msgtype

    with path.open("rb") as stream:
        for schema, channel, message in make_reader(stream).iter_messages(topics=list(topics), log_time_order=True):
            msgtype = normalize_msgtype(schema.name)
            if channel.message_encoding == "ros1":
                cdr = bytes(store.ros1_to_cdr(message.data, msgtype))
            elif channel.message_encoding == "cdr":
                cdr = bytes(message.data)
            else:
                raise ValueError(f"{path}: channel {channel.topic!r}: message encoding {channel.message_encoding!r} "
                                 "is not supported (expected ros1 or cdr)")
            yield RawMessage(channel.topic, msgtype, int(message.log_time), cdr)


def bag_label_set(path: str | Path) -> str:
    """The label set a rosbag2 folder's metadata names (ttt_kd_make_bag writes it); "" when unknown."""
    metadata = Path(path) / "metadata.yaml"
    if not metadata.is_file():
        return ""
    import yaml

    info = (yaml.safe_load(metadata.read_text()) or {}).get("rosbag2_bagfile_information", {})
    return str((info.get("custom_data") or {}).get(CUSTOM_LABEL_SET, ""))


@dataclass
class BagPlan:
    """Which topics a replay uses and what the node must be told about them."""

    path: Path
    cloud_topic: str
    cameras: list[CameraTopics]
    cam_from_cloud: dict[str, np.ndarray]  # camera name -> (4, 4), from the bag's tf
    cloud_frame: str
    num_clouds: int
    sensor_rate_hz: float | None
    label_set: str
    notes: list[str] = field(default_factory=list)
    moving_cameras: list[str] = field(default_factory=list)  # whose tf changes within the bag

    @property
    def topics(self) -> list[str]:
        """Cloud and camera topics, the ones the node subscribes to."""
        return [self.cloud_topic, *(t for cam in self.cameras for t in (cam.image, cam.info))]


def plan_bag(path: str | Path, cloud_topic: str | None = None, camera_topics: Sequence[str] | None = None,
             max_frames: int | None = None) -> BagPlan:
    """Topic choice (auto-detected unless given), cloud count and rate, extrinsics from tf.

    ``camera_topics``: image topics (their CameraInfo beside them); None
    auto-detects, [] replays clouds only. A camera without a tf chain to the
    cloud frame is left out with a note (the node could not place it).
    """
    path = Path(path)
    topics = bag_topics(path)
    cloud_topic, detected = detect_topics(topics, cloud_topic)
    if camera_topics is None:
        cameras = detected
    else:
        cameras = []
        for image in camera_topics:
            cam = CameraTopics(image=image, info=info_topic_for(image))
            for topic, kind in ((cam.image, "sensor_msgs/msg/Image"), (cam.info, "sensor_msgs/msg/CameraInfo")):
                if topics.get(topic) != kind:
                    raise ValueError(f"--camera {image}: {topic!r} is not a {kind} topic of {path}")
            cameras.append(cam)
    tf_topics = [t for t in TF_TOPICS if topics.get(t) == TF_MESSAGE]
    graph = TransformGraph()
    values: dict[str, list[np.ndarray]] = {}
    info_frames: dict[str, str] = {}
    stamps: list[int] = []
    cloud_frame = ""
    info_of = {cam.info: cam.name for cam in cameras}
    for item in read_bag_messages(path, [cloud_topic, *tf_topics, *info_of]):
        if item.topic in tf_topics:
            graph.add_all([item.msg])
            for link in item.msg.transforms:
                values.setdefault(str(link.child_frame_id).lstrip("/"), []).append(
                    np.array([link.transform.translation.x, link.transform.translation.y,
                              link.transform.translation.z, link.transform.rotation.x, link.transform.rotation.y,
                              link.transform.rotation.z, link.transform.rotation.w]))
        elif item.topic == cloud_topic:
            if max_frames is None or len(stamps) < max_frames:
                stamps.append(header_stamp_ns(item.msg))
                cloud_frame = cloud_frame or str(item.msg.header.frame_id).lstrip("/")
        elif item.topic in info_of:
            info_frames.setdefault(info_of[item.topic], str(item.msg.header.frame_id).lstrip("/"))
    notes: list[str] = []
    moving: list[str] = []
    extrinsics: dict[str, np.ndarray] = {}
    kept = []
    for cam in cameras:
        frame = info_frames.get(cam.name, "")
        resolved = resolve_camera_frame(graph, frame, cloud_frame) if frame and cloud_frame else None
        if frame and frame == cloud_frame:
            extrinsics[cam.name] = np.eye(4)
        elif resolved is None:
            notes.append(f"camera {cam.name}: no tf chain from {cloud_frame!r} to {frame!r}; left out")
            continue
        else:
            extrinsics[cam.name] = graph.lookup(resolved, cloud_frame, stamp_ns=stamps[0] if stamps else None)
            history = values.get(resolved, [])
            if len(history) > 1 and not all(np.allclose(h, history[0], atol=1e-9) for h in history):
                moving.append(cam.name)
        kept.append(cam)
    rate = (len(stamps) - 1) / ((stamps[-1] - stamps[0]) * 1e-9) if len(stamps) >= 2 and stamps[-1] > stamps[0] \
        else None
    return BagPlan(path, cloud_topic, kept, extrinsics, cloud_frame, len(stamps), rate, bag_label_set(path), notes,
                   moving)
