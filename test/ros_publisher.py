"""Sensor stand-in for test_ros_node: publishes clouds, images and CameraInfo on command.

Run as its own process (real DDS between processes, as on a robot). It reads
one JSON command per line on stdin and answers one JSON line on stdout:

    {"case": "good", "stamp_ns": 123, "points": 2000}  ->  {"sent": "good", "stamp_ns": 123, "valid_points": 2000}

Cases (see CASES) are the good scan and every bad input the node must survive.
Before the first command it waits until the node subscribes to every topic
(/tf_static included) and prints {"ready": true}, so no message is lost to
discovery.

    python test/ros_publisher.py --cloud-topic /t/points --camera front:/t/image:/t/info \
        --camera side:/t/side/image:/t/side/info:test_side --tf-static test_lidar:test_side:0.1:0:0
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import rclpy
import tf_stand_in
from builtin_interfaces.msg import Time
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from ttt_kd_ros.msgs.tf_message import tf_message_from_cdr, tf_message_to_cdr
from ttt_kd_ros.ros import compat

FRAME_ID = "test_lidar"
UNKNOWN_FRAME_ID = "test_lidar_not_in_tf"  # the foreign_frame case: no tf chain to any camera frame
IMAGE_W, IMAGE_H = 64, 48
FOCAL_PX = 40.0
CAMERA_LEAD_S = 0.02  # images go out this long before their cloud, as a camera driver usually is ahead


def make_cloud(stamp_ns: int, xyz: np.ndarray, layout: tuple[str, ...] = ("x", "y", "z", "intensity"),
               declared: tuple[str, ...] | None = None, frame_id: str = FRAME_ID) -> PointCloud2:
    """(N, 3) float32 points as a dense PointCloud2 in ``frame_id``; intensity 0.5 when in ``layout``.

    ``layout``: float32 columns of each point; ``declared``: the fields the message lists (default: all of
    them), so a field can be left out while its bytes stay (the missing-field case).
    """
    n = len(xyz)
    data = np.zeros((n, len(layout)), dtype=np.float32)
    for column, name in enumerate(layout):
        data[:, column] = 0.5 if name == "intensity" else xyz[:, "xyz".index(name)]
    declared = layout if declared is None else declared
    msg = PointCloud2()
    msg.header.stamp = Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
    msg.header.frame_id = frame_id
    msg.height, msg.width = 1, n
    msg.fields = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                  for i, name in enumerate(layout) if name in declared]
    msg.point_step = 4 * len(layout)
    msg.row_step = msg.point_step * n
    msg.is_bigendian, msg.is_dense = False, True
    msg.data = data.tobytes()
    return msg


def points_in_view(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) points 2-5 m in front of the camera (+z), inside its image."""
    z = rng.uniform(2.0, 5.0, n)
    x = rng.uniform(-0.6, 0.6, n) * z
    y = rng.uniform(-0.45, 0.45, n) * z
    return np.stack([x, y, z], axis=1).astype(np.float32)


CAMERA_FRAME_ID = "test_camera"  # the headers' frame unless a camera names its own


def make_image(stamp: Time, rng: np.random.Generator, encoding: str = "rgb8", frame_id: str = CAMERA_FRAME_ID
               ) -> Image:
    msg = Image()
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    msg.height, msg.width, msg.encoding, msg.step = IMAGE_H, IMAGE_W, encoding, 3 * IMAGE_W
    msg.data = rng.integers(0, 256, (IMAGE_H, IMAGE_W, 3), dtype=np.uint8).tobytes()
    return msg


def make_info(stamp: Time, width: int = IMAGE_W, height: int = IMAGE_H, focal_px: float = FOCAL_PX,
              frame_id: str = CAMERA_FRAME_ID) -> CameraInfo:
    msg = CameraInfo()
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    msg.width, msg.height = width, height
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    k = [focal_px, 0.0, width / 2, 0.0, focal_px, height / 2, 0.0, 0.0, 1.0]
    msg.k = k
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [k[0], 0.0, k[2], 0.0, 0.0, k[4], k[5], 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


class SensorPublisher(Node):
    def __init__(self, cloud_topic: str, cameras: list[tuple[str, str, str, str]],
                 tf_static: list[tuple[str, str, np.ndarray]] = (), reliable_cloud: bool = False) -> None:
        super().__init__("ttt_kd_test_sensors")
        self.tf_static_pub = None
        if tf_static:  # latched (TRANSIENT_LOCAL), so a node that subscribes later still gets it
            message_type = tf_stand_in.tf_message_type()
            self.tf_static_pub = self.create_publisher(message_type.message_class, compat.TF_STATIC_TOPIC,
                                                       compat.tf_qos(True))
            payload = tf_message_to_cdr([(parent, child, T, 0) for parent, child, T in tf_static])
            self.tf_static_pub.publish(payload if message_type.raw else tf_message_from_cdr(payload))
        # a reliable cloud writer (a driver configured so) matches only a node whose cloud reader is reliable
        cloud_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE) if reliable_cloud else \
            qos_profile_sensor_data
        self.cloud_pub = self.create_publisher(PointCloud2, cloud_topic, cloud_qos)
        self.camera_pubs = [
            (self.create_publisher(Image, image, qos_profile_sensor_data),
             self.create_publisher(CameraInfo, info, qos_profile_sensor_data))
            for _, image, info, _ in cameras
        ]
        self.camera_frames = [frame for *_, frame in cameras]
        self.rng = np.random.default_rng(0)

    def wait_for_subscribers(self, timeout_s: float, cloud_subscribers: int) -> bool:
        """True once ``cloud_subscribers`` readers take the cloud and one takes each camera topic and /tf_static.

        The /tf_static reader counts too: a scan published before the node's
        tf reader matched finds no transform for a frame_id camera, and the
        tests would then see a warning and a counter they did not cause.
        """
        others = [p for pairs in self.camera_pubs for p in pairs]
        if self.tf_static_pub is not None:
            others.append(self.tf_static_pub)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (self.cloud_pub.get_subscription_count() >= cloud_subscribers
                    and all(p.get_subscription_count() > 0 for p in others)):
                return True
            time.sleep(0.05)
        return False

    def send(self, case: str, stamp_ns: int, points: int) -> int:
        """Publish one case; returns the number of valid (finite) points in the cloud."""
        stamp = Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
        xyz = points_in_view(points, self.rng)
        layout, declared = ("x", "y", "z", "intensity"), None
        if case == "empty":
            xyz = xyz[:0]
        elif case == "all_nan":
            xyz[:] = np.nan
        elif case == "some_nan":
            xyz[::3] = np.nan
        elif case == "missing_xyz":
            declared = ("x", "y", "intensity")
        elif case == "big":
            layout = ("x", "y", "z")  # 12 bytes a point: 2M points fit the 32 MB shared-memory segment
        cloud = make_cloud(stamp_ns, xyz, layout, declared,
                           frame_id=UNKNOWN_FRAME_ID if case == "foreign_frame" else FRAME_ID)
        if case == "wrong_length":
            cloud.data = cloud.data[: len(cloud.data) // 2]
        valid = int(np.isfinite(xyz).all(axis=1).sum()) if case not in ("missing_xyz", "wrong_length") else 0
        if case == "cloud_first":  # a LiDAR driver ahead of its cameras (KITTI bags): images right after the cloud
            self.cloud_pub.publish(cloud)
            self.publish_images(case, stamp)
            return valid
        if case != "cloud_only":
            image_stamp = stamp
            if case == "unmatched":  # stamps no cloud will ever match: the synchroniser never pairs this cloud
                image_stamp = Time(sec=stamp.sec - 30, nanosec=stamp.nanosec)
            self.publish_images(case, image_stamp)
            time.sleep(CAMERA_LEAD_S)
        if case == "images_only":
            return 0
        self.cloud_pub.publish(cloud)
        return valid

    def publish_images(self, case: str, stamp: Time) -> None:
        """One Image + CameraInfo per camera at ``stamp``, spoilt as ``case`` asks."""
        for (image_pub, info_pub), frame in zip(self.camera_pubs, self.camera_frames, strict=True):
            image = make_image(stamp, self.rng, encoding="yuv_weird8" if case == "bad_encoding" else "rgb8",
                               frame_id=frame)
            info = make_info(stamp, frame_id=frame)
            if case == "size_mismatch":
                info = make_info(stamp, width=IMAGE_W // 2, height=IMAGE_H // 2, frame_id=frame)
            elif case == "zero_k":
                info.k = [0.0] * 9
            elif case == "nan_k":
                info.k = [float("nan"), *list(info.k)[1:]]
            elif case == "inf_p":
                info.p = [*list(info.p)[:2], float("inf"), *list(info.p)[3:]]
            image_pub.publish(image)
            info_pub.publish(info)


CASES = ("good", "foreign_frame", "big", "cloud_only", "empty", "all_nan", "some_nan", "missing_xyz", "wrong_length",
         "bad_encoding", "size_mismatch", "zero_k", "nan_k", "inf_p", "cloud_first", "unmatched", "images_only")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cloud-topic", required=True)
    parser.add_argument("--camera", action="append", default=[], metavar="NAME:IMAGE_TOPIC:INFO_TOPIC[:FRAME]",
                        help="a camera; FRAME is its headers' frame_id (default test_camera)")
    parser.add_argument("--wait-s", type=float, default=30.0)
    parser.add_argument("--cloud-subscribers", type=int, default=1, help="readers to wait for on the cloud topic")
    parser.add_argument("--tf-static", action="append", default=[], metavar="PARENT:CHILD:X:Y:Z",
                        help="a latched /tf_static link (translation only), repeatable")
    parser.add_argument("--reliable-cloud", action="store_true",
                        help="publish clouds RELIABLE (cameras stay best effort, as camera drivers publish)")
    args = parser.parse_args()
    cameras = [tuple([*spec.split(":"), CAMERA_FRAME_ID][:4]) for spec in args.camera]
    links = []
    for spec in args.tf_static:
        parent, child, *xyz = spec.split(":")
        T = np.eye(4)
        T[:3, 3] = [float(v) for v in xyz]
        links.append((parent, child, T))
    rclpy.init()
    node = SensorPublisher(args.cloud_topic, cameras, links, reliable_cloud=args.reliable_cloud)
    try:
        ready = node.wait_for_subscribers(args.wait_s, args.cloud_subscribers)
        print(json.dumps({"ready": ready}), flush=True)
        for line in sys.stdin:
            if not line.strip():
                continue
            command = json.loads(line)
            if command["case"] not in CASES:
                print(json.dumps({"error": f"case: expected one of {CASES}, got {command['case']!r}"}), flush=True)
                continue
            stamp_ns = int(command.get("stamp_ns") or time.time_ns())
            valid = node.send(command["case"], stamp_ns, int(command.get("points", 1000)))
            print(json.dumps({"sent": command["case"], "stamp_ns": stamp_ns, "valid_points": valid}), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
