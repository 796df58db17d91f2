"""The rosbag Scan source on real bags (KITTI rosbag2 mcap, Ouster ROS 1 mcap, Luminar ROS 1 bag)."""

from __future__ import annotations

import numpy as np
import pytest

from ttt_kd_ros.data.rosbag import (
    CameraTopics,
    RosbagScans,
    bag_topics,
    detect_topics,
    read_bag_messages,
    resolve_camera_frame,
)
from ttt_kd_ros.msgs.transforms import TransformGraph

KITTI_CAMERA = "kitti/camera_color_left"


def _project(points: np.ndarray, view) -> tuple[np.ndarray, np.ndarray]:
    """pixel = P @ R @ T @ X, written out here so the test does not trust the code under test."""
    cam = points @ view.cam_from_cloud[:3, :3].T + view.cam_from_cloud[:3, 3]
    homog = (cam @ view.intrinsics.rectification.T) @ view.intrinsics.projection[:, :3].T
    homog += view.intrinsics.projection[:, 3]
    front = homog[:, 2] > 0.5
    return homog[front, :2] / homog[front, 2:], front


def test_detect_topics_pairs_images_with_camera_info() -> None:
    topics = {
        "/lidar/points": "sensor_msgs/msg/PointCloud2",
        "/cam/image_raw": "sensor_msgs/msg/Image",
        "/cam/camera_info": "sensor_msgs/msg/CameraInfo",
        "/range_image": "sensor_msgs/msg/Image",
    }
    cloud, cameras = detect_topics(topics)
    assert cloud == "/lidar/points"
    assert cameras == [CameraTopics("/cam/image_raw", "/cam/camera_info")]
    assert cameras[0].name == "cam"


def test_detect_topics_ambiguous_cloud_raises() -> None:
    topics = {"/a": "sensor_msgs/msg/PointCloud2", "/b": "sensor_msgs/msg/PointCloud2"}
    with pytest.raises(ValueError, match=r"exactly one PointCloud2 topic \(pass cloud_topic\), found \['/a', '/b'\]"):
        detect_topics(topics)
    assert detect_topics(topics, cloud_topic="/b")[0] == "/b"
    with pytest.raises(ValueError, match="'/c': not a PointCloud2 topic"):
        detect_topics(topics, cloud_topic="/c")


def test_resolve_camera_frame_suffix_fallback() -> None:
    graph = TransformGraph()
    graph.add_matrix("velo", "cam_unrect", np.eye(4))
    assert resolve_camera_frame(graph, "cam_unrect", "velo") == "cam_unrect"
    assert resolve_camera_frame(graph, "cam", "velo") == "cam_unrect"
    graph.add_matrix("velo", "cam_other", np.eye(4))
    assert resolve_camera_frame(graph, "cam", "velo") is None  # ambiguous: refuse to guess


def test_rosbag_scans_missing_bag_raises(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="bag not found"):
        RosbagScans(tmp_path / "nope")


def test_rosbag_scans_kitti_three_scans_project_into_image(real_data) -> None:
    from ttt_kd_ros.data.calib import read_kitti_calib

    source = RosbagScans(real_data / "bags" / "kitti_object_ros2", label_set="semantic_kitti19")
    scans = list(source)
    assert len(scans) == 3
    assert [s.stamp_ns for s in scans] == [1_000_000_000, 2_000_000_000, 3_000_000_000]
    assert source.stats.camera_misses == {}
    for frame, scan in enumerate(scans):
        velodyne = np.fromfile(real_data / "kitti_object" / "velodyne" / f"{frame:06d}.bin", np.float32).reshape(-1, 4)
        assert scan.num_points == len(velodyne)
        np.testing.assert_array_equal(scan.points_xyz_m, velodyne[:, :3])
        assert scan.labels is None and scan.label_set == ""
        assert len(scan.cameras) == 1
        view = scan.cameras[0]
        calib = read_kitti_calib(real_data / "kitti_object" / "calib" / f"{frame:06d}.txt")
        np.testing.assert_allclose(view.cam_from_cloud, calib.Tr_velo_to_cam, atol=1e-6)
        np.testing.assert_allclose(view.intrinsics.projection, calib.P[2], atol=1e-9)
        np.testing.assert_allclose(view.intrinsics.rectification, calib.R0_rect, atol=1e-9)
        assert view.name == KITTI_CAMERA and view.image_rgb.dtype == np.uint8
        uv, front = _project(scan.points_xyz_m, view)
        h, w = view.image_rgb.shape[:2]
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        # The camera sees a ~90 degree wedge ahead of the car: a real share of the sweep, far from all of it.
        assert 0.1 < inside.sum() / scan.num_points < 0.4
        assert 0.3 < front.mean() < 0.7  # about half the sweep is in front of the camera plane


def test_rosbag_scans_extrinsics_parameter_overrides_tf(real_data) -> None:
    shifted = np.eye(4)
    shifted[:3, 3] = [0.0, 0.0, 100.0]
    source = RosbagScans(real_data / "bags" / "kitti_object_ros2", cam_from_cloud={KITTI_CAMERA: shifted.ravel()},
                         max_scans=1)
    (scan,) = list(source)
    np.testing.assert_array_equal(scan.cameras[0].cam_from_cloud, shifted)


def test_rosbag_scans_clouds_only_when_cameras_empty(real_data) -> None:
    scans = list(RosbagScans(real_data / "bags" / "kitti_object_ros2", cameras=[], max_range_m=20.0, max_scans=2))
    assert len(scans) == 2
    assert all(s.cameras == [] for s in scans)
    assert all(np.linalg.norm(s.points_xyz_m, axis=1).max() <= 20.0 for s in scans)


def test_rosbag_scans_ouster_ros1_mcap_clouds_only(real_data) -> None:
    bag = real_data / "bags" / "ouster_os1_ros1.mcap"
    assert bag_topics(bag)["/os1_cloud_node/points"] == "sensor_msgs/msg/PointCloud2"
    source = RosbagScans(bag)
    scans = list(source)
    assert source.cameras == []  # range/intensity images have no CameraInfo
    assert len(scans) == 2
    for scan in scans:
        assert scan.frame_id == "os1_lidar" and scan.cameras == []
        assert 30_000 < scan.num_points < 64 * 2048  # no-return (0, 0, 0) pixels dropped
        assert np.isfinite(scan.points_xyz_m).all()
        assert scan.intensity is not None and scan.intensity.min() >= 0 and scan.intensity.max() <= 1


def test_rosbag_scans_luminar_ros1_bag_clouds_only(real_data) -> None:
    scans = list(RosbagScans(real_data / "bags" / "luminar_ros1.bag"))
    assert len(scans) == 5
    stamps = [s.stamp_ns for s in scans]
    assert stamps == sorted(stamps)
    assert all(s.frame_id == "luminar_lidar" and 30_000 < s.num_points < 40_000 for s in scans)


def test_read_bag_messages_filters_topics(real_data) -> None:
    items = list(read_bag_messages(real_data / "bags" / "kitti_object_ros2", ["/kitti/camera_color_left/camera_info"]))
    assert len(items) == 3 and {i.msgtype for i in items} == {"sensor_msgs/msg/CameraInfo"}


def _write_sqlite3_bag(path, messages) -> None:
    """A rosbag2 (sqlite3) of rclpy messages: [(topic, type, msg)], log time = header stamp."""
    rclpy_serialization = pytest.importorskip("rclpy.serialization")
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from ttt_kd_ros.msgs.stamps import header_stamp_ns

    typestore = get_typestore(Stores.ROS2_JAZZY)
    with Writer(path, version=8, storage_plugin=StoragePlugin.SQLITE3) as writer:
        connections = {}
        for topic, msgtype, msg in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=typestore)
            writer.write(connections[topic], header_stamp_ns(msg), rclpy_serialization.serialize_message(msg))


def test_rosbag_scans_sqlite3_pairs_by_stamp_and_counts_missing_camera(tmp_path) -> None:
    std_msgs = pytest.importorskip("std_msgs.msg")
    from ttt_kd_ros.msgs.camera_info import intrinsics_to_camera_info
    from ttt_kd_ros.msgs.image import rgb_to_image
    from ttt_kd_ros.msgs.pointcloud2 import cloud_to_pointcloud2
    from ttt_kd_ros.scan import CameraIntrinsics

    def header(frame: str, stamp_ns: int):
        h = std_msgs.Header(frame_id=frame)
        h.stamp.sec, h.stamp.nanosec = divmod(stamp_ns, 10**9)
        return h

    intr = CameraIntrinsics(K=np.array([[50.0, 0, 16], [0, 50, 12], [0, 0, 1]]), width_px=32, height_px=24)
    image = np.zeros((24, 32, 3), np.uint8)
    xyz = np.array([[0.0, 0.0, 5.0], [1.0, 0.0, 5.0], [np.nan, 0.0, 1.0]], np.float32)
    ms = 1_000_000
    messages = []
    for k, t in enumerate([1000 * ms, 1100 * ms, 1200 * ms]):
        messages.append(("/lidar/points", "sensor_msgs/msg/PointCloud2",
                         cloud_to_pointcloud2(header("lidar", t), xyz, labels=np.array([1, 2, 3]))))
        for topic_ns, frame in (("/front", "front_optical"),) + ((("/back", "lidar"),) if k == 0 else ()):
            stamp = t + 10 * ms
            image[:] = k
            messages.append((f"{topic_ns}/image_raw", "sensor_msgs/msg/Image",
                             rgb_to_image(image, "bgr8", header(frame, stamp))))
            messages.append((f"{topic_ns}/camera_info", "sensor_msgs/msg/CameraInfo",
                             intrinsics_to_camera_info(intr, header(frame, stamp))))
    bag = tmp_path / "bag"
    _write_sqlite3_bag(bag, messages)

    source = RosbagScans(bag, slop_s=0.05, label_set="synthetic_indoor",
                         cam_from_cloud={"front": [0, 0, 0, 0, 0, 0, 1]})
    scans = list(source)
    assert [s.stamp_ns for s in scans] == [1000 * ms, 1100 * ms, 1200 * ms]
    assert [[c.name for c in s.cameras] for s in scans] == [["back", "front"], ["front"], ["front"]]
    assert source.stats.camera_misses == {"back": 2}
    for k, scan in enumerate(scans):
        assert scan.num_points == 2 and scan.labels.tolist() == [1, 2] and scan.label_set == "synthetic_indoor"
        front = scan.cameras[-1]
        assert front.stamp_ns == scan.stamp_ns + 10 * ms
        assert int(front.image_rgb.max()) == k  # the image of this scan, not a neighbour's
        np.testing.assert_array_equal(front.cam_from_cloud, np.eye(4))
    np.testing.assert_array_equal(scans[0].cameras[0].cam_from_cloud, np.eye(4))  # same frame as the cloud
