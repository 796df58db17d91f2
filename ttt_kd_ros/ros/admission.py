"""Whether the node takes an arriving cloud at all: its stamp against the clock, and whether anyone reads the output.

Pure functions of numbers the node reads (no rclpy), so the scan's path leaves the node once at the cloud
callback and comes back once in the worker, and the rules are testable without DDS.
"""

from __future__ import annotations

from typing import Any

STAMP_TOO_OLD = "stamp_too_old"
STAMP_IN_FUTURE = "stamp_in_future"
NO_SUBSCRIBER = "no_subscriber"


def stamp_refusal(stamp_ns: int, now_ns: int, max_age_s: float, max_future_s: float) -> str:
    """"stamp_too_old" / "stamp_in_future" when the stamp is that far from the clock (a limit of 0 is off), else "".

    WHY: a cloud from a replayed bag with the wrong clock, or one delayed in a queue, would be segmented against
    images and tf of another moment; the node counts it as skipped instead.
    """
    if max_age_s > 0 and now_ns - stamp_ns > max_age_s * 1e9:
        return STAMP_TOO_OLD
    if max_future_s > 0 and stamp_ns - now_ns > max_future_s * 1e9:
        return STAMP_IN_FUTURE
    return ""


def output_refusal(skip_without_subscriber: bool, subscribers: int, strategy: Any) -> str:
    """"no_subscriber" while nothing reads the output and the strategy keeps nothing between scans, else "".

    WHY: segmenting a scan nobody reads costs a robot's CPU or GPU for nothing; a per-scan strategy loses nothing
    by skipping it, an online one would miss an update, so it segments on.
    """
    if not skip_without_subscriber or subscribers > 0:
        return ""
    online = strategy.name != "none" and not getattr(strategy, "episodic", True)
    return "" if online else NO_SUBSCRIBER
