"""Readers for the point-cloud files real rigs and data sets ship.

Raw float32 ``.bin`` files (KITTI, nuScenes ``.pcd.bin``, mmdet3d's SUN RGB-D
export) carry no header, so the caller must know the number of fields per
point; the named readers fix it per format and check that the file size fits.
PCD files (PCL, ROS tools) carry their own header: ``read_pcd`` parses it and
returns named columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

KITTI_FIELDS = 4  # x, y, z, reflectance
NUSCENES_FIELDS = 5  # x, y, z, intensity, ring index
SUNRGBD_FIELDS = 6  # x, y, z (depth frame: x right, y forward, z up), r, g, b in [0, 1]


def read_float_bin(path: str | Path, num_fields: int) -> np.ndarray:
    """Headerless little-endian float32 file -> (N, num_fields) float32."""
    path = Path(path)
    raw = np.fromfile(path, dtype="<f4")
    if num_fields <= 0 or raw.size % num_fields != 0:
        raise ValueError(
            f"{path}: {raw.size} float32 values do not split into rows of {num_fields} fields "
            f"(wrong format or truncated file)"
        )
    return raw.reshape(-1, num_fields).astype(np.float32, copy=False)


def read_kitti_bin(path: str | Path) -> np.ndarray:
    """KITTI / SemanticKITTI velodyne scan -> (N, 4) float32 x, y, z, reflectance."""
    return read_float_bin(path, KITTI_FIELDS)


def read_nuscenes_bin(path: str | Path) -> np.ndarray:
    """nuScenes LIDAR_TOP ``.pcd.bin`` -> (N, 5) float32 x, y, z, intensity (0-255), ring."""
    return read_float_bin(path, NUSCENES_FIELDS)


def read_sunrgbd_bin(path: str | Path) -> np.ndarray:
    """mmdet3d SUN RGB-D export -> (N, 6) float32 x, y, z, r, g, b (colour in [0, 1])."""
    return read_float_bin(path, SUNRGBD_FIELDS)


_PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8",
              ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8"}


def read_pcd(path: str | Path) -> dict[str, np.ndarray]:
    """PCD v0.7 file (``DATA ascii`` or ``binary``) -> {field name: (N,) or (N, COUNT) array}.

    ``binary_compressed`` needs an LZF decoder this package does not ship; it
    raises with that reason rather than returning garbage.
    """
    path = Path(path)
    blob = path.read_bytes()
    header: dict[str, list[str]] = {}
    offset = 0
    while True:
        end = blob.find(b"\n", offset)
        if end < 0:
            raise ValueError(f"{path}: PCD header ends before its DATA line")
        line = blob[offset:end].decode("ascii", errors="replace").strip()
        offset = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        header[key.upper()] = values
        if key.upper() == "DATA":
            break
    for key in ("FIELDS", "SIZE", "TYPE", "POINTS"):
        if key not in header:
            raise ValueError(f"{path}: PCD header has no {key} line")
    names = header["FIELDS"]
    counts = [int(c) for c in header.get("COUNT", ["1"] * len(names))]
    sizes = [int(s) for s in header["SIZE"]]
    types = header["TYPE"]
    if not (len(names) == len(counts) == len(sizes) == len(types)):
        raise ValueError(f"{path}: PCD FIELDS/SIZE/TYPE/COUNT lengths differ: {names} {sizes} {types} {counts}")
    dtype_fields = []
    for name, size, kind, count in zip(names, sizes, types, counts, strict=True):
        code = _PCD_TYPES.get((kind.upper(), size))
        if code is None:
            raise ValueError(f"{path}: PCD field {name!r}: unsupported TYPE {kind} SIZE {size}")
        dtype_fields.append((name, "<" + code, (count,) if count > 1 else ()))
    num_points = int(header["POINTS"][0])
    data_kind = header["DATA"][0].lower()
    if data_kind == "ascii":
        columns = sum(counts)
        values = np.loadtxt(blob[offset:].decode("ascii").splitlines(), dtype=np.float64, ndmin=2)
        if values.shape != (num_points, columns) and not (num_points == 0 and values.size == 0):
            raise ValueError(f"{path}: PCD expected {num_points} rows of {columns} values, got {values.shape}")
        out: dict[str, np.ndarray] = {}
        col = 0
        for (name, code, shape), count in zip(dtype_fields, counts, strict=True):
            block = values[:, col:col + count].astype(code)
            out[name] = block if shape else block[:, 0]
            col += count
        return out
    if data_kind == "binary":
        dtype = np.dtype(dtype_fields)
        needed = num_points * dtype.itemsize
        if len(blob) - offset < needed:
            raise ValueError(f"{path}: PCD binary body has {len(blob) - offset} bytes, expected {needed}")
        records = np.frombuffer(blob, dtype=dtype, count=num_points, offset=offset)
        return {name: np.array(records[name]) for name in names}
    raise ValueError(f"{path}: PCD DATA {data_kind!r} is not supported (ascii and binary are)")


def pcd_xyz(fields: dict[str, np.ndarray], path: str | Path = "<pcd>") -> np.ndarray:
    """The x, y, z columns of ``read_pcd`` output -> (N, 3) float32."""
    missing = [name for name in ("x", "y", "z") if name not in fields]
    if missing:
        raise ValueError(f"{path}: PCD has no field(s) {missing}; fields are {list(fields)}")
    return np.stack([fields["x"], fields["y"], fields["z"]], axis=1).astype(np.float32)
