"""PointCloud2 <-> numpy: a structured dtype laid over the message buffer, and the encoders back.

Decoding only: which points to keep, how to scale intensity or colour and how
many points to keep are policy, in ``msgs.cloud``. As sensor_msgs_py's
read_points does, the caller picks ``field_names``; the dtype carries offsets,
padding, itemsize = point_step and the byte order, so nothing is swapped or
copied and nothing loops over points in Python.
"""

from __future__ import annotations

import sys
from array import array as ByteArray
from collections.abc import Sequence
from typing import Any

import numpy as np

from ttt_kd_ros.msgs.buffer import message_bytes

# sensor_msgs/PointField datatype constants -> numpy type codes (no byte order).
POINTFIELD_TYPES: dict[int, str] = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
_NUMPY_TO_POINTFIELD: dict[str, int] = {code: datatype for datatype, code in POINTFIELD_TYPES.items()}
XYZ = ("x", "y", "z")

# ----------------------------------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------------------------------


def field_names(msg: Any) -> set[str]:
    """Names of the fields a PointCloud2 declares."""
    return {str(f.name) for f in msg.fields}


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
    buf = message_bytes(msg.data)
    _check_cloud_layout(msg, buf.size)
    dtype = pointcloud2_dtype(msg, overrides)
    height, width = int(msg.height), int(msg.width)
    if height * width == 0:
        return np.zeros((height, width), dtype=dtype)
    return np.ndarray(
        shape=(height, width), dtype=dtype, buffer=buf, offset=0, strides=(int(msg.row_step), int(msg.point_step))
    )


def read_points(msg: Any, field_names: Sequence[str] | None = None,
                overrides: dict[str, str] | None = None) -> np.ndarray:
    """(height * width,) structured array of the chosen fields, row-major, every point (NaNs included).

    A view over the message buffer when its rows are unpadded (a copy
    otherwise). ``field_names`` None keeps every field; a name the message
    does not declare is a ValueError naming the fields it has.
    """
    cloud = pointcloud2_to_structured(msg, overrides)
    if field_names is not None:
        missing = [name for name in field_names if name not in cloud.dtype.names]
        if missing:
            raise ValueError(f"PointCloud2: missing field(s) {missing}; fields are {sorted(cloud.dtype.names)}")
        cloud = cloud[list(field_names)]
    return cloud.reshape(-1)


def read_xyz(msg: Any, cloud: np.ndarray | None = None) -> np.ndarray:
    """(height * width, 3) float32 coordinates of every point, NaNs included.

    A view straight over the buffer when x, y, z are adjacent native float32
    in unpadded rows (the usual driver layout); a copy column by column for
    any other layout. ValueError naming the fields when a coordinate is missing.
    ``cloud``: the message's structured view when the caller already has it
    (decode_cloud builds one view per message and reads every field from it).
    """
    names = field_names(msg)
    missing = [axis for axis in XYZ if axis not in names]
    if missing:
        raise ValueError(f"PointCloud2: missing coordinate field(s) {missing}; fields are {sorted(names)}")
    if cloud is None:
        cloud = pointcloud2_to_structured(msg)
    packed = _packed_xyz_view(msg, cloud)
    if packed is not None:
        return packed
    flat = cloud.reshape(-1)
    xyz = np.empty((flat.size, 3), dtype=np.float32)
    for column, axis in enumerate(XYZ):
        xyz[:, column] = flat[axis]
    return xyz


def _packed_xyz_view(msg: Any, cloud: np.ndarray) -> np.ndarray | None:
    """(H*W, 3) float32 view over the buffer when x, y, z are adjacent native float32; None for other layouts."""
    fields = cloud.dtype.fields
    x, y, z = fields["x"], fields["y"], fields["z"]
    native = np.dtype(np.float32)
    if not (x[0] == y[0] == z[0] == native and y[1] == x[1] + 4 and z[1] == x[1] + 8):
        return None
    height, width = cloud.shape
    if height * width == 0 or int(msg.row_step) != width * int(msg.point_step):
        return None
    return np.ndarray(shape=(height * width, 3), dtype=native, buffer=message_bytes(msg.data), offset=x[1],
                      strides=(int(msg.point_step), 4))


def unpack_rgb(bits: np.ndarray) -> np.ndarray:
    """Packed 0x00RRGGBB colours (N,) uint32 -> (N, 3) uint8."""
    bits = np.asarray(bits, dtype=np.uint32)
    rgb = np.empty((len(bits), 3), dtype=np.uint8)
    rgb[:, 0] = (bits >> 16) & 0xFF
    rgb[:, 1] = (bits >> 8) & 0xFF
    rgb[:, 2] = bits & 0xFF
    return rgb


# ----------------------------------------------------------------------------------------------------------------------
# encoding
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


def _new_pointcloud2(header: Any, dtype: np.dtype, num_points: int, data: ByteArray, is_dense: bool,
                     height: int = 1) -> Any:
    """PointCloud2 (``height`` rows of num_points / height) whose fields mirror the structured ``dtype``."""
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
    msg.height = height
    msg.width = num_points // height if height else 0
    msg.fields = fields
    msg.is_bigendian = sys.byteorder == "big"
    msg.point_step = dtype.itemsize
    msg.row_step = dtype.itemsize * msg.width
    msg.is_dense = is_dense
    msg.data = data  # an array('B') is stored as is (bytes are copied, a memoryview is ~100x slower)
    return msg


def _check_rows(name: str, values: np.ndarray | None, n: int) -> None:
    if values is not None and len(values) != n:
        raise ValueError(f"{name}: expected {n} rows to match xyz, got {len(values)}")


LABELED_CLOUD_DTYPE = np.dtype(
    {
        "names": ["x", "y", "z", "rgb", "confidence", "label", "fused", "index"],
        "formats": ["=f4", "=f4", "=f4", "=f4", "=f4", "=u2", "=u1", "=u4"],
        "offsets": [0, 4, 8, 12, 16, 20, 22, 24],
        "itemsize": 28,
    }
)
"""Labeled output point: x, y, z, rgb (packed float), confidence, label (uint16), fused (uint8), 1 byte padding,
index (uint32).

``fused`` is 1 where the label combines the 3D network's and the teacher's prediction (a camera sees the point and
fusion is on), 0 where it is the 3D network's alone; it sits in what was padding, so the point stays 28 bytes.

``index`` is the point's row in the input cloud's flattened (row-major,
height * width) data, so a consumer maps every output point back to its
input point (and its ground truth) without matching coordinates.
"""


def labeled_cloud_to_pointcloud2(
    header: Any, xyz_m: np.ndarray, labels: np.ndarray, confidence: np.ndarray, colors_rgb: np.ndarray,
    source_index: np.ndarray | None = None, height: int = 1, fused: np.ndarray | None = None,
) -> Any:
    """The segmentation result as a PointCloud2 rviz2 can colour by "rgb" or "label".

    fused (N,) bool: which labels fuse the teacher's prediction (None: none).

    xyz_m (N, 3) float, labels (N,) (values outside uint16 saturate to 65535,
    so IGNORE_LABEL = -1 reads 65535), confidence (N,) float, colors_rgb (N, 3)
    uint8, source_index (N,) input rows (None: 0..N-1, the output is the input
    point for point). ``height`` 1: dense (finite points only); more: an
    organised cloud of height x N / height points, NaN where there is none.
    """
    xyz = np.asarray(xyz_m, dtype=np.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz_m: expected (N, 3), got {xyz.shape}")
    n = len(xyz)
    for name, values in (("labels", labels), ("confidence", confidence), ("colors_rgb", colors_rgb),
                         ("source_index", source_index), ("fused", fused)):
        _check_rows(name, values, n)
    data, out = _point_buffer(n, LABELED_CLOUD_DTYPE)
    out["x"], out["y"], out["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    out["rgb"] = pack_rgb_float(colors_rgb)
    out["confidence"] = np.asarray(confidence, dtype=np.float32)
    label_values = np.asarray(labels, dtype=np.int64)
    out["label"] = np.where((label_values < 0) | (label_values > 65535), 65535, label_values)
    out["index"] = np.arange(n, dtype=np.uint32) if source_index is None else source_index
    out["fused"] = 0 if fused is None else np.asarray(fused, dtype=np.uint8)
    if height < 1 or n % height:
        raise ValueError(f"height: expected a divisor of the {n} points, got {height}")
    return _new_pointcloud2(header, LABELED_CLOUD_DTYPE, n, data, is_dense=bool(np.isfinite(xyz).all()),
                            height=height)


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
