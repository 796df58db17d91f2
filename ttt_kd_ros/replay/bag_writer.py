"""Scans -> a real rosbag2 (mcap or sqlite3), written with ``rosbags`` (no ROS install needed).

Messages are built from the rosbags ROS 2 Jazzy typestore and serialised to
CDR by it (byte-exact with rclpy, ENVIRONMENT.md), so ``ros2 bag play`` on a
robot and this package's replay read the same bytes.

One Scan becomes, all stamped ``stamp_ns``:

- ``<ns>/points``: PointCloud2 with x, y, z, [intensity], [rgb packed float],
  [label uint16; 65535 = IGNORE_LABEL]; only the fields the Scan has;
- per camera ``<ns>/<camera>/image_raw`` (rgb8) and ``<ns>/<camera>/camera_info``
  (the CameraInfo beside its image, image_transport's convention, which
  data.rosbag.detect_topics relies on);
- ``/tf_static``: cloud frame -> ``<camera>_optical_frame``, written when a
  camera's extrinsics first appear or change (a hand-held RGB-D camera moves
  every scan; a robot's cameras are written once). Every message carries the
  whole current set of links, as tf2's StaticTransformBroadcaster sends it,
  because a latched topic hands a late subscriber only the last message.
  Each re-send is stamped with its scan, as KITTI bags do when calibrations
  change, and data.rosbag's TransformGraph picks the value valid at each
  cloud's stamp.

The label set's name goes into the bag's metadata (custom_data) so a replay
can score predictions without being told.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ttt_kd_ros.msgs.transforms import matrix_to_quaternion
from ttt_kd_ros.msgs.typestore import ros2_typestore
from ttt_kd_ros.scan import CameraIntrinsics, CameraView, Scan

STORAGES = ("mcap", "sqlite3")
UNLABELLED = 65535
"""``label`` value of a point without ground truth (IGNORE_LABEL in the Scan)."""
CUSTOM_LABEL_SET = "ttt_kd_ros.label_set"
CUSTOM_SOURCE = "ttt_kd_ros.source"
# PointField datatypes
_FLOAT32, _UINT16 = 7, 4


def camera_frame_of(camera: str) -> str:
    """tf frame of a camera's optical frame (REP 103: x right, y down, z forward)."""
    return f"{camera}_optical_frame"


def cloud_point_array(scan: Scan) -> np.ndarray:
    """(N,) structured array x, y, z [, intensity] [, rgb] [, label], C-aligned (point_step % 4 == 0).

    rgb is the packed 0x00RRGGBB float rviz2 reads; labels outside 0..65534
    (IGNORE_LABEL) become 65535. ValueError when a label does not fit uint16.
    """
    names, formats = ["x", "y", "z"], ["<f4", "<f4", "<f4"]
    if scan.intensity is not None:
        names.append("intensity")
        formats.append("<f4")
    if scan.rgb is not None:
        names.append("rgb")
        formats.append("<u4")
    if scan.labels is not None:
        names.append("label")
        formats.append("<u2")
    out = np.zeros(scan.num_points, dtype=np.dtype({"names": names, "formats": formats}, align=True))
    xyz = scan.points_xyz_m
    out["x"], out["y"], out["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if scan.intensity is not None:
        out["intensity"] = scan.intensity
    if scan.rgb is not None:
        rgb = np.clip(np.rint(np.asarray(scan.rgb, dtype=np.float32) * 255.0), 0, 255).astype(np.uint32)
        out["rgb"] = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    if scan.labels is not None:
        labels = np.asarray(scan.labels, dtype=np.int64)
        if labels.size and labels.max() >= UNLABELLED:
            raise ValueError(f"scan.labels: expected values below {UNLABELLED} (uint16 field), got {labels.max()}")
        out["label"] = np.where(labels < 0, UNLABELLED, labels)
    return out


class MessageFactory:
    """rosbags message objects for one typestore; ``serialize`` gives CDR bytes."""

    def __init__(self, typestore: Any = None) -> None:
        self.typestore = ros2_typestore() if typestore is None else typestore
        self.types = self.typestore.types

    def serialize(self, msg: Any) -> bytes:
        return bytes(self.typestore.serialize_cdr(msg, msg.__msgtype__))

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
        time = self.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
        return self.types["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)

    def pointcloud2(self, scan: Scan, stamp_ns: int) -> Any:
        points = cloud_point_array(scan)
        point_field = self.types["sensor_msgs/msg/PointField"]
        fields = []
        for name in points.dtype.names:
            offset = points.dtype.fields[name][1]
            datatype = _UINT16 if name == "label" else _FLOAT32  # rgb bits are declared FLOAT32, as drivers do
            fields.append(point_field(name=name, offset=int(offset), datatype=datatype, count=1))
        return self.types["sensor_msgs/msg/PointCloud2"](
            header=self.header(stamp_ns, scan.frame_id),
            height=1,
            width=len(points),
            fields=fields,
            is_bigendian=False,
            point_step=points.dtype.itemsize,
            row_step=points.dtype.itemsize * len(points),
            data=points.view(np.uint8).reshape(-1),
            is_dense=bool(np.isfinite(scan.points_xyz_m).all()),
        )

    def image(self, view: CameraView, stamp_ns: int) -> Any:
        pixels = np.ascontiguousarray(view.image_rgb, dtype=np.uint8)
        h, w = pixels.shape[:2]
        return self.types["sensor_msgs/msg/Image"](
            header=self.header(stamp_ns, camera_frame_of(view.name)),
            height=h, width=w, encoding="rgb8", is_bigendian=0, step=3 * w, data=pixels.reshape(-1),
        )

    def camera_info(self, intr: CameraIntrinsics, stamp_ns: int, frame_id: str) -> Any:
        """CameraInfo as drivers send it: "none" is plumb_bob with five zeros; R = I and P = [K | 0] when unset."""
        if intr.distortion_model == "none":
            model, d = "plumb_bob", np.zeros(5)
        else:
            model, d = intr.distortion_model, intr.D
        r = np.eye(3) if intr.rectification is None else intr.rectification
        p = np.hstack([intr.K, np.zeros((3, 1))]) if intr.projection is None else intr.projection
        roi = self.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                              do_rectify=False)
        return self.types["sensor_msgs/msg/CameraInfo"](
            header=self.header(stamp_ns, frame_id), height=intr.height_px, width=intr.width_px,
            distortion_model=model, d=np.asarray(d, dtype=np.float64), k=intr.K.reshape(-1).astype(np.float64),
            r=np.asarray(r, dtype=np.float64).reshape(-1), p=np.asarray(p, dtype=np.float64).reshape(-1),
            binning_x=0, binning_y=0, roi=roi,
        )

    def tf_message(self, links: list[tuple[str, str, np.ndarray]], stamp_ns: int) -> Any:
        """TFMessage of (parent, child, parent_from_child (4, 4)) links."""
        vector3, quaternion = self.types["geometry_msgs/msg/Vector3"], self.types["geometry_msgs/msg/Quaternion"]
        transform, stamped = self.types["geometry_msgs/msg/Transform"], self.types["geometry_msgs/msg/TransformStamped"]
        out = []
        for parent, child, T in links:
            T = np.asarray(T, dtype=np.float64)
            qx, qy, qz, qw = (float(v) for v in matrix_to_quaternion(T[:3, :3]))
            tr = transform(translation=vector3(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                           rotation=quaternion(x=qx, y=qy, z=qz, w=qw))
            out.append(stamped(header=self.header(stamp_ns, parent), child_frame_id=child, transform=tr))
        return self.types["tf2_msgs/msg/TFMessage"](transforms=out)


def _latched_qos() -> list[Any]:
    """/tf_static's QoS (reliable, transient local, keep last 1) so `ros2 bag play` latches it like tf2 does."""
    from rosbags.rosbag2.metadata import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    infinite = QosTime(sec=0, nsec=0)
    return [Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, infinite, infinite,
                QosLiveliness.AUTOMATIC, infinite, False)]


class ScanBagWriter:
    """Write Scans into a new rosbag2 folder; use as a context manager.

    ``path`` must not exist (``overwrite`` removes an earlier *bag* folder,
    one holding metadata.yaml, never anything else). Topics are created on
    first use, so a camera appearing in a later scan still gets its topics.
    """

    def __init__(self, path: str | Path, storage: str = "mcap", namespace: str = "/sensor",
                 overwrite: bool = False) -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage: expected one of {STORAGES}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            if not (overwrite and (self.path / "metadata.yaml").is_file()):
                hint = " (pass overwrite to replace a bag)" if (self.path / "metadata.yaml").is_file() else ""
                raise ValueError(f"bag path {self.path} already exists{hint}")
            shutil.rmtree(self.path)
        self.storage = storage
        self.namespace = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self.factory = MessageFactory()
        self._writer: Any = None
        self._connections: dict[str, Any] = {}
        self._static: dict[str, tuple[str, np.ndarray]] = {}  # child frame -> (parent, parent_from_child)
        self.counts: dict[str, int] = {}
        self.label_set = ""

    @property
    def cloud_topic(self) -> str:
        return f"{self.namespace}/points"

    def image_topic(self, camera: str) -> str:
        return f"{self.namespace}/{camera}/image_raw"

    def info_topic(self, camera: str) -> str:
        return f"{self.namespace}/{camera}/camera_info"

    def __enter__(self) -> ScanBagWriter:
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        self._writer.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._writer is None:
            return
        if self.label_set:
            self._writer.set_custom_data(CUSTOM_LABEL_SET, self.label_set)
        self._writer.close()
        self._writer = None

    def set_source(self, text: str) -> None:
        """Free text saying where the scans came from, stored in the bag's metadata."""
        self._writer.set_custom_data(CUSTOM_SOURCE, text)

    def _write(self, topic: str, msg: Any, log_time_ns: int, latched: bool = False) -> None:
        if self._writer is None:
            raise ValueError(f"bag {self.path}: write outside the `with` block")
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, msg.__msgtype__, typestore=self.factory.typestore,
                                                     offered_qos_profiles=_latched_qos() if latched else ())
            self._connections[topic] = connection
        self._writer.write(connection, int(log_time_ns), self.factory.serialize(msg))
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def write_scan(self, scan: Scan, stamp_ns: int) -> None:
        """One scan at ``stamp_ns``: changed tf links first, then each camera's info and image, then the cloud.

        The cloud goes last so a live replay hands the node every image before
        the cloud that pairs with them.
        """
        if scan.label_set and scan.labels is not None:
            if self.label_set and self.label_set != scan.label_set:
                raise ValueError(f"scan at {stamp_ns} ns: label_set {scan.label_set!r} differs from the bag's "
                                 f"{self.label_set!r}")
            self.label_set = scan.label_set
        changed = False
        for view in scan.cameras:
            child = camera_frame_of(view.name)
            cloud_from_cam = np.linalg.inv(view.cam_from_cloud)
            previous = self._static.get(child)
            if previous is None or previous[0] != scan.frame_id or not np.allclose(previous[1], cloud_from_cam,
                                                                                     atol=1e-9):
                self._static[child] = (scan.frame_id, cloud_from_cam)
                changed = True
        if changed:
            links = [(parent, child, T) for child, (parent, T) in sorted(self._static.items())]
            self._write("/tf_static", self.factory.tf_message(links, stamp_ns), stamp_ns, latched=True)
        for view in scan.cameras:
            frame = camera_frame_of(view.name)
            self._write(self.info_topic(view.name), self.factory.camera_info(view.intrinsics, stamp_ns, frame),
                        stamp_ns)
            self._write(self.image_topic(view.name), self.factory.image(view, stamp_ns), stamp_ns)
        self._write(self.cloud_topic, self.factory.pointcloud2(scan, stamp_ns), stamp_ns)
