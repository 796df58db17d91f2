"""Camera extrinsics at a cloud: parameters applied only in their own frame, tf within its tolerance (no DDS)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from test_ros_transforms import _tf, _translation

from ttt_kd_ros.msgs.scan_messages import CameraMessages, CloudHeader, FrameMismatchError
from ttt_kd_ros.msgs.transforms import TransformBuffer, invert_transform, pose_to_matrix
from ttt_kd_ros.parameters.table import ParameterError
from ttt_kd_ros.ros import extrinsics

pytest.importorskip("rclpy")  # ros.params (CameraParams) declares parameters on an rclpy node

from ttt_kd_ros.ros.params import CameraParams


def test_lookup_within_uses_latest_transform_only_inside_tf_tolerance() -> None:
    buffer = TransformBuffer(cache_time_s=10.0)
    buffer.add_message(_tf("base", "lidar", _translation(0.5)), static=True)
    buffer.add_message(_tf("base", "cam", _translation(2.0), sec=10), static=False)  # /tf, first sample at 10 s
    cloud_stamp = 10 * 10**9 - 50_000_000  # 50 ms before the only /tf sample: no value at the stamp itself
    assert buffer.lookup("cam", "lidar", cloud_stamp) is None
    np.testing.assert_allclose(extrinsics.lookup_within(buffer, "cam", "lidar", cloud_stamp, 0.1)[0, 3], -1.5)
    with pytest.raises(LookupError, match=r"0\.050 s away \(tf_tolerance_s 0\.01\)"):
        extrinsics.lookup_within(buffer, "cam", "lidar", cloud_stamp, 0.01)
    with pytest.raises(LookupError, match="no sample at or before"):
        extrinsics.lookup_within(buffer, "cam", "lidar", cloud_stamp, 0.0)
    matrix, stamp = buffer.lookup_latest("cam", "lidar")
    assert stamp == 10 * 10**9 and matrix[0, 3] == pytest.approx(-1.5)
    assert buffer.lookup_latest("cam", "nowhere") is None


def test_extrinsics_from_numbers_inverts_the_tf_pose_and_names_the_parameter() -> None:
    pose = [1.0, 0.0, 0.5, -0.5, 0.5, -0.5, 0.5]
    cam_from_cloud = extrinsics.extrinsics_from_numbers("front", pose, "lidar")
    np.testing.assert_allclose(cam_from_cloud, invert_transform(pose_to_matrix(pose)), atol=1e-12)
    with pytest.raises(ParameterError, match=r"camera\.front\.parent_frame"):
        extrinsics.extrinsics_from_numbers("front", pose, "")
    with pytest.raises(ParameterError, match=r"parameter camera\.front\.extrinsics"):
        extrinsics.extrinsics_from_numbers("front", [0.0] * 7, "lidar")


def _camera(name: str, image_frame: str = "") -> CameraMessages:
    return CameraMessages(name, image=SimpleNamespace(header=SimpleNamespace(frame_id=image_frame)), info=None)


def _header(frame_id: str, stamp_ns: int = 0) -> CloudHeader:
    return CloudHeader(header=None, stamp_ns=stamp_ns, frame_id=frame_id)


def test_camera_extrinsics_parameters_apply_only_in_their_parent_frame() -> None:
    fixed = _translation(3.0)
    cameras = [CameraParams("front", "/img", "/info", "", "/lidar", fixed)]
    answer = extrinsics.CameraExtrinsics(cameras, tf_tolerance_s=0.1)
    np.testing.assert_array_equal(answer(_camera("front"), _header("lidar")), fixed)  # leading '/' ignored
    with pytest.raises(FrameMismatchError, match=r"given in '/lidar'.*this cloud is in 'radar'"):
        answer(_camera("front"), _header("radar"))


def test_camera_extrinsics_follow_tf_to_the_image_frame_or_say_why_not() -> None:
    buffer = TransformBuffer(cache_time_s=10.0)
    buffer.add_message(_tf("lidar", "side_optical", _translation(-1.0)), static=True)
    cameras = [CameraParams("side", "/img", "/info", "", "", None),
               CameraParams("rear", "/img", "/info", "rear_optical", "", None)]
    answer = extrinsics.CameraExtrinsics(cameras, tf_tolerance_s=0.1, tf=buffer)
    np.testing.assert_allclose(answer(_camera("side", "side_optical"), _header("lidar"))[0, 3], 1.0)
    with pytest.raises(LookupError, match="no frame to look up in tf"):
        answer(_camera("side"), _header("lidar"))
    with pytest.raises(LookupError, match="no transform from 'lidar' to 'rear_optical'"):
        answer(_camera("rear", "ignored_because_the_parameter_names_one"), _header("lidar"))
    untracked = extrinsics.CameraExtrinsics(cameras, tf_tolerance_s=0.1)
    with pytest.raises(LookupError, match="tf is not followed here"):
        untracked(_camera("side", "side_optical"), _header("lidar"))
