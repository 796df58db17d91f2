"""Header stamps -> integer nanoseconds: converted once, at the boundary, then compared exactly."""

from __future__ import annotations

from typing import Any

import numpy as np


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


def ns_to_sec_nanosec(stamp_ns: int) -> tuple[int, int]:
    """Integer ns -> (sec, nanosec) as builtin_interfaces/Time holds them (nanosec always in [0, 1e9))."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return sec, nanosec
