"""Extrinsics: quaternions, parameters, chained static transforms, the KITTI bag's /tf_static."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
import tf_stand_in

from ttt_kd_ros.msgs.stamps import stamp_to_ns
from ttt_kd_ros.msgs.tf_message import tf_message_from_cdr, tf_message_to_cdr
from ttt_kd_ros.msgs.transforms import (
    TransformBuffer,
    TransformGraph,
    cam_from_cloud_from_parameter,
    invert_transform,
    make_transform,
    matrix_to_quaternion,
    quaternion_to_matrix,
    transform_stamped_to_matrix,
    transform_to_matrix,
)
from ttt_kd_ros.ros import compat


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    return quaternion_to_matrix(q / np.linalg.norm(q))


def _tf(parent: str, child: str, T: np.ndarray, sec: int = 0) -> SimpleNamespace:
    """A duck-typed TransformStamped (what rosbags deserialises)."""
    x, y, z, w = matrix_to_quaternion(T[:3, :3])
    return SimpleNamespace(
        header=SimpleNamespace(frame_id=parent, stamp=SimpleNamespace(sec=sec, nanosec=0)),
        child_frame_id=child,
        transform=SimpleNamespace(
            translation=SimpleNamespace(x=T[0, 3], y=T[1, 3], z=T[2, 3]),
            rotation=SimpleNamespace(x=x, y=y, z=z, w=w),
        ),
    )


def _random_transform(rng: np.random.Generator) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = _random_rotation(rng)
    T[:3, 3] = rng.normal(size=3)
    return T


def test_quaternion_round_trip_many_rotations() -> None:
    rng = np.random.default_rng(0)
    special = [np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1]), np.eye(3)]
    for R in special + [_random_rotation(rng) for _ in range(50)]:
        q = matrix_to_quaternion(R)
        assert q[3] >= 0 and np.isclose(np.linalg.norm(q), 1.0)
        np.testing.assert_allclose(quaternion_to_matrix(q), R, atol=1e-12)


def test_quaternion_to_matrix_known_rotation() -> None:
    half = np.sqrt(0.5)
    R = quaternion_to_matrix([0, 0, half, half])  # +90 degrees about z
    np.testing.assert_allclose(R @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_quaternion_to_matrix_rejects_zero() -> None:
    with pytest.raises(ValueError, match="non-zero"):
        quaternion_to_matrix([0, 0, 0, 0])


def test_cam_from_cloud_from_parameter_forms() -> None:
    rng = np.random.default_rng(1)
    T = _random_transform(rng)
    np.testing.assert_allclose(cam_from_cloud_from_parameter(T.reshape(-1).tolist()), T)
    seven = [*T[:3, 3], *matrix_to_quaternion(T[:3, :3])]
    np.testing.assert_allclose(cam_from_cloud_from_parameter(seven), T, atol=1e-12)
    np.testing.assert_array_equal(cam_from_cloud_from_parameter([]), np.eye(4))
    np.testing.assert_array_equal(cam_from_cloud_from_parameter(None), np.eye(4))


def test_cam_from_cloud_from_parameter_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="got 5"):
        cam_from_cloud_from_parameter([1, 2, 3, 4, 5], camera="front")
    scaled = np.eye(4) * 2
    scaled[3, 3] = 1
    with pytest.raises(ValueError, match="not a proper rotation"):
        cam_from_cloud_from_parameter(scaled.reshape(-1))
    bad_row = np.eye(4)
    bad_row[3, 0] = 1
    with pytest.raises(ValueError, match="last row"):
        cam_from_cloud_from_parameter(bad_row.reshape(-1))


def test_transform_graph_chain_composition_both_directions() -> None:
    rng = np.random.default_rng(2)
    base_from_lidar, base_from_cam, cam_from_optical = (_random_transform(rng) for _ in range(3))
    graph = TransformGraph([_tf("base", "lidar", base_from_lidar), _tf("base", "cam", base_from_cam),
                            _tf("cam", "cam_optical", cam_from_optical)])
    expected = invert_transform(base_from_cam @ cam_from_optical) @ base_from_lidar
    np.testing.assert_allclose(graph.lookup("cam_optical", "lidar"), expected, atol=1e-9)
    np.testing.assert_allclose(graph.lookup("lidar", "cam_optical"), invert_transform(expected), atol=1e-9)
    np.testing.assert_array_equal(graph.lookup("cam", "cam"), np.eye(4))


def test_transform_graph_unconnected_raises_lookup_error() -> None:
    graph = TransformGraph([_tf("a", "b", np.eye(4)), _tf("c", "d", np.eye(4))])
    assert not graph.can_transform("a", "d")
    with pytest.raises(LookupError, match="no transform chain from 'd' to 'a'"):
        graph.lookup("a", "d")


def test_transform_graph_uses_value_valid_at_stamp() -> None:
    first, second = make_transform([1, 0, 0], [0, 0, 0, 1]), make_transform([2, 0, 0], [0, 0, 0, 1])
    graph = TransformGraph([_tf("lidar", "cam", first, sec=10), _tf("lidar", "cam", second, sec=20)])
    assert graph.lookup("lidar", "cam", stamp_ns=15 * 10**9)[0, 3] == 1
    assert graph.lookup("lidar", "cam", stamp_ns=25 * 10**9)[0, 3] == 2
    assert graph.lookup("lidar", "cam", stamp_ns=5 * 10**9)[0, 3] == 1  # before any: the oldest
    assert graph.lookup("lidar", "cam")[0, 3] == 2


def test_transform_stamped_to_matrix_matches_geometry_msgs_round_trip() -> None:
    pytest.importorskip("geometry_msgs.msg", reason="geometry_msgs wheels not installed")
    from ttt_kd_ros.msgs.transforms import matrix_to_transform_stamped

    T = _random_transform(np.random.default_rng(3))
    msg = matrix_to_transform_stamped(T, "base", "cam", stamp_ns=1_500_000_000)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1, 500_000_000)
    np.testing.assert_allclose(transform_stamped_to_matrix(msg), T, atol=1e-12)
    np.testing.assert_allclose(transform_to_matrix(msg.transform), T, atol=1e-12)


def test_kitti_bag_tf_static_matches_kitti_calib(real_data) -> None:
    from ttt_kd_ros.data.calib import read_kitti_calib
    from ttt_kd_ros.data.rosbag import read_bag_messages

    bag = real_data / "bags" / "kitti_object_ros2"
    messages = list(read_bag_messages(bag, ["/tf_static"]))
    assert len(messages) == 3
    graph = TransformGraph(item.msg for item in messages)  # all three first: lookups must pick by stamp
    for frame, item in enumerate(messages):
        stamp = int(item.msg.transforms[0].header.stamp.sec) * 10**9
        calib = read_kitti_calib(real_data / "kitti_object" / "calib" / f"{frame:06d}.txt")
        # tf: pose of the (unrectified) camera in velo_link; cam_from_cloud is its inverse = Tr_velo_to_cam.
        cam_from_velo = graph.lookup("camera_color_left_unrect", "velo_link", stamp_ns=stamp)
        np.testing.assert_allclose(cam_from_velo, calib.Tr_velo_to_cam, atol=1e-6)


def test_make_tf_buffer_none_without_tf2() -> None:
    if compat.have("tf2_ros"):
        pytest.skip("tf2_ros is installed: the buffer needs a live node")
    assert compat.make_tf_buffer(node=None) is None


def _tf_message(*transforms: SimpleNamespace) -> SimpleNamespace:
    return SimpleNamespace(transforms=list(transforms))


def _translation(x: float) -> np.ndarray:
    T = np.eye(4)
    T[0, 3] = x
    return T


def test_transform_buffer_static_chain_both_directions() -> None:
    rng = np.random.default_rng(3)
    base_lidar, base_cam = _random_transform(rng), _random_transform(rng)
    buffer = TransformBuffer()
    stored = buffer.add_message(_tf_message(_tf("base", "lidar", base_lidar), _tf("base", "cam", base_cam)),
                                static=True)
    assert stored == 2
    cam_from_lidar = buffer.lookup("cam", "lidar", stamp_ns=123)
    np.testing.assert_allclose(cam_from_lidar, invert_transform(base_cam) @ base_lidar, atol=1e-9)
    np.testing.assert_allclose(buffer.lookup("lidar", "cam", stamp_ns=None), invert_transform(cam_from_lidar),
                               atol=1e-9)


def test_transform_buffer_dynamic_uses_newest_sample_at_or_before_stamp() -> None:
    buffer = TransformBuffer(cache_time_s=10.0)
    for sec in (1, 2, 3):
        buffer.add_message(_tf_message(_tf("odom", "cam", _translation(float(sec)), sec=sec)), static=False)
    at = {sec_ns: buffer.lookup("odom", "cam", stamp_ns=sec_ns)[0, 3]
          for sec_ns in (1_000_000_000, 2_500_000_000, 3_000_000_000, 4_000_000_000)}
    assert at == {1_000_000_000: 1.0, 2_500_000_000: 2.0, 3_000_000_000: 3.0, 4_000_000_000: 3.0}


def test_transform_buffer_dynamic_before_first_or_after_window_is_none() -> None:
    buffer = TransformBuffer(cache_time_s=2.0)
    buffer.add_message(_tf("odom", "cam", _translation(1.0), sec=10), static=False)
    assert buffer.lookup("odom", "cam", stamp_ns=9 * 10**9) is None
    assert "no sample at or before" in buffer.why_not("odom", "cam", stamp_ns=9 * 10**9)
    assert buffer.lookup("odom", "cam", stamp_ns=11 * 10**9) is not None
    assert buffer.lookup("odom", "cam", stamp_ns=13 * 10**9) is None  # publisher stopped 3 s ago, window 2 s


def test_transform_buffer_static_link_holds_for_any_stamp() -> None:
    buffer = TransformBuffer(cache_time_s=1.0)
    buffer.add_message(_tf("base", "cam", _translation(2.0), sec=100), static=True)
    for stamp_ns in (0, 100 * 10**9, 10**15):
        assert buffer.lookup("cam", "base", stamp_ns=stamp_ns)[0, 3] == -2.0


def test_transform_buffer_chain_through_moving_and_static_links() -> None:
    buffer = TransformBuffer()
    buffer.add_message(_tf("base", "lidar", _translation(1.0)), static=True)
    buffer.add_message(_tf_message(_tf("base", "pan", _translation(10.0), sec=1),
                                   _tf("base", "pan", _translation(20.0), sec=2)), static=False)
    buffer.add_message(_tf("pan", "cam", _translation(0.5)), static=True)
    # cam_from_lidar = (base_from_pan @ pan_from_cam)^-1 @ base_from_lidar: x = 1 - (pan + 0.5)
    assert buffer.lookup("cam", "lidar", stamp_ns=1_500_000_000)[0, 3] == pytest.approx(1.0 - 10.5)
    assert buffer.lookup("cam", "lidar", stamp_ns=2_000_000_000)[0, 3] == pytest.approx(1.0 - 20.5)


def test_transform_buffer_missing_link_is_none_and_named() -> None:
    buffer = TransformBuffer()
    buffer.add_message(_tf("base", "lidar", _translation(1.0)), static=True)
    buffer.add_message(_tf("map", "cam", _translation(1.0)), static=True)
    assert buffer.lookup("cam", "lidar", stamp_ns=0) is None
    assert buffer.lookup("nowhere", "lidar", stamp_ns=0) is None
    why = buffer.why_not("cam", "lidar", stamp_ns=0)
    assert "'lidar'" in why and "'cam'" in why
    assert buffer.why_not("base", "lidar", stamp_ns=0) == ""


def test_transform_buffer_skips_and_counts_bad_transforms() -> None:
    bad_quaternion = _tf("base", "cam", np.eye(4))
    bad_quaternion.transform.rotation = SimpleNamespace(x=0.0, y=0.0, z=0.0, w=0.0)
    buffer = TransformBuffer()
    stored = buffer.add_message(_tf_message(bad_quaternion, _tf("a", "a", np.eye(4)), _tf("base", "lidar", np.eye(4))),
                                static=True)
    assert (stored, buffer.rejected) == (1, 2)
    assert buffer.frames == {"base", "lidar"}


def test_transform_buffer_dynamic_history_is_bounded_by_cache_time() -> None:
    graph = TransformGraph(dynamic_window_s=1.0)
    for i in range(500):  # 100 Hz for 5 s
        graph.add_matrix("odom", "cam", _translation(float(i)), stamp_ns=i * 10_000_000, static=False)
    history = graph._edges["odom"]["cam"]
    assert len(history) <= 101 and history[-1][0] == 499 * 10_000_000


def test_transform_buffer_concurrent_writers_and_readers() -> None:
    buffer = TransformBuffer(cache_time_s=1.0)
    buffer.add_message(_tf("base", "lidar", _translation(1.0)), static=True)
    errors: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        for i in range(2000):
            buffer.add_message(_tf("base", "cam", _translation(float(i % 7)), sec=i), static=False)
        stop.set()

    def read() -> None:
        try:
            while not stop.is_set():
                T = buffer.lookup("cam", "lidar", stamp_ns=None)
                if T is not None:
                    assert T[0, 3] in {1.0 - k for k in range(7)}
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert buffer.lookup("cam", "lidar", stamp_ns=1999 * 10**9)[0, 3] == 1.0 - (1999 % 7)


def test_tf_qos_static_latched_and_dynamic_volatile() -> None:
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    static, dynamic = compat.tf_qos(static=True), compat.tf_qos(static=False)
    assert (static.durability, static.reliability) == (DurabilityPolicy.TRANSIENT_LOCAL, ReliabilityPolicy.RELIABLE)
    assert dynamic.durability == DurabilityPolicy.VOLATILE


def test_tf_message_cdr_round_trip_keeps_frames_stamps_and_pose() -> None:
    rng = np.random.default_rng(5)
    links = [("base", "cam", _random_transform(rng), 1_500_000_007), ("base", "lidar", np.eye(4), 0)]
    msg = tf_message_from_cdr(tf_message_to_cdr(links))
    assert [(t.header.frame_id, t.child_frame_id, stamp_to_ns(t.header.stamp)) for t in msg.transforms] == [
        (parent, child, stamp) for parent, child, _, stamp in links]
    np.testing.assert_allclose(transform_stamped_to_matrix(msg.transforms[0]), links[0][2], atol=1e-12)


@pytest.fixture
def tf_stand_in_installed() -> Iterator[None]:
    """Test support's TFMessage stand-in registered for the test (the package ships none), then forgotten."""
    if not tf_stand_in.install():
        pytest.skip("neither tf2_msgs nor the test stand-in's type support is usable here")
    yield
    compat.use_tf_message_stand_in(None)


def test_make_tf_lookup_without_tf2_or_tfmessage_type_is_none() -> None:
    """No tf2_ros, no tf2_msgs and nothing registered: the node must use parameter extrinsics."""
    if compat.have("tf2_ros") or compat.have("tf2_msgs"):
        pytest.skip("a real tf2_ros / tf2_msgs is installed")
    compat.use_tf_message_stand_in(None)
    assert compat.tf_message_type() is None
    assert compat.make_tf_lookup(SimpleNamespace()) is None  # no subscription is even attempted


def test_make_tf_lookup_follows_latched_tf_static_between_nodes(tf_stand_in_installed: None) -> None:
    """The node's own subscription path: a TRANSIENT_LOCAL /tf_static published before anyone listens."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    context = Context()
    rclpy.init(context=context, domain_id=50 + os.getpid() % 50)  # test_ros_node uses 100-199
    try:
        talker = rclpy.create_node("tf_talker", context=context)
        listener = rclpy.create_node("tf_listener", context=context)
        message_type = compat.tf_message_type()
        assert message_type is not None
        publisher = talker.create_publisher(message_type.message_class, compat.TF_STATIC_TOPIC,
                                            compat.tf_qos(static=True))
        payload = tf_message_to_cdr([("test_lidar", "test_cam", _translation(0.25), 0)])
        publisher.publish(payload if message_type.raw else tf_message_from_cdr(payload))
        lookup, subscriptions = compat.make_tf_lookup(listener)
        assert len(subscriptions) == (0 if compat.have("tf2_ros") else 2)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(talker)
        executor.add_node(listener)
        found = None
        for _ in range(100):
            executor.spin_once(timeout_sec=0.05)
            found = lookup.lookup("test_cam", "test_lidar", stamp_ns=10**18)
            if found is not None:
                break
        assert found is not None
        np.testing.assert_allclose(found, _translation(-0.25), atol=1e-12)
        assert lookup.lookup("test_cam", "elsewhere", stamp_ns=0) is None
        executor.shutdown()
    finally:
        context.try_shutdown()


def test_pose_to_matrix_is_static_transform_publisher_order_and_round_trips() -> None:
    from ttt_kd_ros.msgs.transforms import matrix_to_pose, pose_to_matrix

    half = np.sqrt(0.5)  # child rotated 90 degrees about z: its x axis points along the parent's y
    parent_from_child = pose_to_matrix([1.0, 2.0, 3.0, 0.0, 0.0, half, half])
    np.testing.assert_allclose(parent_from_child @ [1.0, 0.0, 0.0, 1.0], [1.0, 3.0, 3.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(pose_to_matrix(matrix_to_pose(parent_from_child)), parent_from_child, atol=1e-12)
    for bad in ([1.0] * 6, [0.0] * 7, [np.nan] * 7):
        with pytest.raises(ValueError, match=r"camera\.x\.extrinsics"):
            pose_to_matrix(bad, name="camera.x.extrinsics")
