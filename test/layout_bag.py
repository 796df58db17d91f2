"""A tiny rosbag2 (mcap) in the layout a robot records, for the bag: source tests.

    /lidar/points       sensor_msgs/PointCloud2: x, y, z, intensity (float32) [, label (uint16 or uint32)]
    /cam/image_raw      sensor_msgs/Image rgb8, 8x6
    /cam/camera_info    sensor_msgs/CameraInfo beside it
    /tf_static          lidar -> cam_optical_frame (the camera sits 0.1 m along the lidar's x)

Scan i is stamped START_NS + i * PERIOD_NS; its image and CameraInfo carry the same stamp and are written
before the cloud, as ScanBagWriter orders them. The cloud is built here field by field (the package's writer
only writes uint16 labels and cannot write a broken cloud).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ttt_kd_ros.msgs.typestore import ros2_typestore
from ttt_kd_ros.replay.bag_writer import MessageFactory
from ttt_kd_ros.scan import CameraIntrinsics, CameraView

START_NS = 1_700_000_000_000_000_000
PERIOD_NS = 100_000_000
WIDTH, HEIGHT = 8, 6
K = np.array([[4.0, 0.0, 4.0], [0.0, 4.0, 3.0], [0.0, 0.0, 1.0]])
CAM_FROM_CLOUD = np.array([[1.0, 0, 0, -0.1], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
CLOUD_TOPIC, IMAGE_TOPIC, INFO_TOPIC = "/lidar/points", "/cam/image_raw", "/cam/camera_info"
LABELS = ((0, 1, 2, 65535, 19, 7), (3, 3, 65535, 65535, 4, 0), (19, 18, 17, 16, 15, 14))
"""Default label values of the three scans (scannet20 ids, 65535 = no ground truth)."""
_POINT_FIELD_TYPES = {"f4": 7, "u2": 4, "u4": 6}


def points_of(scan: int, n: int) -> np.ndarray:
    """(n, 3) float32: a row of points 2 m ahead (z forward), shifted by the scan index."""
    x = np.linspace(-0.5, 0.5, n, dtype=np.float32) + np.float32(0.01 * scan)
    return np.stack([x, np.zeros(n, np.float32), np.full(n, 2.0, np.float32)], axis=1)


def image_of(scan: int) -> np.ndarray:
    """(HEIGHT, WIDTH, 3) uint8 with the scan index in the red channel."""
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[..., 0] = scan
    image[..., 1] = np.arange(WIDTH, dtype=np.uint8)[None, :] * 10
    return image


def _cloud_msg(factory: MessageFactory, stamp_ns: int, xyz: np.ndarray, labels: Sequence[int] | None,
               label_type: str, broken: bool) -> object:
    names, formats = ["x", "y", "z", "intensity"], ["<f4"] * 4
    if labels is not None:
        names.append("label")
        formats.append("<" + label_type)
    points = np.zeros(len(xyz), dtype=np.dtype({"names": names, "formats": formats}, align=True))
    points["x"], points["y"], points["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    points["intensity"] = np.linspace(0.0, 1.0, len(xyz), dtype=np.float32)
    if labels is not None:
        points["label"] = np.asarray(labels)
    point_field = factory.types["sensor_msgs/msg/PointField"]
    fields = [point_field(name=name, offset=points.dtype.fields[name][1],
                          datatype=_POINT_FIELD_TYPES[points.dtype.fields[name][0].str[1:]], count=1)
              for name in names]
    row_step = points.dtype.itemsize * len(points) + (4 if broken else 0)  # broken: data shorter than declared
    return factory.types["sensor_msgs/msg/PointCloud2"](
        header=factory.header(stamp_ns, "lidar"), height=1, width=len(points), fields=fields, is_bigendian=False,
        point_step=points.dtype.itemsize, row_step=row_step, data=points.view(np.uint8).reshape(-1), is_dense=True)


def write_bag(path: Path, labels: Sequence[Sequence[int]] | None = LABELS, label_type: str = "u2",
              broken: Sequence[int] = ()) -> Path:
    """A rosbag2 folder with one scan per entry of ``labels`` (None: clouds without a label field, three
    scans); scans whose index is in ``broken`` get a cloud that cannot be decoded. Returns ``path``."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    factory = MessageFactory(ros2_typestore())
    per_scan: list[Sequence[int] | None] = list(labels) if labels is not None else [None] * 3
    intrinsics = CameraIntrinsics(K=K, width_px=WIDTH, height_px=HEIGHT)
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    connections: dict[str, object] = {}

    def write(topic: str, msg: object, stamp_ns: int) -> None:
        if topic not in connections:
            connections[topic] = writer.add_connection(topic, msg.__msgtype__, typestore=factory.typestore)
        writer.write(connections[topic], stamp_ns, factory.serialize(msg))

    write("/tf_static", factory.tf_message([("lidar", "cam_optical_frame", np.linalg.inv(CAM_FROM_CLOUD))],
                                           START_NS), START_NS)
    for i, scan_labels in enumerate(per_scan):
        stamp = START_NS + i * PERIOD_NS
        view = CameraView(image_rgb=image_of(i), intrinsics=intrinsics, cam_from_cloud=CAM_FROM_CLOUD,
                          name="cam")
        write(INFO_TOPIC, factory.camera_info(intrinsics, stamp, "cam_optical_frame"), stamp)
        write(IMAGE_TOPIC, factory.image(view, stamp), stamp)
        xyz = points_of(i, len(scan_labels) if scan_labels is not None else 6)
        write(CLOUD_TOPIC, _cloud_msg(factory, stamp, xyz, scan_labels, label_type, i in broken), stamp)
    writer.close()
    return path
