"""Clouds waiting for their images: every one leaves matched or expired with its reason (no rclpy)."""

from __future__ import annotations

from ttt_kd_ros.msgs.scan_messages import CloudHeader
from ttt_kd_ros.ros.pending import CAMERA_TIMEOUT, SYNC_OVERFLOW, SYNC_UNMATCHED, PendingCloud, PendingClouds


def _cloud(stamp_ns: int, arrived_s: float = 0.0) -> PendingCloud:
    return PendingCloud(msg=object(), header=CloudHeader(header=None, stamp_ns=stamp_ns, frame_id=""),
                        arrived_s=arrived_s)


def test_pending_clouds_overflow_expires_oldest_stamp_first() -> None:
    pending = PendingClouds(capacity=2)
    first, second, third = _cloud(30), _cloud(10), _cloud(20)
    assert pending.add(first) == [] and pending.add(second) == []
    assert pending.add(third) == [(second, SYNC_OVERFLOW)]  # by stamp, not arrival
    assert len(pending) == 2


def test_pending_clouds_match_ends_older_clouds_and_ignores_answered_ones() -> None:
    pending = PendingClouds(capacity=5)
    old, mid, new = _cloud(1), _cloud(2), _cloud(3)
    for cloud in (old, mid, new):
        pending.add(cloud)
    matched, older = pending.matched(mid.msg)
    assert matched is mid and older == [(old, SYNC_UNMATCHED)]
    assert pending.is_waiting(new) and not pending.is_waiting(mid)
    assert pending.matched(mid.msg) == (None, [])  # a late second match of an answered cloud
    assert pending.matched(object()) == (None, [])  # a message that never waited


def test_pending_clouds_same_stamp_replaces_and_expires_the_first() -> None:
    pending = PendingClouds(capacity=5)
    first, again = _cloud(7), _cloud(7)
    pending.add(first)
    assert pending.add(again) == [(first, SYNC_UNMATCHED)]


def test_pending_clouds_sweep_silent_camera_after_grace_else_after_wait() -> None:
    pending = PendingClouds(capacity=5)
    fresh, older = _cloud(2, arrived_s=9.95), _cloud(1, arrived_s=9.0)
    pending.add(fresh)
    pending.add(older)
    # a camera silent since 8.5 s: the cloud that arrived at 9.0 has waited its grace, the one at 9.95 not yet
    assert pending.sweep(now_s=10.0, wait_s=2.0, silent_since_s=8.5, grace_s=0.1) == [(older, CAMERA_TIMEOUT)]
    assert pending.sweep(now_s=10.0, wait_s=2.0, silent_since_s=None, grace_s=0.1) == []
    assert pending.sweep(now_s=12.0, wait_s=2.0, silent_since_s=None, grace_s=0.1) == [(fresh, SYNC_UNMATCHED)]
    assert len(pending) == 0


def test_pending_clouds_camera_silent_only_after_arrival_makes_it_unmatched() -> None:
    pending = PendingClouds(capacity=5)
    cloud = _cloud(1, arrived_s=10.0)
    pending.add(cloud)
    assert pending.sweep(now_s=11.0, wait_s=1.5, silent_since_s=10.9, grace_s=0.1) == []
    assert pending.sweep(now_s=11.6, wait_s=1.5, silent_since_s=10.9, grace_s=0.1) == [(cloud, SYNC_UNMATCHED)]


def test_pending_clouds_zero_wait_keeps_clouds_until_matched_or_drained() -> None:
    pending = PendingClouds(capacity=5)
    cloud = _cloud(1, arrived_s=0.0)
    pending.add(cloud)
    assert pending.sweep(now_s=1e6, wait_s=0.0, silent_since_s=None, grace_s=0.1) == []
    assert pending.drain() == [cloud] and len(pending) == 0
