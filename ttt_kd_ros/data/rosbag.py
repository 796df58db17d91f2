"""Scans from recorded bags: rosbag2 (mcap, sqlite3), ROS 1 ``.bag`` and ROS 1 MCAP files.

Messages are deserialised with the pure-Python ``rosbags`` library (no ROS
install needed) and become Scans through the same function the node uses
(``msgs.scan_messages.scan_from_messages``), so a bag replays exactly as the
live topics would. rosbags' AnyReader does not open MCAP files written with the ROS 1
profile (the Ouster recording), so single ``.mcap`` files are read with the
``mcap`` package and deserialised with a rosbags typestore built from the
file's own schemas.

Pairing streams through the bag in log order with bounded buffers: a cloud
waits until every camera has an image stamped past ``cloud + slop`` (no closer
image can still come), then takes, per camera, the image nearest in stamp
within the slop and the CameraInfo nearest to that image. Extrinsics come from
``/tf_static`` (and ``/tf``) at the cloud's stamp, or from ``cam_from_cloud``
parameters.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ttt_kd_ros.msgs.image import DEPTH_ENCODINGS
from ttt_kd_ros.msgs.scan_messages import CameraMessages, CloudHeader, ScanPolicy, scan_from_messages
from ttt_kd_ros.msgs.stamps import header_stamp_ns
from ttt_kd_ros.msgs.transforms import TransformGraph, cam_from_cloud_from_parameter
from ttt_kd_ros.scan import Scan

LOG = logging.getLogger(__name__)

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
TF_TOPICS = ("/tf_static", "/tf")


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str  # ROS 2 style name, e.g. sensor_msgs/msg/PointCloud2
    log_time_ns: int
    msg: Any


def _normalize_msgtype(name: str) -> str:
    from rosbags.typesys.msg import normalize_msgtype

    return normalize_msgtype(name)


def _is_single_mcap(path: Path) -> bool:
    return path.is_file() and path.suffix == ".mcap"


def bag_topics(path: str | Path) -> dict[str, str]:
    """Topic -> message type (ROS 2 style) of a bag; FileNotFoundError when the path does not exist."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    if _is_single_mcap(path):
        from mcap.reader import make_reader

        with path.open("rb") as stream:
            summary = make_reader(stream).get_summary()
        if summary is None:
            raise ValueError(f"{path}: MCAP file has no summary section; re-index it with `mcap recover`")
        return {
            ch.topic: _normalize_msgtype(summary.schemas[ch.schema_id].name) for ch in summary.channels.values()
        }
    from rosbags.highlevel import AnyReader

    with AnyReader([path]) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def read_bag_messages(path: str | Path, topics: Sequence[str] | None = None) -> Iterator[BagMessage]:
    """Deserialised messages of ``topics`` (all when None) in log-time order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    if _is_single_mcap(path):
        yield from _read_mcap_file(path, topics)
        return
    from rosbags.highlevel import AnyReader

    with AnyReader([path]) as reader:
        connections = [c for c in reader.connections if topics is None or c.topic in topics]
        for connection, log_time, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, connection.msgtype)
            yield BagMessage(connection.topic, connection.msgtype, int(log_time), msg)


def _read_mcap_file(path: Path, topics: Sequence[str] | None) -> Iterator[BagMessage]:
    """A single MCAP file, ROS 1 (``ros1msg``) or ROS 2 (``ros2msg``) schemas, through a rosbags typestore."""
    from mcap.reader import make_reader
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    typestore = get_typestore(Stores.EMPTY)
    registered: set[int] = set()
    with path.open("rb") as stream:
        reader = make_reader(stream)
        for schema, channel, message in reader.iter_messages(topics=topics, log_time_order=True):
            if schema is None:
                raise ValueError(f"{path}: channel {channel.topic!r} has no schema; cannot deserialise")
            msgtype = _normalize_msgtype(schema.name)
            if schema.id not in registered:
                if schema.encoding not in ("ros1msg", "ros2msg"):
                    raise ValueError(
                        f"{path}: channel {channel.topic!r} schema encoding {schema.encoding!r} is not supported "
                        "(expected ros1msg or ros2msg)"
                    )
                typestore.register(get_types_from_msg(schema.data.decode(), msgtype))
                registered.add(schema.id)
            if channel.message_encoding == "ros1":
                msg = typestore.deserialize_ros1(message.data, msgtype)
            elif channel.message_encoding == "cdr":
                msg = typestore.deserialize_cdr(message.data, msgtype)
            else:
                raise ValueError(
                    f"{path}: channel {channel.topic!r} message encoding {channel.message_encoding!r} "
                    "is not supported (expected ros1 or cdr)"
                )
            yield BagMessage(channel.topic, msgtype, int(message.log_time), msg)


@dataclass(frozen=True)
class CameraTopics:
    """One camera of a bag: its Image and CameraInfo topics and, optionally, the tf frame to use."""

    image: str
    info: str
    frame_id: str = ""  # "" = the CameraInfo header's frame_id

    @property
    def name(self) -> str:
        """The image topic's namespace, e.g. kitti/camera_color_left for /kitti/camera_color_left/image_raw."""
        return self.image.rsplit("/", 1)[0].strip("/") or self.image.strip("/")


def info_topic_for(image_topic: str) -> str:
    """The CameraInfo topic beside an image topic (image_transport's convention)."""
    return image_topic.rsplit("/", 1)[0] + "/camera_info"


def detect_topics(topics: Mapping[str, str], cloud_topic: str | None = None) -> tuple[str, list[CameraTopics]]:
    """(cloud topic, cameras) from a topic -> type map.

    The cloud is ``cloud_topic`` or the only PointCloud2 topic; cameras are
    the Image topics with a CameraInfo topic beside them (Ouster's range /
    intensity images have none, so they are not mistaken for cameras).
    """
    clouds = sorted(t for t, ty in topics.items() if ty == POINTCLOUD2)
    if cloud_topic is None:
        if len(clouds) != 1:
            raise ValueError(f"bag: expected exactly one PointCloud2 topic (pass cloud_topic), found {clouds}")
        cloud_topic = clouds[0]
    elif topics.get(cloud_topic) != POINTCLOUD2:
        raise ValueError(f"cloud_topic {cloud_topic!r}: not a PointCloud2 topic of the bag; found {clouds}")
    cameras = [
        CameraTopics(image=t, info=info_topic_for(t))
        for t in sorted(topics)
        if topics[t] == IMAGE and topics.get(info_topic_for(t)) == CAMERA_INFO
    ]
    return cloud_topic, cameras


@dataclass
class SourceStats:
    """What the source skipped and why (a bag replay reports these)."""

    scans: int = 0
    bad_clouds: int = 0
    camera_misses: dict[str, int] = field(default_factory=dict)  # camera -> scans without it

    def miss(self, camera: str) -> None:
        self.camera_misses[camera] = self.camera_misses.get(camera, 0) + 1


class RosbagScans:
    """Iterate a bag as Scans: one per cloud, with the cameras that pair with it.

    ``cameras``: None auto-detects (Image topics with a CameraInfo beside
    them); a list of image topics or CameraTopics selects; [] means clouds
    only. ``cam_from_cloud`` maps a camera name or image topic to a parameter
    value (16 or 7 numbers, see transforms.cam_from_cloud_from_parameter) that
    replaces the tf lookup. ``rectified_image`` is passed to
    camera_info_to_intrinsics (None: decided from D).
    """

    def __init__(
        self,
        path: str | Path,
        cloud_topic: str | None = None,
        cameras: Sequence[str | CameraTopics] | None = None,
        slop_s: float = 0.05,
        label_set: str = "",
        max_range_m: float | None = None,
        cam_from_cloud: Mapping[str, Sequence[float]] | None = None,
        rectified_image: bool | None = None,
        queue_size: int = 10,
        max_wait_s: float = 1.0,
        max_scans: int | None = None,
    ) -> None:
        self.path = Path(path)
        topics = bag_topics(self.path)
        self.cloud_topic, detected = detect_topics(topics, cloud_topic)
        if cameras is None:
            self.cameras = detected
        else:
            self.cameras = [c if isinstance(c, CameraTopics) else CameraTopics(c, info_topic_for(c)) for c in cameras]
        for cam in self.cameras:
            for topic, expected in ((cam.image, IMAGE), (cam.info, CAMERA_INFO)):
                if topics.get(topic) != expected:
                    raise ValueError(f"camera {cam.name}: topic {topic!r} is not a {expected} topic of {self.path}")
        self.tf_topics = [t for t in TF_TOPICS if topics.get(t) == TF_MESSAGE]
        self.slop_ns = round(slop_s * 1e9)
        self.max_wait_ns = round(max_wait_s * 1e9)
        self.label_set = label_set
        self.max_range_m = max_range_m
        self.rectified_image = rectified_image
        self.queue_size = queue_size
        self.max_scans = max_scans
        self.fixed_extrinsics: dict[str, np.ndarray] = {}
        for key, value in (cam_from_cloud or {}).items():
            self.fixed_extrinsics[key.strip("/")] = cam_from_cloud_from_parameter(value, camera=key)
        self.stats = SourceStats()
        self._warned: set[str] = set()
        self._topics_of = {cam.name: cam for cam in self.cameras}
        self._policy = ScanPolicy(max_range_m=max_range_m, rectified_image=rectified_image, label_set=label_set)

    def __iter__(self) -> Iterator[Scan]:
        self.stats = SourceStats()
        scans = self._paired_scans()
        return scans if self.max_scans is None else islice(scans, self.max_scans)

    def _paired_scans(self) -> Iterator[Scan]:
        """Every cloud of the bag as a Scan, once no closer image can still arrive for it."""
        graph = TransformGraph()
        images = {cam.name: deque(maxlen=self.queue_size) for cam in self.cameras}
        infos = {cam.name: deque(maxlen=self.queue_size) for cam in self.cameras}
        pending: deque[tuple[int, Any]] = deque()
        by_topic: dict[str, tuple[str, str]] = {}
        for cam in self.cameras:
            by_topic[cam.image] = ("image", cam.name)
            by_topic[cam.info] = ("info", cam.name)
        wanted = [self.cloud_topic, *by_topic, *self.tf_topics]
        for item in read_bag_messages(self.path, wanted):
            if item.topic in self.tf_topics:
                graph.add_all([item.msg])
            elif item.topic == self.cloud_topic:
                pending.append((header_stamp_ns(item.msg), item.msg))
            else:
                kind, name = by_topic[item.topic]
                (images if kind == "image" else infos)[name].append((header_stamp_ns(item.msg), item.msg))
            while pending and self._ready(pending, images):
                yield from self._drain_one(pending, images, infos, graph)
        while pending:
            yield from self._drain_one(pending, images, infos, graph)

    def _drain_one(self, pending: deque[tuple[int, Any]], images: Mapping[str, deque],
                   infos: Mapping[str, deque], graph: TransformGraph) -> Iterator[Scan]:
        """The oldest pending cloud as a Scan (nothing when it cannot be decoded)."""
        stamp, cloud = pending.popleft()
        scan = self._scan(stamp, cloud, images, infos, graph)
        if scan is not None:
            yield scan

    def _ready(self, pending: deque[tuple[int, Any]], images: Mapping[str, deque]) -> bool:
        """Whether the oldest pending cloud can no longer get a closer image (or has waited long enough)."""
        stamp = pending[0][0]
        if len(pending) > self.queue_size or pending[-1][0] - stamp > self.max_wait_ns:
            return True
        return all(queue and queue[-1][0] > stamp + self.slop_ns for queue in images.values())

    def _scan(self, stamp: int, cloud_msg: Any, images: Mapping[str, deque], infos: Mapping[str, deque],
              graph: TransformGraph) -> Scan | None:
        cameras, unpaired = [], []
        for cam in self.cameras:
            messages = self._camera_messages(cam, stamp, images[cam.name], infos[cam.name])
            if messages is None:
                unpaired.append(cam.name)
            else:
                cameras.append(messages)
        header = CloudHeader(header=cloud_msg.header, stamp_ns=stamp, frame_id=str(cloud_msg.header.frame_id))

        def extrinsics(camera: CameraMessages, cloud: CloudHeader) -> np.ndarray:
            return self._extrinsics(camera, cloud, graph)

        try:
            decoded = scan_from_messages(cloud_msg, cameras, extrinsics, self._policy, header=header)
        except ValueError as err:
            self.stats.bad_clouds += 1
            LOG.warning("%s: skipping cloud at %d ns: %s", self.path, stamp, err)
            return None
        for name in unpaired:
            self.stats.miss(name)
        for miss in decoded.left_out:
            self.stats.miss(miss.camera)
            self._warn_once(f"{miss.camera}:{miss.reason}", f"camera {miss.camera}: skipped: {miss.detail}")
        self.stats.scans += 1
        scan = decoded.scan
        if scan.labels is None:
            scan.label_set = ""  # the label set names the cloud's own labels; without them it is unknown
        return scan

    def _camera_messages(self, cam: CameraTopics, stamp: int, images: deque, infos: deque) -> CameraMessages | None:
        """The camera's image nearest the cloud and the CameraInfo nearest that image, both within the slop."""
        image = _nearest(images, stamp, self.slop_ns)
        if image is None:
            return None
        image_stamp, image_msg = image
        info = _nearest(infos, image_stamp, self.slop_ns)
        if info is None:
            self._warn_once(cam.name + ":info", f"camera {cam.name}: no CameraInfo within the slop of its image")
            return None
        if str(image_msg.encoding) in DEPTH_ENCODINGS:
            self._warn_once(cam.name + ":depth", f"camera {cam.name}: {image_msg.encoding} is a depth image")
            return None
        fixed = next((self.fixed_extrinsics[key] for key in (cam.name, cam.image.strip("/"))
                      if key in self.fixed_extrinsics), None)
        return CameraMessages(cam.name, image_msg, info[1], cam_from_cloud=fixed, stamp_ns=image_stamp)

    def _extrinsics(self, camera: CameraMessages, cloud: CloudHeader, graph: TransformGraph) -> np.ndarray:
        """cam_from_cloud from the bag's tf at the cloud's stamp; LookupError (naming both frames) when unknown."""
        cam = self._topics_of[camera.name]
        camera_frame = cam.frame_id or str(camera.info.header.frame_id).lstrip("/")
        cloud_frame = cloud.frame_id
        if camera_frame == cloud_frame.lstrip("/"):
            return np.eye(4)
        frame = resolve_camera_frame(graph, camera_frame, cloud_frame)
        if frame is None:
            raise LookupError(f"no transform from {cloud_frame!r} to {camera_frame!r} in {self.tf_topics}; "
                              "pass cam_from_cloud")
        return graph.lookup(frame, cloud_frame, stamp_ns=cloud.stamp_ns)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            LOG.warning("%s: %s", self.path, message)


def resolve_camera_frame(graph: TransformGraph, camera_frame: str, cloud_frame: str) -> str | None:
    """The tf frame to use for a camera whose CameraInfo says ``camera_frame``.

    The frame itself when connected to the cloud; otherwise the single
    connected frame named ``<camera_frame>_<suffix>``. Bags converted from
    KITTI name the unrectified camera frame ``<frame>_unrect`` (the frame
    CameraInfo's R rotates from), while the image header carries the
    rectified camera's name.
    """
    if graph.can_transform(camera_frame, cloud_frame):
        return camera_frame
    candidates = sorted(
        f for f in graph.frames if f.startswith(camera_frame + "_") and graph.can_transform(f, cloud_frame)
    )
    return candidates[0] if len(candidates) == 1 else None


def _nearest(queue: Sequence[tuple[int, Any]], stamp: int, slop_ns: int) -> tuple[int, Any] | None:
    best = min(queue, key=lambda item: abs(item[0] - stamp), default=None)
    if best is None or abs(best[0] - stamp) > slop_ns:
        return None
    return best
