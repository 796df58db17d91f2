"""The one scan path: messages -> Scan (scan_from_messages) -> Segmenter -> labeled PointCloud2 keeps rows aligned."""

from __future__ import annotations

import numpy as np
import pytest

from ttt_kd_ros.labels import LABEL_SETS
from ttt_kd_ros.msgs.pointcloud2 import read_points
from ttt_kd_ros.msgs.scan_messages import (
    BAD_CAMERA,
    NO_TRANSFORM,
    CameraMessages,
    ScanPolicy,
    empty_prediction,
    prediction_to_pointcloud2,
    read_cloud_header,
    scan_from_messages,
)
from ttt_kd_ros.scan import Prediction

sensor_msgs = pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs wheels (ros-jazzy-sensor-msgs) not installed")
std_msgs = pytest.importorskip("std_msgs.msg")
builtin_interfaces = pytest.importorskip("builtin_interfaces.msg")

HEIGHT, WIDTH = 8, 50  # an organised cloud: 400 rows in the message
STAMP_NS = 1_700_000_000_123_456_789


def _header(frame: str = "lidar") -> object:
    sec, nanosec = divmod(STAMP_NS, 1_000_000_000)
    return std_msgs.Header(frame_id=frame, stamp=builtin_interfaces.Time(sec=sec, nanosec=nanosec))


def _cloud_with_nans(rng: np.random.Generator) -> tuple[object, np.ndarray, np.ndarray]:
    """(organised PointCloud2 x y z label, (H*W, 3) xyz with NaN rows, (H*W,) label = the row's own pattern)."""
    n = HEIGHT * WIDTH
    xyz = rng.uniform(-20.0, 20.0, (n, 3)).astype(np.float32)
    xyz[::7] = np.nan  # every 7th row has no return
    xyz[3, 1] = np.inf
    labels = (np.arange(n) % 13).astype(np.uint16)  # a known pattern per input row
    array = np.zeros(n, dtype=np.dtype({"names": ["x", "y", "z", "label"], "formats": ["<f4", "<f4", "<f4", "<u2"],
                                        "offsets": [0, 4, 8, 12], "itemsize": 16}))
    array["x"], array["y"], array["z"], array["label"] = xyz[:, 0], xyz[:, 1], xyz[:, 2], labels
    F = sensor_msgs.PointField
    msg = sensor_msgs.PointCloud2(
        header=_header(), height=HEIGHT, width=WIDTH, is_bigendian=False, point_step=16, row_step=16 * WIDTH,
        is_dense=False, data=array.tobytes(),
        fields=[F(name="x", offset=0, datatype=F.FLOAT32, count=1), F(name="y", offset=4, datatype=F.FLOAT32, count=1),
                F(name="z", offset=8, datatype=F.FLOAT32, count=1), F(name="label", offset=12, datatype=F.UINT16,
                                                                       count=1)])
    return msg, xyz, labels


def test_scan_decoded_segmented_encoded_keeps_source_index_labels_and_xyz_aligned() -> None:
    from ttt_kd_ros.adapt import AdaptConfig
    from ttt_kd_ros.segmenter import Segmenter, SegmenterConfig

    rng = np.random.default_rng(3)
    msg, xyz, truth = _cloud_with_nans(rng)
    finite = np.flatnonzero(np.isfinite(xyz).all(axis=1))
    decoded = scan_from_messages(msg, policy=ScanPolicy(max_points=300, label_set="synthetic_indoor"),
                                 rng=np.random.default_rng(0))
    scan = decoded.scan
    assert decoded.num_input_points == HEIGHT * WIDTH and scan.num_points == 300 < len(finite)  # the input cap
    assert np.all(np.diff(decoded.source_index) > 0) and set(decoded.source_index) <= set(finite)
    np.testing.assert_array_equal(scan.points_xyz_m, xyz[decoded.source_index])
    np.testing.assert_array_equal(scan.labels, truth[decoded.source_index])
    assert (scan.stamp_ns, scan.frame_id) == (STAMP_NS, "lidar")

    segmenter = Segmenter.from_config(SegmenterConfig(checkpoint=None, teacher="tiny", teacher_resolution=56,
                                                      device="cpu", adapt=AdaptConfig(strategy="none"),
                                                      max_points=100))  # the network sees a subsample
    prediction = segmenter.segment(scan)
    out = prediction_to_pointcloud2(decoded, prediction, LABEL_SETS["synthetic_indoor"])
    points = read_points(out)
    assert out.width == scan.num_points and out.header.frame_id == "lidar"
    np.testing.assert_array_equal(points["index"], decoded.source_index)  # each output point names its input row
    np.testing.assert_array_equal(np.stack([points[a] for a in "xyz"], axis=1), xyz[points["index"]])
    np.testing.assert_array_equal(points["label"], prediction.labels)
    np.testing.assert_array_equal(truth[points["index"]], scan.labels)  # ground truth found without coordinates


def test_scan_from_messages_reads_header_once_and_takes_given_header() -> None:
    msg, _, _ = _cloud_with_nans(np.random.default_rng(0))
    header = read_cloud_header(msg)
    assert header.stamp_ns == STAMP_NS and header.frame_id == "lidar"
    moved = type(header)(header=header.header, stamp_ns=5, frame_id="elsewhere")
    scan = scan_from_messages(msg, header=moved).scan  # the caller's reading is used, not a second one
    assert (scan.stamp_ns, scan.frame_id) == (5, "elsewhere")


def test_scan_from_messages_cap_needs_rng_and_bad_cloud_raises() -> None:
    msg, _, _ = _cloud_with_nans(np.random.default_rng(0))
    with pytest.raises(ValueError, match="no rng"):
        scan_from_messages(msg, policy=ScanPolicy(max_points=10))
    msg.data = msg.data[:32]
    with pytest.raises(ValueError, match="data has 32 bytes"):
        scan_from_messages(msg)


def _camera(name: str, width: int = 32, height: int = 24, info_width: int | None = None) -> CameraMessages:
    image = sensor_msgs.Image(header=_header("cam"), height=height, width=width, encoding="rgb8", step=3 * width,
                              data=np.zeros(3 * width * height, np.uint8).tobytes())
    info = sensor_msgs.CameraInfo(header=_header("cam"), width=info_width or width, height=height,
                                  distortion_model="plumb_bob", d=[0.0] * 5,
                                  k=[20.0, 0.0, width / 2, 0.0, 20.0, height / 2, 0.0, 0.0, 1.0])
    return CameraMessages(name, image, info)


def test_scan_from_messages_leaves_out_cameras_with_their_reason() -> None:
    msg, _, _ = _cloud_with_nans(np.random.default_rng(0))
    given = _camera("front")
    given = CameraMessages(given.name, given.image, given.info, cam_from_cloud=np.eye(4))
    asked = _camera("side")
    unknown = _camera("rear")
    bad = CameraMessages("left", _camera("left").image, _camera("left", info_width=16).info, np.eye(4))
    frames_asked: list[tuple[str, str, int]] = []

    def extrinsics(camera: CameraMessages, cloud: object) -> np.ndarray:
        frames_asked.append((camera.name, cloud.frame_id, cloud.stamp_ns))
        if camera.name == "rear":
            raise LookupError("no transform from 'lidar' to 'rear_optical'")
        return np.eye(4)

    decoded = scan_from_messages(msg, [given, asked, unknown, bad], extrinsics)
    assert [view.name for view in decoded.scan.cameras] == ["front", "side"]
    assert frames_asked == [("side", "lidar", STAMP_NS), ("rear", "lidar", STAMP_NS)]
    assert [(m.camera, m.reason) for m in decoded.left_out] == [("rear", NO_TRANSFORM), ("left", BAD_CAMERA)]
    assert "image is 32x24 but CameraInfo says 16x24" in decoded.left_out[1].detail


def test_prediction_to_pointcloud2_empty_scan_keeps_header_and_rejects_misaligned() -> None:
    msg, _, _ = _cloud_with_nans(np.random.default_rng(0))
    msg.height, msg.width, msg.row_step, msg.data = 1, 0, 0, b""
    decoded = scan_from_messages(msg)
    out = prediction_to_pointcloud2(decoded, empty_prediction("no_valid_points"), LABEL_SETS["synthetic_indoor"])
    assert out.width == 0 and out.header.frame_id == "lidar"
    full = scan_from_messages(_cloud_with_nans(np.random.default_rng(0))[0])
    with pytest.raises(ValueError, match="labels \\(one per scan point\\)"):
        prediction_to_pointcloud2(full, Prediction(np.zeros(3, np.int64), np.zeros(3, np.float32)),
                                  LABEL_SETS["synthetic_indoor"])


def test_prediction_to_pointcloud2_organized_keeps_height_width_and_marks_missing_rows() -> None:
    msg, xyz, _ = _cloud_with_nans(np.random.default_rng(1))
    decoded = scan_from_messages(msg, policy=ScanPolicy(max_points=300), rng=np.random.default_rng(2))
    n = decoded.scan.num_points
    labels = np.arange(n, dtype=np.int64) % 5
    prediction = Prediction(labels, np.full(n, 0.75, np.float32))
    out = prediction_to_pointcloud2(decoded, prediction, LABEL_SETS["synthetic_indoor"], organized=True)
    assert (out.height, out.width, out.is_dense) == (HEIGHT, WIDTH, False)
    assert out.row_step == out.point_step * WIDTH
    points = read_points(out, ["x", "label", "confidence", "index"])
    np.testing.assert_array_equal(points["index"], np.arange(HEIGHT * WIDTH))
    rows = decoded.source_index
    np.testing.assert_array_equal(points["label"][rows], labels)
    np.testing.assert_array_equal(points["x"][rows], xyz[rows, 0])
    missing = np.setdiff1d(np.arange(HEIGHT * WIDTH), rows)  # NaN rows and the rows thinned by the input cap
    assert missing.size == HEIGHT * WIDTH - 300
    assert np.all(points["label"][missing] == 65535) and np.all(np.isnan(points["x"][missing]))
    assert np.all(points["confidence"][missing] == 0)
    dense = prediction_to_pointcloud2(decoded, prediction, LABEL_SETS["synthetic_indoor"])
    assert (dense.height, dense.width) == (1, 300)


def test_prediction_to_pointcloud2_marks_the_fused_points_dense_and_organized() -> None:
    msg, _, _ = _cloud_with_nans(np.random.default_rng(1))
    decoded = scan_from_messages(msg, policy=ScanPolicy(max_points=300), rng=np.random.default_rng(2))
    n = decoded.scan.num_points
    fused = np.arange(n) % 3 == 0
    prediction = Prediction(np.zeros(n, np.int64), np.full(n, 0.5, np.float32), fused=fused)
    dense = read_points(prediction_to_pointcloud2(decoded, prediction, LABEL_SETS["synthetic_indoor"]))
    np.testing.assert_array_equal(dense["fused"], fused.astype(np.uint8))
    organized = read_points(prediction_to_pointcloud2(decoded, prediction, LABEL_SETS["synthetic_indoor"],
                                                      organized=True))
    np.testing.assert_array_equal(organized["fused"][decoded.source_index], fused.astype(np.uint8))
    assert organized["fused"].sum() == fused.sum()  # rows with no scan point are never marked
    unfused = read_points(prediction_to_pointcloud2(decoded, Prediction(np.zeros(n, np.int64), np.ones(n, np.float32)),
                                                    LABEL_SETS["synthetic_indoor"]))
    assert not unfused["fused"].any()


def test_scan_from_messages_frame_mismatch_leaves_camera_out_with_its_reason() -> None:
    from ttt_kd_ros.msgs.scan_messages import FRAME_MISMATCH, FrameMismatchError

    msg, _, _ = _cloud_with_nans(np.random.default_rng(0))

    def refuse(camera: CameraMessages, header: object) -> np.ndarray:
        raise FrameMismatchError("extrinsics are given in 'base' but this cloud is in 'lidar'")

    camera = CameraMessages("front", image=None, info=None)
    decoded = scan_from_messages(msg, [camera], refuse)
    assert [(m.camera, m.reason) for m in decoded.left_out] == [("front", FRAME_MISMATCH)]
