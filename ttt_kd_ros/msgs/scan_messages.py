"""The one path between messages and the core: synchronized messages -> Scan, Prediction -> labeled PointCloud2.

The node, the bag reader (data/rosbag.py), the in-process replay (through
the bag reader) and the node benchmark all build their Scans with
``scan_from_messages`` and encode with ``prediction_to_pointcloud2``, so a
bag replays exactly as the live topics would and there is one set of rules:

- the cloud's header (stamp -> integer ns, frame_id) is read once
  (``read_cloud_header``; a caller that needed it earlier passes it in);
- points: decoded by a view over the buffer, then the policy of
  ``msgs.cloud`` (finite, in range), then the input cap (``ScanPolicy.max_points``,
  a random subset) - the only place a cloud is thinned before the Segmenter;
- cameras: extrinsics first (given, or asked of ``extrinsics``), then the
  Image / CameraInfo checks; a camera that fails either is left out of the
  scan with its reason (``LeftOut``), never the whole scan;
- every scan point remembers its row in the message (``source_index``), and
  the output carries it as the ``index`` field, so a consumer maps output
  points back to input points without matching coordinates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ttt_kd_ros.labels import LabelSet
from ttt_kd_ros.msgs.camera_info import camera_info_to_intrinsics, check_image_matches_info
from ttt_kd_ros.msgs.cloud import cap_cloud, decode_cloud
from ttt_kd_ros.msgs.image import image_to_rgb
from ttt_kd_ros.msgs.pointcloud2 import labeled_cloud_to_pointcloud2
from ttt_kd_ros.msgs.stamps import header_stamp_ns, stamp_to_ns
from ttt_kd_ros.scan import IGNORE_LABEL, CameraView, Prediction, Scan

NO_TRANSFORM, BAD_CAMERA, FRAME_MISMATCH = "no_transform", "bad_camera", "frame_mismatch"
"""Why a camera was left out: its extrinsics are unknown, its Image / CameraInfo cannot be used, or its fixed
extrinsics are given in another frame than the cloud's."""


class FrameMismatchError(LookupError):
    """Fixed extrinsics given in one frame, a cloud in another: that camera is left out (FRAME_MISMATCH).

    WHY its own reason: a second LiDAR in another frame, or a driver renamed,
    would otherwise be projected with a transform meant for a different sensor.
    """

    reason = FRAME_MISMATCH


@dataclass(frozen=True)
class CloudHeader:
    """A cloud's header, read once: the message header itself (copied to the output), its stamp and frame."""

    header: Any
    stamp_ns: int
    frame_id: str


def read_cloud_header(msg: Any) -> CloudHeader:
    """The cloud's header with its stamp converted to integer ns; ValueError when the message has none."""
    header = getattr(msg, "header", None)
    if header is None:
        raise ValueError(f"{type(msg).__name__}: message has no header")
    return CloudHeader(header=header, stamp_ns=stamp_to_ns(header.stamp), frame_id=str(header.frame_id))


@dataclass(frozen=True)
class CameraMessages:
    """One camera's synchronized Image and CameraInfo, and its extrinsics when they are already known."""

    name: str
    image: Any
    info: Any
    cam_from_cloud: np.ndarray | None = None  # (4, 4) X_cam = T @ X_cloud; None: ask the Extrinsics callable
    stamp_ns: int | None = None  # the image stamp, when the caller already converted it


Extrinsics = Callable[[CameraMessages, CloudHeader], np.ndarray]
"""cam_from_cloud (4, 4) of a camera at the cloud's stamp and frame; raises LookupError when unknown."""


@dataclass(frozen=True)
class ScanPolicy:
    """What the one scan path keeps: point range, the input cap, how CameraInfo is read, the label set."""

    max_range_m: float | None = None
    min_range_m: float = 0.0  # 0 drops exact (0, 0, 0) "no return" points
    max_points: int = 0  # input cap: a larger cloud is thinned at random (input order kept); 0: none
    rectified_image: bool | None = None  # camera_info_to_intrinsics' choice; None decides from D
    label_set: str = ""  # the Scan's label set


@dataclass(frozen=True)
class LeftOut:
    """A camera that is not in the scan, and why (NO_TRANSFORM or BAD_CAMERA, with the error text)."""

    camera: str
    reason: str
    detail: str


@dataclass
class DecodedScan:
    """A Scan and what is needed to answer its cloud: the header, each point's row in the message."""

    scan: Scan
    header: CloudHeader
    source_index: np.ndarray  # (N,) int64: row of scan point i in the flattened (row-major) message
    num_input_points: int  # height * width of the message
    left_out: list[LeftOut] = field(default_factory=list)
    input_height: int = 1  # the message's height (rows of an organised cloud)


def camera_view(camera: CameraMessages, cam_from_cloud: np.ndarray, rectified_image: bool | None = None
                ) -> CameraView:
    """One camera's messages as a CameraView; ValueError (naming the problem) when they cannot be used."""
    check_image_matches_info(camera.image, camera.info)
    stamp_ns = header_stamp_ns(camera.image) if camera.stamp_ns is None else camera.stamp_ns
    return CameraView(image_rgb=image_to_rgb(camera.image),
                      intrinsics=camera_info_to_intrinsics(camera.info, rectified_image=rectified_image),
                      cam_from_cloud=cam_from_cloud, stamp_ns=stamp_ns, name=camera.name)


def _extrinsics_of(camera: CameraMessages, header: CloudHeader, extrinsics: Extrinsics | None) -> np.ndarray:
    if camera.cam_from_cloud is not None:
        return camera.cam_from_cloud
    if extrinsics is None:
        raise LookupError(f"camera {camera.name}: no cam_from_cloud given and no extrinsics source")
    return extrinsics(camera, header)


def scan_from_messages(
    cloud_msg: Any,
    cameras: Sequence[CameraMessages] = (),
    extrinsics: Extrinsics | None = None,
    policy: ScanPolicy = ScanPolicy(),
    rng: np.random.Generator | None = None,
    header: CloudHeader | None = None,
) -> DecodedScan:
    """Synchronized cloud + camera messages -> a Scan (see the module docstring for the rules).

    ValueError when the cloud cannot be decoded (the caller skips it);
    cameras that cannot be used are listed in ``left_out`` instead. ``rng``
    draws the input cap's subset (needed when the cloud exceeds
    ``policy.max_points``); ``header``: the cloud's header when the caller
    already read it.
    """
    header = read_cloud_header(cloud_msg) if header is None else header
    cloud = decode_cloud(cloud_msg, max_range_m=policy.max_range_m, min_range_m=policy.min_range_m)
    if policy.max_points and cloud.num_points > policy.max_points:
        if rng is None:
            raise ValueError(f"scan_from_messages: a cloud of {cloud.num_points} points exceeds "
                             f"ScanPolicy.max_points = {policy.max_points} but no rng was given to thin it")
        cloud = cap_cloud(cloud, policy.max_points, rng)
    views: list[CameraView] = []
    left_out: list[LeftOut] = []
    for camera in cameras:
        try:
            cam_from_cloud = _extrinsics_of(camera, header, extrinsics)
        except LookupError as exc:
            left_out.append(LeftOut(camera.name, getattr(exc, "reason", NO_TRANSFORM), str(exc)))
            continue
        try:
            views.append(camera_view(camera, cam_from_cloud, policy.rectified_image))
        except (ValueError, LookupError) as exc:
            left_out.append(LeftOut(camera.name, BAD_CAMERA, str(exc)))
    scan = Scan(points_xyz_m=cloud.xyz_m, intensity=cloud.intensity, rgb=cloud.rgb, cameras=views,
                labels=cloud.labels, stamp_ns=header.stamp_ns, frame_id=header.frame_id,
                label_set=policy.label_set)
    height = int(getattr(cloud_msg, "height", 1) or 1)
    return DecodedScan(scan=scan, header=header, source_index=cloud.source_index,
                       num_input_points=cloud.num_input_points, left_out=left_out,
                       input_height=height if cloud.num_input_points % height == 0 else 1)


def apply_min_confidence(labels: np.ndarray, confidence: np.ndarray, threshold: float) -> np.ndarray:
    """(N,) labels with IGNORE_LABEL where confidence < threshold (a copy only when something changes)."""
    if threshold <= 0:
        return labels
    low = confidence < threshold
    if not low.any():
        return labels
    return np.where(low, IGNORE_LABEL, labels)


def empty_prediction(reason: str) -> Prediction:
    """The Prediction of a scan with no point to segment (its cloud is still answered, with no points)."""
    return Prediction(labels=np.zeros(0, dtype=np.int64), confidence=np.zeros(0, dtype=np.float32),
                      skip_reason=reason)


def prediction_to_pointcloud2(decoded: DecodedScan, prediction: Prediction, label_set: LabelSet,
                              min_confidence: float = 0.0, organized: bool = False) -> Any:
    """The labeled output cloud: x, y, z, rgb (palette), confidence, label (uint16), fused (uint8), index (uint32),
    input header.

    ``index`` is each point's row in the input message (``source_index``);
    labels below ``min_confidence`` become the ignore label (65535).
    ``organized``: the input's height x width instead, point i at input row
    i; rows with no scan point (invalid or thinned on arrival) get NaN x/y/z,
    label 65535, confidence 0 and black.
    """
    if len(prediction.labels) != decoded.scan.num_points:
        raise ValueError(f"prediction: expected {decoded.scan.num_points} labels (one per scan point), "
                         f"got {len(prediction.labels)}")
    labels = apply_min_confidence(prediction.labels, prediction.confidence, min_confidence)
    colors = label_set.colorize(labels)
    if not organized:
        return labeled_cloud_to_pointcloud2(decoded.header.header, decoded.scan.points_xyz_m, labels,
                                            prediction.confidence, colors, decoded.source_index,
                                            fused=prediction.fused)
    n, rows = decoded.num_input_points, decoded.source_index
    xyz = np.full((n, 3), np.nan, dtype=np.float32)
    full_labels = np.full(n, IGNORE_LABEL, dtype=np.int64)
    confidence = np.zeros(n, dtype=np.float32)
    full_colors = np.zeros((n, 3), dtype=np.uint8)
    full_fused = np.zeros(n, dtype=bool)
    xyz[rows], full_labels[rows], confidence[rows], full_colors[rows] = (
        decoded.scan.points_xyz_m, labels, prediction.confidence, colors)
    if prediction.fused is not None:
        full_fused[rows] = prediction.fused
    return labeled_cloud_to_pointcloud2(decoded.header.header, xyz, full_labels, confidence, full_colors,
                                        height=decoded.input_height, fused=full_fused)
