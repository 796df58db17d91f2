"""Round trips of hand-built sensor_msgs messages through the message layer (ttt_kd_ros.msgs)."""

from __future__ import annotations

import numpy as np
import pytest

from ttt_kd_ros.msgs.camera_info import camera_info_to_intrinsics, check_image_matches_info, intrinsics_to_camera_info
from ttt_kd_ros.msgs.cloud import pointcloud2_to_cloud, scale_intensity
from ttt_kd_ros.msgs.image import depth_to_image, image_to_depth_m, image_to_rgb, rgb_to_image
from ttt_kd_ros.msgs.pointcloud2 import cloud_to_pointcloud2, labeled_cloud_to_pointcloud2, pointcloud2_to_structured
from ttt_kd_ros.msgs.stamps import stamp_to_ns
from ttt_kd_ros.ros import compat
from ttt_kd_ros.scan import CameraIntrinsics

sensor_msgs = pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs wheels (ros-jazzy-sensor-msgs) not installed")
std_msgs = pytest.importorskip("std_msgs.msg")

PointCloud2, PointField = sensor_msgs.PointCloud2, sensor_msgs.PointField
FLOAT32, UINT16, UINT32, UINT8, FLOAT64 = PointField.FLOAT32, PointField.UINT16, PointField.UINT32, PointField.UINT8, 8


def _header(frame: str = "lidar", sec: int = 12, nanosec: int = 345) -> object:
    header = std_msgs.Header(frame_id=frame)
    header.stamp.sec, header.stamp.nanosec = sec, nanosec
    return header


def _cloud_msg(array: np.ndarray, fields: list[tuple[str, int, int, int]], height: int = 1,
               row_padding: int = 0, big_endian: bool = False) -> PointCloud2:
    """A PointCloud2 holding ``array`` (structured, point_step = itemsize) laid out as ``height`` rows."""
    width = array.size // height
    rows = array.reshape(height, width).view(np.uint8).reshape(height, -1)
    if row_padding:
        rows = np.concatenate([rows, np.full((height, row_padding), 0xAB, np.uint8)], axis=1)
    msg = PointCloud2(header=_header(), height=height, width=width, is_bigendian=big_endian,
                      point_step=array.dtype.itemsize, row_step=rows.shape[1], is_dense=False)
    msg.fields = [PointField(name=n, offset=o, datatype=t, count=c) for n, o, t, c in fields]
    msg.data = rows.tobytes()
    return msg


def _padded_dtype(order: str = "<") -> np.dtype:
    """x, y, z, 4 bytes padding, intensity, ring (uint16), 2 pad, time (float64): a Velodyne-like layout."""
    return np.dtype({"names": ["x", "y", "z", "intensity", "ring", "time"],
                     "formats": [order + "f4"] * 4 + [order + "u2", order + "f8"],
                     "offsets": [0, 4, 8, 16, 20, 24], "itemsize": 40})


PADDED_FIELDS = [("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1),
                 ("intensity", 16, FLOAT32, 1), ("ring", 20, UINT16, 1), ("time", 24, FLOAT64, 1)]


def _padded_points(n: int, order: str = "<", seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = np.zeros(n, dtype=_padded_dtype(order))
    for axis in "xyz":
        points[axis] = rng.uniform(-20, 20, n)
    points["intensity"] = rng.uniform(0, 255, n)
    points["ring"] = np.arange(n) % 64
    points["time"] = np.linspace(0, 0.1, n)
    return points


def test_pointcloud2_to_structured_padding_and_extra_fields() -> None:
    points = _padded_points(50)
    decoded = pointcloud2_to_structured(_cloud_msg(points, PADDED_FIELDS))
    assert decoded.shape == (1, 50)
    assert decoded.dtype.itemsize == 40
    for name in ("x", "y", "z", "intensity", "ring", "time"):
        np.testing.assert_array_equal(decoded[name][0], points[name])


def test_pointcloud2_to_structured_is_zero_copy() -> None:
    msg = _cloud_msg(_padded_points(10), PADDED_FIELDS)
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    decoded = pointcloud2_to_structured(msg)
    assert np.shares_memory(decoded, buffer)


def test_pointcloud2_to_structured_big_endian() -> None:
    points = _padded_points(20, order=">")
    decoded = pointcloud2_to_structured(_cloud_msg(points, PADDED_FIELDS, big_endian=True))
    np.testing.assert_array_equal(decoded["x"][0], points["x"])
    np.testing.assert_array_equal(decoded["ring"][0], points["ring"])
    assert decoded.dtype["x"].byteorder == ">"


def test_pointcloud2_to_structured_count_greater_than_one() -> None:
    array = np.zeros(4, dtype=np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("normal", "<f4", (3,))]))
    array["normal"] = np.arange(12, dtype=np.float32).reshape(4, 3)
    fields = [("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1), ("normal", 12, FLOAT32, 3)]
    decoded = pointcloud2_to_structured(_cloud_msg(array, fields))
    np.testing.assert_array_equal(decoded["normal"][0], array["normal"])


def test_pointcloud2_to_cloud_organised_with_nans_and_row_padding() -> None:
    points = _padded_points(4 * 8).reshape(4, 8)
    points["x"][1, 3] = np.nan
    points["z"][2, 5] = np.inf
    points["x"][3, 0] = points["y"][3, 0] = points["z"][3, 0] = 0.0  # "no return"
    msg = _cloud_msg(points.reshape(-1), PADDED_FIELDS, height=4, row_padding=12)
    assert msg.row_step == 8 * 40 + 12
    cloud = pointcloud2_to_cloud(msg)
    assert cloud.num_input_points == 32
    expected_dropped = {1 * 8 + 3, 2 * 8 + 5, 3 * 8 + 0}
    assert set(range(32)) - set(cloud.source_index.tolist()) == expected_dropped
    flat = points.reshape(-1)
    np.testing.assert_array_equal(cloud.xyz_m[:, 0], flat["x"][cloud.source_index])
    assert cloud.xyz_m.dtype == np.float32 and cloud.xyz_m.shape == (29, 3)
    assert cloud.frame_id == "lidar" and cloud.stamp_ns == 12 * 10**9 + 345


def test_pointcloud2_to_cloud_max_range() -> None:
    array = np.zeros(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    array["x"] = [1.0, 50.0, 99.0]
    msg = _cloud_msg(array, [("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1)])
    cloud = pointcloud2_to_cloud(msg, max_range_m=60.0)
    assert cloud.source_index.tolist() == [0, 1]


def test_pointcloud2_to_cloud_intensity_scaling() -> None:
    points = _padded_points(10)
    points["intensity"] = np.linspace(0, 255, 10)
    cloud = pointcloud2_to_cloud(_cloud_msg(points, PADDED_FIELDS))
    np.testing.assert_allclose(cloud.intensity, np.linspace(0, 1, 10), atol=1e-6)
    np.testing.assert_allclose(scale_intensity(np.array([0.0, 0.5, 1.0])), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(scale_intensity(np.array([0.0, 65535.0])), [0.0, 1.0])


def test_pointcloud2_to_cloud_packed_rgb_float_with_alpha_and_labels() -> None:
    n = 6
    colors = np.random.default_rng(1).integers(0, 256, (n, 3)).astype(np.uint32)
    packed = (np.uint32(255) << 24) | (colors[:, 0] << 16) | (colors[:, 1] << 8) | colors[:, 2]  # NaN as float
    array = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgba", "<u4"), ("label", "<u2"),
                               ("pad", "<u2")])
    array["x"] = 1.0
    array["rgba"] = packed
    array["label"] = np.arange(n)
    fields = [("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1), ("rgba", 12, FLOAT32, 1),
              ("label", 16, UINT16, 1)]
    cloud = pointcloud2_to_cloud(_cloud_msg(array, fields))
    np.testing.assert_allclose(cloud.rgb * 255, colors, atol=1e-3)
    assert cloud.labels.dtype == np.int64 and cloud.labels.tolist() == list(range(n))


def test_pointcloud2_to_cloud_separate_rgb_channels() -> None:
    array = np.zeros(2, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1"),
                               ("a", "u1")])
    array["z"] = 1.0
    array["r"], array["g"], array["b"] = [255, 0], [0, 51], [102, 255]
    fields = [("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1), ("r", 12, UINT8, 1),
              ("g", 13, UINT8, 1), ("b", 14, UINT8, 1)]
    cloud = pointcloud2_to_cloud(_cloud_msg(array, fields))
    np.testing.assert_allclose(cloud.rgb, [[1.0, 0.0, 0.4], [0.0, 0.2, 1.0]], atol=1e-6)


def test_pointcloud2_to_cloud_missing_xyz_raises() -> None:
    array = np.zeros(2, dtype=[("x", "<f4"), ("y", "<f4")])
    msg = _cloud_msg(array, [("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1)])
    with pytest.raises(ValueError, match=r"missing coordinate field\(s\) \['z'\]"):
        pointcloud2_to_cloud(msg)


def test_pointcloud2_to_cloud_bad_length_raises() -> None:
    msg = _cloud_msg(_padded_points(5), PADDED_FIELDS)
    msg.data = bytes(msg.data)[:-1]
    with pytest.raises(ValueError, match="data has 199 bytes, expected row_step"):
        pointcloud2_to_cloud(msg)


def test_pointcloud2_to_cloud_row_step_too_small_raises() -> None:
    msg = _cloud_msg(_padded_points(5), PADDED_FIELDS)
    msg.row_step = 40 * 5 - 4
    with pytest.raises(ValueError, match="row_step 196 is smaller"):
        pointcloud2_to_cloud(msg)


def test_pointcloud2_to_cloud_unsupported_datatype_raises() -> None:
    msg = _cloud_msg(_padded_points(5), PADDED_FIELDS)
    msg.fields[3].datatype = 42
    with pytest.raises(ValueError, match="'intensity': unsupported datatype 42"):
        pointcloud2_to_cloud(msg)


def test_pointcloud2_to_cloud_field_beyond_point_step_raises() -> None:
    msg = _cloud_msg(_padded_points(5), PADDED_FIELDS)
    msg.fields[5].offset = 36
    with pytest.raises(ValueError, match="'time': offset 36 \\+ 8 bytes exceeds point_step 40"):
        pointcloud2_to_cloud(msg)


def test_pointcloud2_to_cloud_reads_duck_typed_numpy_data() -> None:
    """rosbags messages carry ``data`` as a numpy uint8 array and plain attributes."""
    msg = _cloud_msg(_padded_points(7), PADDED_FIELDS)
    from types import SimpleNamespace

    fake = SimpleNamespace(header=msg.header, height=1, width=7, fields=msg.fields, is_bigendian=False,
                           point_step=40, row_step=280, is_dense=True, data=np.frombuffer(msg.data, np.uint8))
    np.testing.assert_array_equal(pointcloud2_to_cloud(fake).xyz_m, pointcloud2_to_cloud(msg).xyz_m)


def test_cloud_to_pointcloud2_round_trip() -> None:
    rng = np.random.default_rng(3)
    xyz = rng.normal(size=(30, 3)).astype(np.float32) * 5
    intensity = rng.uniform(0, 1, 30).astype(np.float32)
    rgb = rng.integers(0, 256, (30, 3)).astype(np.uint8)
    labels = rng.integers(0, 19, 30)
    msg = cloud_to_pointcloud2(_header(), xyz, intensity=intensity, rgb=rgb, labels=labels)
    assert msg.point_step % 4 == 0 and msg.is_dense
    cloud = pointcloud2_to_cloud(msg)
    np.testing.assert_array_equal(cloud.xyz_m, xyz)
    np.testing.assert_allclose(cloud.intensity, intensity)
    np.testing.assert_allclose(cloud.rgb * 255, rgb, atol=1e-3)
    np.testing.assert_array_equal(cloud.labels, labels)


def test_labeled_cloud_to_pointcloud2_round_trip() -> None:
    rng = np.random.default_rng(4)
    xyz = rng.normal(size=(25, 3)).astype(np.float32)
    labels = rng.integers(-1, 20, 25)
    confidence = rng.uniform(0, 1, 25).astype(np.float32)
    colors = rng.integers(0, 256, (25, 3)).astype(np.uint8)
    msg = labeled_cloud_to_pointcloud2(_header("map"), xyz, labels, confidence, colors)
    assert msg.height == 1 and msg.width == 25 and msg.is_dense
    assert msg.row_step == msg.point_step * 25 == len(msg.data)
    assert {f.name: f.datatype for f in msg.fields} == {"x": FLOAT32, "y": FLOAT32, "z": FLOAT32, "rgb": FLOAT32,
                                                        "confidence": FLOAT32, "label": UINT16, "fused": UINT8,
                                                        "index": UINT32}
    structured = pointcloud2_to_structured(msg)[0]
    np.testing.assert_array_equal(structured["index"], np.arange(25))  # no source_index given: the input rows
    np.testing.assert_array_equal(structured["label"], np.where(labels < 0, 65535, labels))
    np.testing.assert_array_equal(structured["confidence"], confidence)
    bits = pointcloud2_to_structured(msg, overrides={"rgb": "u4"})[0]["rgb"]
    np.testing.assert_array_equal(bits, (colors[:, 0].astype(np.uint32) << 16) | (colors[:, 1].astype(np.uint32) << 8)
                                  | colors[:, 2])
    assert msg.header.frame_id == "map"


@pytest.mark.parametrize("order", ["<", ">"])
def test_packed_rgb_decodes_every_bit_pattern_in_either_byte_order(order: str) -> None:
    """A packed colour whose float bits are a NaN (alpha 255) keeps its colour; big-endian rows decode alike."""
    colors = np.array([[255, 0, 0], [0, 255, 0], [1, 2, 3], [255, 255, 255]], np.uint8)
    bits = (0xFF << 24) | (colors[:, 0].astype(np.uint32) << 16) | (colors[:, 1].astype(np.uint32) << 8) | colors[:, 2]
    points = np.zeros(4, np.dtype({"names": ["x", "y", "z", "rgb"], "formats": [order + "f4"] * 3 + [order + "u4"],
                                   "offsets": [0, 4, 8, 12], "itemsize": 16}))
    points["x"] = np.arange(1, 5)
    points["rgb"] = bits
    assert np.isnan(bits.view(np.float32)).sum() == 2  # patterns a by-value float conversion would lose
    fields = [("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1), ("rgb", 12, FLOAT32, 1)]
    cloud = pointcloud2_to_cloud(_cloud_msg(points, fields, big_endian=order == ">"))
    np.testing.assert_array_equal(np.round(cloud.rgb * 255).astype(np.uint8), colors)
    np.testing.assert_array_equal(cloud.xyz_m[:, 0], [1, 2, 3, 4])


def test_decode_cloud_builds_one_structured_view_per_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """xyz, intensity and packed colour all come from one view over the buffer, not one decode each."""
    import ttt_kd_ros.msgs.pointcloud2 as pointcloud2

    points = np.zeros(5, np.dtype({"names": ["x", "y", "z", "intensity", "rgb"], "formats": ["<f4"] * 4 + ["<u4"],
                                   "offsets": [0, 4, 8, 12, 16], "itemsize": 20}))
    points["x"], points["intensity"], points["rgb"] = np.arange(1, 6), 7.0, 0x00FF0000
    fields = [("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1), ("intensity", 12, FLOAT32, 1),
              ("rgb", 16, FLOAT32, 1)]
    msg = _cloud_msg(points, fields)
    layouts = []
    real = pointcloud2.pointcloud2_dtype
    monkeypatch.setattr(pointcloud2, "pointcloud2_dtype", lambda *a, **k: layouts.append(a) or real(*a, **k))
    cloud = pointcloud2_to_cloud(msg)
    assert len(layouts) == 1
    assert len(cloud.xyz_m) == 5 and cloud.intensity is not None and (cloud.rgb == [1.0, 0.0, 0.0]).all()


def test_labeled_cloud_to_pointcloud2_row_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="confidence: expected 3 rows"):
        labeled_cloud_to_pointcloud2(None, np.zeros((3, 3)), np.zeros(3), np.zeros(2), np.zeros((3, 3), np.uint8))


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("padding", [0, 5])
def test_image_to_rgb_colour_round_trip(encoding: str, padding: int) -> None:
    rgb = np.random.default_rng(5).integers(0, 256, (7, 9, 3)).astype(np.uint8)
    msg = rgb_to_image(rgb, encoding, _header("cam"), row_padding_bytes=padding)
    assert msg.step == 9 * (4 if "a" in encoding[3:] else 3) + padding
    decoded = image_to_rgb(msg)
    np.testing.assert_array_equal(decoded, rgb)
    assert decoded.flags.writeable and decoded.flags.c_contiguous


@pytest.mark.parametrize("big_endian", [False, True])
def test_image_to_rgb_mono_round_trip(big_endian: bool) -> None:
    grey = np.random.default_rng(6).integers(0, 256, (5, 6)).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for encoding in ("mono8", "mono16"):
        msg = rgb_to_image(rgb, encoding, row_padding_bytes=2, big_endian=big_endian)
        np.testing.assert_array_equal(image_to_rgb(msg), rgb)


def test_image_to_rgb_mono16_scales_high_byte() -> None:
    msg = sensor_msgs.Image(height=1, width=2, encoding="mono16", is_bigendian=0, step=4)
    msg.data = np.array([0x1234, 0xFFFF], dtype="<u2").tobytes()
    np.testing.assert_array_equal(image_to_rgb(msg)[0, :, 0], [0x12, 0xFF])


def test_image_to_rgb_unknown_encoding_and_bad_length_raise() -> None:
    msg = rgb_to_image(np.zeros((2, 2, 3), np.uint8))
    msg.encoding = "yuv422"
    with pytest.raises(ValueError, match=r"encoding: expected one of .* got 'yuv422'"):
        image_to_rgb(msg)
    msg = rgb_to_image(np.zeros((2, 2, 3), np.uint8))
    msg.data = bytes(msg.data) + b"\0"
    with pytest.raises(ValueError, match="data has 13 bytes, expected step \\* height"):
        image_to_rgb(msg)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
@pytest.mark.parametrize("big_endian", [False, True])
def test_image_to_depth_m_round_trip(encoding: str, big_endian: bool) -> None:
    depth = np.random.default_rng(7).uniform(0.3, 8.0, (4, 6)).astype(np.float32)
    depth[1, 2] = 0.0
    msg = depth_to_image(depth, encoding, row_padding_bytes=4, big_endian=big_endian)
    decoded = image_to_depth_m(msg)
    assert decoded.dtype == np.float32 and decoded.shape == (4, 6)
    np.testing.assert_allclose(decoded, depth, atol=6e-4 if encoding == "16UC1" else 0)


def test_image_to_depth_m_nan_becomes_zero_and_rgb_encoding_rejected() -> None:
    depth = np.array([[1.0, np.nan, np.inf]], dtype=np.float32)
    np.testing.assert_array_equal(image_to_depth_m(depth_to_image(depth)), [[1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="got 'rgb8'"):
        image_to_depth_m(rgb_to_image(np.zeros((1, 1, 3), np.uint8)))


def _kitti_like_intrinsics() -> CameraIntrinsics:
    K = np.array([[707.0, 0, 604.0], [0, 707.0, 180.5], [0, 0, 1]])
    R = np.array([[0.9999, 0.0101, -0.0085], [-0.0101, 0.9999, -0.0040], [0.0085, 0.0041, 0.9999]])
    P = np.hstack([K, [[45.76], [-0.35], [0.005]]])
    return CameraIntrinsics(K=K, width_px=1242, height_px=375, rectification=R, projection=P)


def test_camera_info_round_trip_rectified() -> None:
    intr = _kitti_like_intrinsics()
    msg = intrinsics_to_camera_info(intr, _header("cam"))
    back = camera_info_to_intrinsics(msg)
    np.testing.assert_array_equal(back.K, intr.K)
    np.testing.assert_array_equal(back.projection, intr.projection)
    np.testing.assert_array_equal(back.rectification, intr.rectification)
    assert (back.width_px, back.height_px, back.distortion_model) == (1242, 375, "none")


def test_camera_info_round_trip_distorted() -> None:
    intr = CameraIntrinsics(K=np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]]), width_px=640, height_px=480,
                            distortion_model="plumb_bob", D=np.array([-0.1, 0.02, 0.001, -0.002, 0.0]))
    back = camera_info_to_intrinsics(intrinsics_to_camera_info(intr))
    assert back.distortion_model == "plumb_bob"
    np.testing.assert_array_equal(back.D, intr.D)
    assert back.projection is None and back.rectification is None
    rect = camera_info_to_intrinsics(intrinsics_to_camera_info(intr), rectified_image=True)
    np.testing.assert_array_equal(rect.projection[:, :3], intr.K)


def test_camera_info_to_intrinsics_empty_model_with_zero_d_is_none() -> None:
    msg = intrinsics_to_camera_info(_kitti_like_intrinsics())
    msg.distortion_model = ""
    msg.d = []
    assert camera_info_to_intrinsics(msg).distortion_model == "none"


def test_camera_info_to_intrinsics_rejects_zero_k_and_unknown_model() -> None:
    msg = intrinsics_to_camera_info(_kitti_like_intrinsics())
    msg.k = np.zeros(9)
    with pytest.raises(ValueError, match="CameraInfo k: expected a non-zero"):
        camera_info_to_intrinsics(msg)
    msg = intrinsics_to_camera_info(_kitti_like_intrinsics())
    msg.distortion_model, msg.d = "fisheye_custom", [0.1, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="got 'fisheye_custom'"):
        camera_info_to_intrinsics(msg)


@pytest.mark.parametrize(("field", "index", "value"), [("k", 0, float("nan")), ("k", 4, float("inf")),
                                                      ("p", 2, float("nan")), ("p", 3, float("-inf"))])
def test_camera_info_to_intrinsics_rejects_nan_or_inf_k_and_p(field: str, index: int, value: float) -> None:
    msg = intrinsics_to_camera_info(_kitti_like_intrinsics())
    values = np.array(getattr(msg, field), dtype=np.float64)
    values[index] = value
    setattr(msg, field, values)
    with pytest.raises(ValueError, match=f"CameraInfo {field}: expected finite numbers"):
        camera_info_to_intrinsics(msg)


def test_check_image_matches_info_size_mismatch() -> None:
    info = intrinsics_to_camera_info(_kitti_like_intrinsics(), _header("cam"))
    image = rgb_to_image(np.zeros((375, 1242, 3), np.uint8), header=_header("cam"))
    check_image_matches_info(image, info)
    small = rgb_to_image(np.zeros((370, 1224, 3), np.uint8), header=_header("cam"))
    with pytest.raises(ValueError, match="image is 1224x370 but CameraInfo says 1242x375"):
        check_image_matches_info(small, info)


def test_stamp_to_ns_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="stamp"):
        stamp_to_ns("yesterday")


def test_pointcloud2_to_cloud_matches_sensor_msgs_py_when_importable() -> None:
    if not compat.have("sensor_msgs_py"):
        pytest.skip("sensor_msgs_py is not installed (ROS 2 install only)")
    from sensor_msgs_py import point_cloud2

    msg = _cloud_msg(_padded_points(40), PADDED_FIELDS)
    theirs = point_cloud2.read_points_numpy(msg, field_names=["x", "y", "z"], skip_nans=True)
    np.testing.assert_array_equal(pointcloud2_to_cloud(msg).xyz_m, theirs.astype(np.float32))


def _first(bag, topic: str):
    from ttt_kd_ros.data.rosbag import read_bag_messages

    return next(iter(read_bag_messages(bag, [topic]))).msg


def test_pointcloud2_to_cloud_ouster_ros1_mcap_layout(real_data) -> None:
    msg = _first(real_data / "bags" / "ouster_os1_ros1.mcap", "/os1_cloud_node/points")
    assert (msg.height, msg.width, msg.point_step) == (64, 2048, 48)
    structured = pointcloud2_to_structured(msg)
    assert structured.shape == (64, 2048)
    assert {"ring", "reflectivity", "t", "noise", "range"} <= set(structured.dtype.names)
    cloud = pointcloud2_to_cloud(msg)
    flat = structured.reshape(-1)
    # The driver's own range field (mm) agrees with the decoded xyz for every kept point.
    range_m = flat["range"][cloud.source_index].astype(np.float64) / 1000.0
    norm = np.linalg.norm(cloud.xyz_m.astype(np.float64), axis=1)
    assert np.median(np.abs(range_m - norm)) < 0.05
    assert np.all(flat["range"][np.setdiff1d(np.arange(flat.size), cloud.source_index)] == 0)


def test_pointcloud2_to_cloud_luminar_ros1_bag_layout(real_data) -> None:
    msg = _first(real_data / "bags" / "luminar_ros1.bag", "/luminar_pointcloud")
    assert msg.point_step == 32 and [f.offset for f in msg.fields][3] == 16  # 4 padding bytes after z
    cloud = pointcloud2_to_cloud(msg)
    assert cloud.num_points == cloud.num_input_points == msg.width
    assert cloud.intensity is not None and float(cloud.intensity.max()) <= 1.0
    assert np.isfinite(cloud.xyz_m).all()


def test_pointcloud2_to_cloud_and_image_kitti_rosbag2(real_data) -> None:
    bag = real_data / "bags" / "kitti_object_ros2"
    cloud = pointcloud2_to_cloud(_first(bag, "/kitti/velo/points"))
    velodyne = np.fromfile(real_data / "kitti_object" / "velodyne" / "000000.bin", np.float32).reshape(-1, 4)
    np.testing.assert_array_equal(cloud.xyz_m, velodyne[:, :3])
    np.testing.assert_allclose(cloud.intensity, velodyne[:, 3])
    from ttt_kd_ros.data.calib import load_image_rgb

    image = image_to_rgb(_first(bag, "/kitti/camera_color_left/image_raw"))
    np.testing.assert_array_equal(image, load_image_rgb(real_data / "kitti_object" / "image_2" / "000000.png"))
    intr = camera_info_to_intrinsics(_first(bag, "/kitti/camera_color_left/camera_info"))
    assert (intr.width_px, intr.height_px) == image.shape[1::-1]
    assert intr.projection is not None and intr.rectification is not None


def test_benchmark_convert_main_small_run(capsys: pytest.CaptureFixture[str]) -> None:
    from ttt_kd_ros.tools import benchmark_convert

    argv = ["--points", "2000", "--reps", "2", "--cameras", "2", "--image-size", "64", "48"]
    assert benchmark_convert.main(argv) == 0
    out = capsys.readouterr().out
    assert "PointCloud2 decode (2000 pts" in out and "sync, per message (5 inputs" in out
    assert "median total" in out
