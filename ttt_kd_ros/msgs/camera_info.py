"""CameraInfo <-> CameraIntrinsics, and the size check between an Image and its CameraInfo."""

from __future__ import annotations

from typing import Any

import numpy as np

from ttt_kd_ros.scan import DISTORTION_MODELS, CameraIntrinsics


def _info_array(msg: Any, name: str) -> np.ndarray:
    """CameraInfo matrix by its ROS 2 (lower-case) or ROS 1 (upper-case) name."""
    value = getattr(msg, name.lower(), None)
    if value is None:
        value = getattr(msg, name.upper(), None)
    if value is None:
        raise ValueError(f"CameraInfo: no field {name.lower()!r} / {name.upper()!r}")
    return np.asarray(value, dtype=np.float64).reshape(-1)


def _is_plain_pinhole(K: np.ndarray, R: np.ndarray, P: np.ndarray) -> bool:
    return bool(np.allclose(R, np.eye(3)) and np.allclose(P[:, :3], K) and not np.any(P[:, 3]))


def _check_finite(msg: Any) -> None:
    """ValueError naming the first CameraInfo matrix (k, d, r, p) holding a NaN or an infinity.

    WHY: a NaN in K or P passes every other check and projects every point to
    NaN pixels, so the camera would count as a view that sees nothing; it is
    refused like an all-zero K instead, and the node leaves the camera out
    with a line saying why.
    """
    for name in ("k", "d", "r", "p"):
        values = _info_array(msg, name)
        if not np.isfinite(values).all():
            raise ValueError(f"CameraInfo {name}: expected finite numbers, got {values.tolist()}")


def camera_info_to_intrinsics(msg: Any, rectified_image: bool | None = None) -> CameraIntrinsics:
    """CameraInfo -> CameraIntrinsics.

    Which camera model applies depends on the image topic, which CameraInfo
    does not say: on a rectified image (image_rect, KITTI) pixels are P @ R @ X,
    on a raw image they are K with distortion D. ``rectified_image`` says which;
    None decides from D: an all-zero D means the image carries no distortion,
    so P and R are used (this is how KITTI bags publish P2 and R0_rect).
    An all-zero D also maps any model name to "none".
    """
    K = _info_array(msg, "k")
    if K.size != 9 or not np.any(K):
        raise ValueError(f"CameraInfo k: expected a non-zero 3x3 matrix, got {K.tolist()}")
    D = _info_array(msg, "d")
    _check_finite(msg)
    model = str(msg.distortion_model)
    if not np.any(D):
        model = "none"
        D = np.zeros(0)
    elif model not in DISTORTION_MODELS or model == "none":
        raise ValueError(
            f"CameraInfo distortion_model: expected one of {list(DISTORTION_MODELS[1:])} with D = {D.tolist()}, "
            f"got {model!r}"
        )
    R = _info_array(msg, "r")
    P = _info_array(msg, "p")
    use_rectified = (model == "none") if rectified_image is None else rectified_image
    has_p = P.size == 12 and bool(np.any(P))
    has_r = R.size == 9 and bool(np.any(R))
    plain = has_p and has_r and _is_plain_pinhole(K.reshape(3, 3), R.reshape(3, 3), P.reshape(3, 4))
    if rectified_image is None and plain:
        has_p = has_r = False  # P = [K | 0], R = I says nothing K does not: keep the simpler model
    return CameraIntrinsics(
        K=K.reshape(3, 3),
        width_px=int(msg.width),
        height_px=int(msg.height),
        distortion_model=model,
        D=D,
        rectification=R.reshape(3, 3) if (use_rectified and has_p and has_r) else None,
        projection=P.reshape(3, 4) if (use_rectified and has_p) else None,
    )


def intrinsics_to_camera_info(intr: CameraIntrinsics, header: Any = None) -> Any:
    """CameraIntrinsics -> CameraInfo; "none" is written as plumb_bob with five zeros (what drivers send)."""
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo()
    if header is not None:
        msg.header = header
    msg.width, msg.height = int(intr.width_px), int(intr.height_px)
    if intr.distortion_model == "none":
        msg.distortion_model = "plumb_bob"
        msg.d = [0.0] * 5
    else:
        msg.distortion_model = intr.distortion_model
        msg.d = [float(v) for v in intr.D]
    msg.k = intr.K.reshape(-1).astype(np.float64)
    R = np.eye(3) if intr.rectification is None else intr.rectification
    msg.r = np.asarray(R, dtype=np.float64).reshape(-1)
    P = np.hstack([intr.K, np.zeros((3, 1))]) if intr.projection is None else intr.projection
    msg.p = np.asarray(P, dtype=np.float64).reshape(-1)
    return msg


def check_image_matches_info(image_msg: Any, info_msg: Any) -> None:
    """ValueError when an Image and its CameraInfo disagree on size (a swapped or resized topic)."""
    image_size = (int(image_msg.width), int(image_msg.height))
    info_size = (int(info_msg.width), int(info_msg.height))
    if image_size != info_size:
        frame = getattr(getattr(image_msg, "header", None), "frame_id", "")
        raise ValueError(
            f"camera {frame!r}: image is {image_size[0]}x{image_size[1]} but CameraInfo says "
            f"{info_size[0]}x{info_size[1]}"
        )
