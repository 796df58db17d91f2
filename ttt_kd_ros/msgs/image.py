"""Image <-> numpy: colour and depth images as (H, W, 3) uint8 RGB or (H, W) float32 metres.

Rows are read through their stride (row padding skipped), the byte order
comes from the message, and the encodings this package accepts are listed
once (IMAGE_ENCODINGS); anything else is a ValueError naming the encoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ttt_kd_ros.msgs.buffer import message_bytes

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
    buf = message_bytes(msg.data)
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
