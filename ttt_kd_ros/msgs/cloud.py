"""Which decoded points the core gets and how their values are scaled: the policy over ``msgs.pointcloud2``.

Decoding (``pointcloud2.read_xyz`` / ``read_points``) returns every point
as the sensor sent it; this module decides: points with a NaN/inf coordinate
or out of range are dropped (``valid_points``), intensity is scaled to [0, 1]
by a fixed tier (``scale_intensity``), colour fields become floats in [0, 1],
and a cloud above a point budget is thinned at random (``cap_cloud``). Every
kept row remembers its ``source_index`` in the message.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ttt_kd_ros.msgs.pointcloud2 import field_names, pointcloud2_to_structured, read_xyz, unpack_rgb
from ttt_kd_ros.msgs.stamps import stamp_to_ns


@dataclass
class CloudArrays:
    """The finite, in-range points of one PointCloud2, as the core wants them.

    ``source_index`` says which point of the flattened (row-major, height *
    width) message each row came from, so per-point outputs can be written back
    into an organised layout.
    """

    xyz_m: np.ndarray  # (N, 3) float32
    intensity: np.ndarray | None  # (N,) float32 in ~[0, 1]
    rgb: np.ndarray | None  # (N, 3) float32 in [0, 1]
    labels: np.ndarray | None  # (N,) int64
    source_index: np.ndarray  # (N,) int64
    num_input_points: int
    frame_id: str = ""
    stamp_ns: int = 0

    @property
    def num_points(self) -> int:
        return len(self.xyz_m)


def valid_points(xyz: np.ndarray, max_range_m: float | None = None, min_range_m: float = 0.0) -> np.ndarray:
    """(N,) bool: finite coordinates with min_range_m < range <= max_range_m.

    The default ``min_range_m = 0`` drops exact (0, 0, 0) points, which Ouster
    and depth-camera drivers emit for "no return".
    """
    range_sq = np.einsum("ij,ij->i", xyz, xyz)
    keep = np.isfinite(range_sq)
    keep &= range_sq > np.float32(min_range_m) ** 2
    if max_range_m is not None:
        keep &= range_sq <= np.float32(max_range_m) ** 2
    return keep


def scale_intensity(values: np.ndarray) -> np.ndarray:
    """Sensor intensity -> float32 in [0, 1], with a divisor chosen from the scan's value range.

    Drivers disagree: KITTI/Velodyne floats are 0-1 (Luminar's reach 2 on a
    few returns), many drivers send 0-255, Ouster sends 16-bit counts. The
    tier is picked from the 99th percentile (robust to a few outliers,
    estimated on every 16th point): up to 1.5 the values are kept, up to 255
    they are divided by 255, above by 65535; the result is clipped to [0, 1].
    The divisors are fixed (not per-scan min/max) so one sensor maps the same
    way from scan to scan.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.size == 0:
        return values
    sample = values[:: 16 if values.size >= 1024 else 1]
    finite = sample[np.isfinite(sample)]
    level = float(np.percentile(finite, 99)) if finite.size else 0.0
    if level > 255.0:
        values = values / np.float32(65535.0)
    elif level > 1.5:
        values = values / np.float32(255.0)
    return np.clip(values, 0.0, 1.0, out=np.empty_like(values))


def _flat_field(cloud: np.ndarray, name: str) -> np.ndarray:
    """(H*W,) or (H*W, count) values of one field; a view when the rows are unpadded."""
    values = cloud[name]
    return values.reshape((-1, *values.shape[2:]))


def _packed_rgb(cloud: np.ndarray, name: str, keep: np.ndarray) -> np.ndarray:
    """Packed 0x00RRGGBB colour (float32 or uint32 field) -> (N, 3) float32 in [0, 1].

    The field's bytes are reinterpreted as uint32 (same byte order, no copy):
    converting a packed float by value would lose colours whose bit pattern is
    a NaN (alpha 255).
    """
    values = _flat_field(cloud, name)
    if values.dtype.itemsize != 4:
        raise ValueError(f"PointCloud2: packed colour field {name!r} must be 4 bytes, got {values.dtype}")
    bits = values.view(np.dtype(np.uint32).newbyteorder(values.dtype.byteorder))[keep]
    rgb = unpack_rgb(bits).astype(np.float32)
    rgb /= np.float32(255.0)
    return rgb


def _channel_rgb(cloud: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Separate r, g, b fields (uint8 0-255 or float 0-1 / 0-255) -> (N, 3) float32 in [0, 1]."""
    channels = [_flat_field(cloud, c)[keep].astype(np.float32) for c in ("r", "g", "b")]
    rgb = np.stack(channels, axis=1)
    if rgb.size and (cloud.dtype["r"].kind in "iu" or float(rgb.max()) > 1.5):
        rgb /= np.float32(255.0)
    return np.clip(rgb, 0.0, 1.0)


def pointcloud2_to_cloud(msg: Any, max_range_m: float | None = None, min_range_m: float = 0.0) -> CloudArrays:
    """``decode_cloud`` plus the message's frame_id and stamp (for callers that have not read the header)."""
    cloud = decode_cloud(msg, max_range_m, min_range_m)
    header = getattr(msg, "header", None)
    if header is not None:
        cloud.frame_id, cloud.stamp_ns = str(header.frame_id), stamp_to_ns(header.stamp)
    return cloud


def decode_cloud(msg: Any, max_range_m: float | None = None, min_range_m: float = 0.0) -> CloudArrays:
    """Decode a PointCloud2 into the points the core can use (see ``valid_points`` for which are kept).

    Colour comes from a packed "rgb"/"rgba" field or from r, g, b fields;
    labels from a "label" field; intensity is scaled by ``scale_intensity``.
    The header is not read (frame_id "" and stamp 0): the scan path reads it
    once, before decoding.
    """
    cloud = pointcloud2_to_structured(msg)  # the one structured view every field is read from
    xyz = read_xyz(msg, cloud)
    names = field_names(msg)
    num_input = cloud.size
    index = np.flatnonzero(valid_points(xyz, max_range_m, min_range_m))
    xyz_kept = np.ascontiguousarray(xyz, dtype=np.float32) if len(index) == num_input else xyz[index]

    intensity = None
    if "intensity" in names:
        intensity = scale_intensity(_flat_field(cloud, "intensity")[index])
    rgb = None
    packed = next((n for n in ("rgb", "rgba") if n in names), None)
    if packed is not None:
        rgb = _packed_rgb(cloud, packed, index)
    elif {"r", "g", "b"} <= names:
        rgb = _channel_rgb(cloud, index)
    labels = None
    if "label" in names:
        labels = _flat_field(cloud, "label")[index].astype(np.int64)
    return CloudArrays(xyz_m=xyz_kept, intensity=intensity, rgb=rgb, labels=labels,
                       source_index=index.astype(np.int64), num_input_points=int(num_input))


def cap_cloud(cloud: CloudArrays, max_points: int, rng: np.random.Generator) -> CloudArrays:
    """A random subset of ``max_points`` points (input order and source_index kept) when the cloud is larger.

    The input cap: what the node keeps of a huge cloud (memory, latency and
    output size stay bounded). ``max_points`` 0 keeps every point.
    """
    n = len(cloud.xyz_m)
    if max_points <= 0 or n <= max_points:
        return cloud
    keep = np.sort(rng.choice(n, size=max_points, replace=False))
    return replace(
        cloud,
        xyz_m=cloud.xyz_m[keep],
        intensity=None if cloud.intensity is None else cloud.intensity[keep],
        rgb=None if cloud.rgb is None else cloud.rgb[keep],
        labels=None if cloud.labels is None else cloud.labels[keep],
        source_index=cloud.source_index[keep],
    )
