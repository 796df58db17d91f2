"""PointCloud2 / Image / CameraInfo <-> numpy, without copying what need not be copied.

Decoders are duck-typed on message attributes (``fields``, ``point_step``,
``data``, ``encoding`` ...), so the same code reads rclpy messages, messages
deserialised by the ``rosbags`` library (ROS 1 bags, rosbag2 mcap/sqlite3) and
hand-built test objects. A point cloud becomes a structured numpy dtype laid
over the message buffer (offsets, padding, itemsize = point_step, byte order),
as sensor_msgs_py does; nothing loops over points in Python.

Encoders import ``sensor_msgs`` lazily, inside the function, so this module
imports (and the decoders run) where no ROS message package is installed.
"""

from __future__ import annotations

import sys
from array import array as ByteArray
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ttt_kd_ros.scan import DISTORTION_MODELS, CameraIntrinsics

# sensor_msgs/PointField datatype constants -> numpy type codes (no byte order).
POINTFIELD_TYPES: dict[int, str] = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
_NUMPY_TO_POINTFIELD: dict[str, int] = {code: datatype for datatype, code in POINTFIELD_TYPES.items()}


def stamp_to_ns(stamp: Any) -> int:
    """ROS 2 ``builtin_interfaces/Time`` (sec, nanosec), ROS 1 (secs, nsecs) or rclpy Time -> integer ns.

    Stamps become integers once, here, so that comparisons and differences
    downstream are exact (floats lose nanoseconds beyond ~2^53 ns = 104 days).
    """
    if isinstance(stamp, (int, np.integer)):
        return int(stamp)
    if hasattr(stamp, "nanoseconds"):  # rclpy.time.Time
        return int(stamp.nanoseconds)
    if hasattr(stamp, "sec"):
        return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
    if hasattr(stamp, "secs"):
        return int(stamp.secs) * 1_000_000_000 + int(stamp.nsecs)
    raise ValueError(f"stamp: expected (sec, nanosec), (secs, nsecs) or nanoseconds, got {type(stamp).__name__}")


def header_stamp_ns(msg: Any) -> int:
    """``msg.header.stamp`` in integer nanoseconds."""
    header = getattr(msg, "header", None)
    if header is None:
        raise ValueError(f"{type(msg).__name__}: message has no header")
    return stamp_to_ns(header.stamp)


def _buffer_of(data: Any) -> np.ndarray:
    """The message's byte buffer as a uint8 array, zero-copy for bytes, array.array and numpy data.

    rclpy gives ``array.array('B')`` (or bytes right after assignment), rosbags
    gives a numpy uint8 array; a plain list (hand-built messages) is copied.
    """
    if isinstance(data, np.ndarray):
        return data.view(np.uint8).reshape(-1) if data.dtype != np.uint8 else data.reshape(-1)
    if isinstance(data, (list, tuple)):
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------------------------
# PointCloud2 decoding
# ----------------------------------------------------------------------------------------------------------------------


def pointcloud2_dtype(msg: Any, overrides: dict[str, str] | None = None) -> np.dtype:
    """Structured dtype for one point of ``msg``: field offsets, byte order, itemsize = point_step.

    ``overrides`` maps a field name to another numpy type code of the same
    size (e.g. ``{"rgb": "u4"}`` reads a packed float colour as its bits).
    Duplicate field names keep the first occurrence (some drivers repeat
    padding fields named "_").
    """
    order = ">" if msg.is_bigendian else "<"
    point_step = int(msg.point_step)
    names: list[str] = []
    formats: list[Any] = []
    offsets: list[int] = []
    for field in msg.fields:
        name = str(field.name)
        if name in names or name == "":
            continue
        code = POINTFIELD_TYPES.get(int(field.datatype))
        if code is None:
            raise ValueError(
                f"PointCloud2 field {name!r}: unsupported datatype {field.datatype} "
                f"(expected one of {sorted(POINTFIELD_TYPES)})"
            )
        if overrides and name in overrides:
            code = overrides[name]
        count = max(int(field.count), 1)
        base = np.dtype(order + code)
        offset = int(field.offset)
        if offset < 0 or offset + base.itemsize * count > point_step:
            raise ValueError(
                f"PointCloud2 field {name!r}: offset {offset} + {base.itemsize * count} bytes "
                f"exceeds point_step {point_step}"
            )
        names.append(name)
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})


def _check_cloud_layout(msg: Any, num_bytes: int) -> None:
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    if point_step <= 0 and height * width > 0:
        raise ValueError(f"PointCloud2: point_step must be positive, got {point_step}")
    if row_step < width * point_step:
        raise ValueError(
            f"PointCloud2: row_step {row_step} is smaller than width * point_step = {width} * {point_step}"
        )
    if num_bytes != row_step * height:
        raise ValueError(
            f"PointCloud2: data has {num_bytes} bytes, expected row_step * height = {row_step} * {height} "
            f"= {row_step * height}"
        )


def pointcloud2_to_structured(msg: Any, overrides: dict[str, str] | None = None) -> np.ndarray:
    """(height, width) structured array viewing ``msg.data`` (zero copy).

    Unorganised clouds have height 1. Rows padded beyond width * point_step
    are skipped through the row stride, so the view stays zero-copy; it is
    read-only whenever the message buffer is (bytes).
    """
    buf = _buffer_of(msg.data)
    _check_cloud_layout(msg, buf.size)
    dtype = pointcloud2_dtype(msg, overrides)
    height, width = int(msg.height), int(msg.width)
    if height * width == 0:
        return np.zeros((height, width), dtype=dtype)
    return np.ndarray(
        shape=(height, width), dtype=dtype, buffer=buf, offset=0, strides=(int(msg.row_step), int(msg.point_step))
    )


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


def _flat_field(cloud: np.ndarray, name: str) -> np.ndarray:
    """(H*W,) or (H*W, count) values of one field; a view when the rows are unpadded."""
    values = cloud[name]
    return values.reshape((-1, *values.shape[2:]))


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


def _field_names(msg: Any) -> set[str]:
    return {str(f.name) for f in msg.fields}


def _packed_rgb(msg: Any, name: str, keep: np.ndarray) -> np.ndarray:
    """Packed 0x00RRGGBB colour (float32 or uint32 field) -> (N, 3) float32 in [0, 1].

    The field is re-read as uint32 bits: converting a packed float by value
    would lose colours whose bit pattern is a NaN (alpha 255).
    """
    bits_cloud = pointcloud2_to_structured(msg, overrides={name: "u4"})
    bits = _flat_field(bits_cloud, name)[keep].astype(np.uint32)
    rgb = np.empty((len(bits), 3), dtype=np.float32)
    rgb[:, 0] = (bits >> 16) & 0xFF
    rgb[:, 1] = (bits >> 8) & 0xFF
    rgb[:, 2] = bits & 0xFF
    rgb /= np.float32(255.0)
    return rgb


def _channel_rgb(cloud: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Separate r, g, b fields (uint8 0-255 or float 0-1 / 0-255) -> (N, 3) float32 in [0, 1]."""
    channels = [_flat_field(cloud, c)[keep].astype(np.float32) for c in ("r", "g", "b")]
    rgb = np.stack(channels, axis=1)
    if rgb.size and (cloud.dtype["r"].kind in "iu" or float(rgb.max()) > 1.5):
        rgb /= np.float32(255.0)
    return np.clip(rgb, 0.0, 1.0)


def _packed_xyz_view(msg: Any, cloud: np.ndarray) -> np.ndarray | None:
    """(H*W, 3) float32 view straight over the buffer when x, y, z are adjacent native float32 (the usual layout).

    Saves building an intermediate copy of the three columns; None for any
    other layout (the caller then copies column by column).
    """
    fields = cloud.dtype.fields
    x, y, z = fields["x"], fields["y"], fields["z"]
    native = np.dtype(np.float32)
    if not (x[0] == y[0] == z[0] == native and y[1] == x[1] + 4 and z[1] == x[1] + 8):
        return None
    height, width = cloud.shape
    if height * width == 0 or int(msg.row_step) != width * int(msg.point_step):
        return None
    return np.ndarray(shape=(height * width, 3), dtype=native, buffer=_buffer_of(msg.data), offset=x[1],
                      strides=(int(msg.point_step), 4))


def pointcloud2_to_cloud(msg: Any, max_range_m: float | None = None, min_range_m: float = 0.0) -> CloudArrays:
    """Decode a PointCloud2 into the points the core can use.

    Points with a NaN/inf coordinate, a range above ``max_range_m`` or a range
    not above ``min_range_m`` are dropped; the default ``min_range_m = 0``
    drops exact (0, 0, 0) points, which Ouster and depth-camera drivers emit
    for "no return". Colour comes from a packed "rgb"/"rgba" field or from r,
    g, b fields; labels from a "label" field.
    """
    names = _field_names(msg)
    missing = [axis for axis in ("x", "y", "z") if axis not in names]
    if missing:
        raise ValueError(f"PointCloud2: missing coordinate field(s) {missing}; fields are {sorted(names)}")
    cloud = pointcloud2_to_structured(msg)
    num_input = cloud.size
    xyz = _packed_xyz_view(msg, cloud)
    if xyz is None:
        xyz = np.empty((num_input, 3), dtype=np.float32)
        for column, axis in enumerate(("x", "y", "z")):
            xyz[:, column] = _flat_field(cloud, axis)
    range_sq = np.einsum("ij,ij->i", xyz, xyz)
    keep = np.isfinite(range_sq)
    keep &= range_sq > np.float32(min_range_m) ** 2
    if max_range_m is not None:
        keep &= range_sq <= np.float32(max_range_m) ** 2
    index = np.flatnonzero(keep)
    xyz_kept = np.ascontiguousarray(xyz, dtype=np.float32) if len(index) == num_input else xyz[index]

    intensity = None
    if "intensity" in names:
        intensity = scale_intensity(_flat_field(cloud, "intensity")[index])
    rgb = None
    packed = next((n for n in ("rgb", "rgba") if n in names), None)
    if packed is not None:
        rgb = _packed_rgb(msg, packed, index)
    elif {"r", "g", "b"} <= names:
        rgb = _channel_rgb(cloud, index)
    labels = None
    if "label" in names:
        labels = _flat_field(cloud, "label")[index].astype(np.int64)
    header = getattr(msg, "header", None)
    return CloudArrays(
        xyz_m=xyz_kept,
        intensity=intensity,
        rgb=rgb,
        labels=labels,
        source_index=index.astype(np.int64),
        num_input_points=int(num_input),
        frame_id=str(header.frame_id) if header is not None else "",
        stamp_ns=stamp_to_ns(header.stamp) if header is not None else 0,
    )


# ----------------------------------------------------------------------------------------------------------------------
# PointCloud2 encoding
# ----------------------------------------------------------------------------------------------------------------------


def pack_rgb_float(colors_rgb: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 -> (N,) float32 whose bits are 0x00RRGGBB, the layout rviz2's RGB8 colour mode reads.

    Built bytewise in native order (B, G, R, 0 on little-endian machines) and
    reinterpreted, which avoids widening every channel to uint32.
    """
    colors = np.asarray(colors_rgb)
    if colors.ndim != 2 or colors.shape[1] != 3:
        raise ValueError(f"colors_rgb: expected (N, 3), got {colors.shape}")
    if colors.dtype != np.uint8:
        colors = np.clip(colors, 0, 255).astype(np.uint8)
    packed = np.zeros((len(colors), 4), dtype=np.uint8)
    if sys.byteorder == "little":
        packed[:, 2::-1] = colors
    else:
        packed[:, 1:] = colors
    return packed.view(np.float32).reshape(-1)


def _point_buffer(num_points: int, dtype: np.dtype) -> tuple[ByteArray, np.ndarray]:
    """A zeroed byte array for the message and a writable structured (N,) view of it.

    Filling the fields in place and assigning the array.array to msg.data
    skips two full copies (tobytes, then the setter's array('B', bytes)): the
    setter keeps an array.array as is.
    """
    data = ByteArray("B", b"\0") * (num_points * dtype.itemsize)
    return data, np.frombuffer(data, dtype=dtype, count=num_points)


def _new_pointcloud2(header: Any, dtype: np.dtype, num_points: int, data: ByteArray, is_dense: bool) -> Any:
    """PointCloud2 (height 1) whose fields mirror the structured ``dtype``, holding ``data``."""
    from sensor_msgs.msg import PointCloud2, PointField

    fields = []
    for name in dtype.names:
        sub, offset = dtype.fields[name][:2]
        base = sub.base if sub.shape else sub
        count = int(np.prod(sub.shape)) if sub.shape else 1
        datatype = _NUMPY_TO_POINTFIELD[base.str[1:]]
        fields.append(PointField(name=name, offset=int(offset), datatype=datatype, count=count))
    msg = PointCloud2()
    if header is not None:
        msg.header = header
    msg.height = 1
    msg.width = num_points
    msg.fields = fields
    msg.is_bigendian = sys.byteorder == "big"
    msg.point_step = dtype.itemsize
    msg.row_step = dtype.itemsize * num_points
    msg.is_dense = is_dense
    msg.data = data  # an array('B') is stored as is (bytes are copied, a memoryview is ~100x slower)
    return msg


def _check_rows(name: str, values: np.ndarray | None, n: int) -> None:
    if values is not None and len(values) != n:
        raise ValueError(f"{name}: expected {n} rows to match xyz, got {len(values)}")


LABELED_CLOUD_DTYPE = np.dtype(
    {
        "names": ["x", "y", "z", "rgb", "confidence", "label"],
        "formats": ["=f4", "=f4", "=f4", "=f4", "=f4", "=u2"],
        "offsets": [0, 4, 8, 12, 16, 20],
        "itemsize": 24,
    }
)
"""Labeled output point: x, y, z, rgb (packed float), confidence, label (uint16), 2 bytes padding."""


def labeled_cloud_to_pointcloud2(
    header: Any, xyz_m: np.ndarray, labels: np.ndarray, confidence: np.ndarray, colors_rgb: np.ndarray
) -> Any:
    """The segmentation result as a PointCloud2 rviz2 can colour by "rgb" or "label".

    xyz_m (N, 3) float, labels (N,) (values outside uint16 saturate to 65535,
    so IGNORE_LABEL = -1 reads 65535), confidence (N,) float, colors_rgb (N, 3)
    uint8. Dense (no NaNs), height 1.
    """
    xyz = np.asarray(xyz_m, dtype=np.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz_m: expected (N, 3), got {xyz.shape}")
    n = len(xyz)
    for name, values in (("labels", labels), ("confidence", confidence), ("colors_rgb", colors_rgb)):
        _check_rows(name, values, n)
    data, out = _point_buffer(n, LABELED_CLOUD_DTYPE)
    out["x"], out["y"], out["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    out["rgb"] = pack_rgb_float(colors_rgb)
    out["confidence"] = np.asarray(confidence, dtype=np.float32)
    label_values = np.asarray(labels, dtype=np.int64)
    out["label"] = np.where((label_values < 0) | (label_values > 65535), 65535, label_values)
    return _new_pointcloud2(header, LABELED_CLOUD_DTYPE, n, data, is_dense=True)


def cloud_to_pointcloud2(
    header: Any,
    xyz: np.ndarray,
    intensity: np.ndarray | None = None,
    rgb: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> Any:
    """PointCloud2 with x, y, z [, intensity] [, rgb packed] [, label uint16] for tests and bag writing.

    ``rgb`` may be (N, 3) uint8 or float in [0, 1]. NaN coordinates are kept
    (is_dense is then False), as a sensor driver would send them.
    """
    xyz = np.asarray(xyz, dtype=np.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz: expected (N, 3), got {xyz.shape}")
    n = len(xyz)
    names, formats = ["x", "y", "z"], ["=f4", "=f4", "=f4"]
    for name, values in (("intensity", intensity), ("rgb", rgb), ("label", labels)):
        _check_rows(name, values, n)
        if values is not None:
            names.append(name)
            formats.append("=u2" if name == "label" else "=f4")
    dtype = np.dtype({"names": names, "formats": formats}, align=True)  # point_step % 4 == 0
    data, out = _point_buffer(n, dtype)
    out["x"], out["y"], out["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if intensity is not None:
        out["intensity"] = np.asarray(intensity, dtype=np.float32)
    if rgb is not None:
        colors = np.asarray(rgb)
        if colors.dtype != np.uint8:
            colors = np.clip(np.rint(colors.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
        out["rgb"] = pack_rgb_float(colors)
    if labels is not None:
        out["label"] = np.asarray(labels).astype(np.uint16)
    return _new_pointcloud2(header, dtype, n, data, is_dense=bool(np.isfinite(xyz).all()))


# ----------------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------------

# encoding -> (channels, numpy type code of one channel)
IMAGE_ENCODINGS: dict[str, tuple[int, str]] = {
    "rgb8": (3, "u1"),
    "bgr8": (3, "u1"),
    "rgba8": (4, "u1"),
    "bgra8": (4, "u1"),
    "mono8": (1, "u1"),
    "8UC1": (1, "u1"),
    "mono16": (1, "u2"),
    "16UC1": (1, "u2"),
    "32FC1": (1, "f4"),
}
RGB_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16")
DEPTH_ENCODINGS = ("16UC1", "32FC1")


def _image_pixels(msg: Any, allowed: Sequence[str]) -> np.ndarray:
    """(H, W, C) view of the image rows (row padding removed through strides), native byte order."""
    encoding = str(msg.encoding)
    if encoding not in allowed:
        raise ValueError(f"Image encoding: expected one of {list(allowed)}, got {encoding!r}")
    channels, code = IMAGE_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    dtype = np.dtype((">" if msg.is_bigendian else "<") + code)
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ValueError(f"Image ({encoding}): step {step} is smaller than width * pixel size = {row_bytes}")
    buf = _buffer_of(msg.data)
    if buf.size != step * height:
        raise ValueError(
            f"Image ({encoding}): data has {buf.size} bytes, expected step * height = {step} * {height} = "
            f"{step * height}"
        )
    if height * width == 0:
        raise ValueError(f"Image ({encoding}): empty image {width}x{height}")
    pixels = np.ndarray(
        shape=(height, width, channels),
        dtype=dtype,
        buffer=buf,
        strides=(step, channels * dtype.itemsize, dtype.itemsize),
    )
    return pixels


def image_to_rgb(msg: Any) -> np.ndarray:
    """Colour or grey Image -> (H, W, 3) uint8 RGB (a new, writable array).

    mono16 keeps its high byte (value >> 8), i.e. it is scaled from 0-65535
    to 0-255 linearly.
    """
    pixels = _image_pixels(msg, RGB_ENCODINGS)
    encoding = str(msg.encoding)
    if encoding == "mono16":
        grey = (pixels[..., 0] >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if encoding == "mono8":
        return np.repeat(pixels[..., :1], 3, axis=2)
    if encoding.startswith("bgr"):
        return np.ascontiguousarray(pixels[..., 2::-1])
    return np.array(pixels[..., :3], dtype=np.uint8, order="C")


def image_to_depth_m(msg: Any) -> np.ndarray:
    """Depth Image -> (H, W) float32 metres; 0.0 where the sensor has no depth.

    16UC1 is millimetres (the REP 118 integer form), 32FC1 is metres; NaN and
    inf in 32FC1 become 0.0 so every consumer tests one sentinel.
    """
    pixels = _image_pixels(msg, DEPTH_ENCODINGS)[..., 0]
    if str(msg.encoding) == "16UC1":
        return pixels.astype(np.float32) * np.float32(0.001)
    depth = pixels.astype(np.float32)
    depth[~np.isfinite(depth)] = 0.0
    return depth


def _new_image(header: Any, pixels: np.ndarray, encoding: str, row_padding_bytes: int, big_endian: bool) -> Any:
    from sensor_msgs.msg import Image

    height, width = pixels.shape[:2]
    order = ">" if big_endian else "<"
    pixels = pixels.astype(pixels.dtype.newbyteorder(order), copy=False)
    rows = np.ascontiguousarray(pixels).reshape(height, -1).view(np.uint8)
    if row_padding_bytes:
        rows = np.concatenate([rows, np.zeros((height, row_padding_bytes), dtype=np.uint8)], axis=1)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = height, width
    msg.encoding = encoding
    msg.is_bigendian = int(big_endian)
    msg.step = rows.shape[1]
    msg.data = rows.tobytes()
    return msg


def rgb_to_image(
    rgb: np.ndarray, encoding: str = "rgb8", header: Any = None, row_padding_bytes: int = 0, big_endian: bool = False
) -> Any:
    """(H, W, 3) uint8 RGB -> Image in any of RGB_ENCODINGS (grey = channel mean; mono16 = grey * 257)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb: expected (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    if encoding not in RGB_ENCODINGS:
        raise ValueError(f"encoding: expected one of {list(RGB_ENCODINGS)}, got {encoding!r}")
    if encoding in ("mono8", "mono16"):
        grey = np.round(rgb.astype(np.float32).mean(axis=2, keepdims=True)).astype(np.uint8)
        pixels = grey if encoding == "mono8" else grey.astype(np.uint16) * np.uint16(257)
    else:
        pixels = rgb[..., ::-1] if encoding.startswith("bgr") else rgb
        if encoding.endswith("a8"):
            pixels = np.concatenate([pixels, np.full((*rgb.shape[:2], 1), 255, dtype=np.uint8)], axis=2)
    return _new_image(header, pixels, encoding, row_padding_bytes, big_endian)


def depth_to_image(
    depth_m: np.ndarray,
    encoding: str = "32FC1",
    header: Any = None,
    row_padding_bytes: int = 0,
    big_endian: bool = False,
) -> Any:
    """(H, W) metres -> 32FC1 (metres) or 16UC1 (millimetres, rounded, clipped to 0-65535) Image."""
    depth = np.asarray(depth_m, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth_m: expected (H, W), got {depth.shape}")
    if encoding == "32FC1":
        pixels = depth
    elif encoding == "16UC1":
        pixels = np.clip(np.rint(np.nan_to_num(depth) * 1000.0), 0, 65535).astype(np.uint16)
    else:
        raise ValueError(f"encoding: expected one of {list(DEPTH_ENCODINGS)}, got {encoding!r}")
    return _new_image(header, pixels[..., None], encoding, row_padding_bytes, big_endian)


# ----------------------------------------------------------------------------------------------------------------------
# CameraInfo
# ----------------------------------------------------------------------------------------------------------------------


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
