"""Each camera's extrinsics (cam_from_cloud) at one cloud: from its parameters, in their own frame only, or from tf.

The node builds one ``CameraExtrinsics`` at configure and the worker hands
it to ``msgs.scan_messages.scan_from_messages`` as the ``Extrinsics``
callable, so the message layer asks this object, never the node, and the tf
lookups run on the worker thread (a slow lookup never delays a
subscription). A LookupError leaves that camera out of the scan with its
reason, never the whole scan; where tf comes from (tf2_ros or the node's own
buffer) is ``ros.compat.make_tf_lookup``'s choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ttt_kd_ros.msgs.scan_messages import CameraMessages, CloudHeader, FrameMismatchError
from ttt_kd_ros.msgs.transforms import invert_transform, pose_to_matrix
from ttt_kd_ros.parameters.table import CAMERA_EXTRINSICS, ParameterError
from ttt_kd_ros.ros.compat import make_tf_lookup, release_tf_lookup

if TYPE_CHECKING:  # ros.params imports extrinsics_from_numbers from here
    from ttt_kd_ros.ros.params import CameraParams, NodeParams


def extrinsics_from_numbers(camera: str, numbers: Sequence[float], parent_frame: str) -> np.ndarray:
    """cam_from_cloud from ``camera.<name>.extrinsics``: x y z qx qy qz qw, the camera's pose in ``parent_frame``.

    WHY inverted here: the parameter takes tf's (static_transform_publisher's)
    convention, cloud_from_cam, so numbers paste between the two unchanged;
    projection needs the inverse. ParameterError names the parameter.
    """
    name = f"camera.{camera}.{CAMERA_EXTRINSICS}"
    try:
        cloud_from_cam = pose_to_matrix(numbers, name=f"parameter {name}")
    except ValueError as exc:
        raise ParameterError(str(exc)) from exc
    if not parent_frame:
        raise ParameterError(f"parameter camera.{camera}.parent_frame: {name} is given, so the frame it is "
                             "given in (the cloud's header.frame_id) must be named too, got ''")
    return invert_transform(cloud_from_cam)


def lookup_within(tf: Any, target: str, source: str, stamp_ns: int, tolerance_s: float) -> np.ndarray:
    """(4, 4) target_from_source at ``stamp_ns``, else the latest one if stamped within ``tolerance_s`` of it.

    WHY the tolerance: a /tf publisher a few milliseconds behind the LiDAR
    leaves the cloud's own stamp just past the newest sample, which tf refuses
    to extrapolate to; the latest transform is then the right one. LookupError
    (the tf source's own reason, plus the gap when the latest is too far) otherwise.
    """
    matrix = tf.lookup(target, source, stamp_ns)
    if matrix is not None:
        return matrix
    why = tf.why_not(target, source, stamp_ns)
    latest = tf.lookup_latest(target, source) if tolerance_s > 0 else None
    if latest is not None:
        matrix, latest_ns = latest
        if latest_ns is None or abs(latest_ns - stamp_ns) <= tolerance_s * 1e9:
            return matrix
        why += f"; the latest transform is {abs(latest_ns - stamp_ns) / 1e9:.3f} s away (tf_tolerance_s {tolerance_s})"
    raise LookupError(f"no transform from {source!r} to {target!r} at {stamp_ns} ns: {why}")


class CameraExtrinsics:
    """The ``Extrinsics`` callable of the node's scans: cameras by name, the tf source (None: not followed)."""

    def __init__(self, cameras: Sequence[CameraParams], tf_tolerance_s: float, tf: Any = None,
                 tf_subscriptions: Sequence[Any] = ()) -> None:
        self._cameras = {cam.name: cam for cam in cameras}
        self._tolerance_s = tf_tolerance_s
        self.tf = tf  # compat.make_tf_lookup's object (lookup / lookup_latest / why_not), or None
        self._tf_subscriptions = list(tf_subscriptions)

    @classmethod
    def follow(cls, node: Any, params: NodeParams) -> CameraExtrinsics:
        """The extrinsics of ``params``' cameras, following tf on ``node`` when a camera has no parameters.

        ParameterError when a camera needs tf and tf cannot be followed here
        (neither tf2_ros nor a TFMessage type): configure fails naming it.
        """
        needs_tf = [cam.name for cam in params.cameras if cam.cam_from_cloud is None]
        if not needs_tf or params.cloud_only:
            return cls(params.cameras, params["tf_tolerance_s"])
        made = make_tf_lookup(node)
        if made is None:
            raise ParameterError(f"camera {needs_tf[0]} has no camera.{needs_tf[0]}.extrinsics parameter and neither "
                                 "tf2_ros nor tf2_msgs is importable here (no way to follow /tf); give the "
                                 "extrinsics as parameters")
        tf, subscriptions = made
        node.get_logger().info(f"extrinsics of {needs_tf} from tf ({tf.backend})")
        return cls(params.cameras, params["tf_tolerance_s"], tf, subscriptions)

    def release(self, node: Any) -> None:
        """Destroy what ``follow`` subscribed on ``node`` (lifecycle cleanup)."""
        release_tf_lookup(node, self.tf, self._tf_subscriptions)
        self.tf, self._tf_subscriptions = None, []

    def __call__(self, camera: CameraMessages, header: CloudHeader) -> np.ndarray:
        """cam_from_cloud of one camera for this cloud: the parameter (in its own frame only) or tf.

        LookupError (FrameMismatchError for a parameter given in another frame)
        leaves the camera out of this scan with the reason.
        """
        cam = self._cameras[camera.name]
        cloud_frame = header.frame_id.lstrip("/")
        if cam.cam_from_cloud is not None:
            if cloud_frame != cam.parent_frame.lstrip("/"):
                raise FrameMismatchError(
                    f"camera.{cam.name}.extrinsics are given in {cam.parent_frame!r} (camera.{cam.name}.parent_frame) "
                    f"but this cloud is in {header.frame_id!r}: not applied; publish the cloud in that frame or set "
                    "parent_frame (or drop the extrinsics and use tf)")
            return cam.cam_from_cloud
        camera_frame = (cam.frame_id or str(getattr(camera.image.header, "frame_id", ""))).lstrip("/")
        if not camera_frame:
            raise LookupError(f"camera {cam.name}: the Image header has no frame_id and camera.{cam.name}.frame_id "
                              "is unset, so there is no frame to look up in tf")
        if self.tf is None:
            raise LookupError(f"no transform from {header.frame_id!r} to {camera_frame!r}: tf is not followed here")
        return lookup_within(self.tf, camera_frame, cloud_frame, header.stamp_ns, self._tolerance_s)
