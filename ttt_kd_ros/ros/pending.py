"""Clouds handed to the synchroniser and not answered yet: every one leaves either matched or expired, never lost.

WHY: an approximate-time synchroniser (message_filters' or ours) forgets a
cloud its images never match: pushed out of a full queue, replaced by one with
the same stamp, or passed over once a newer cloud matched. Nothing answered
such clouds, so a client saw received != processed + dropped. The pairing
(ros/pairing.py) keeps its own account here, keyed by stamp like the
synchroniser's queue, and answers each expired cloud alone (no adaptation)
with the reason it expired.

Expiry, checked on every new cloud and by the node's sweep timer:
- ``sync_overflow``: more clouds waiting than the synchroniser's queue holds
  (the oldest goes, as it does in the synchroniser);
- ``sync_unmatched``: a newer cloud was matched (an older one will not be),
  or it replaced a cloud with the same stamp, or it waited ``wait_s``;
- ``camera_timeout``: a listed camera was already silent when the cloud
  arrived, and the cloud waited the grace for images sent just after it.
Plain Python (no rclpy), one lock: the subscription callbacks and the timer
may run on different executor threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ttt_kd_ros.msgs.scan_messages import CloudHeader

SYNC_OVERFLOW, SYNC_UNMATCHED, CAMERA_TIMEOUT = "sync_overflow", "sync_unmatched", "camera_timeout"


@dataclass(frozen=True)
class PendingCloud:
    """One cloud from its arrival to its answer: the message, its header (read once) and when it arrived.

    WHY one record: the message, header and arrival time are needed while
    the cloud waits and again by the worker; the object that waits here is
    the one the worker gets (inside a ``ros.handoff.Job``), so no copy of
    them has to be kept in step.
    """

    msg: Any
    header: CloudHeader
    arrived_s: float  # time.monotonic() when the cloud reached the node

    @property
    def stamp_ns(self) -> int:
        return self.header.stamp_ns


Expired = tuple[PendingCloud, str]
"""A cloud that will not be matched, and why (SYNC_OVERFLOW, SYNC_UNMATCHED or CAMERA_TIMEOUT)."""


class PendingClouds:
    """Clouds in the synchroniser, oldest stamp first; ``capacity`` = the synchroniser's queue size."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: expected >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._lock = threading.Lock()
        self._clouds: OrderedDict[int, PendingCloud] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._clouds)

    def add(self, cloud: PendingCloud) -> list[Expired]:
        """Start waiting for ``cloud``; returns the clouds this pushes out (same stamp, or over capacity)."""
        expired: list[Expired] = []
        with self._lock:
            replaced = self._clouds.pop(cloud.stamp_ns, None)
            if replaced is not None:
                expired.append((replaced, SYNC_UNMATCHED))
            self._clouds[cloud.stamp_ns] = cloud
            self._sort()
            while len(self._clouds) > self.capacity:
                _, oldest = self._clouds.popitem(last=False)
                expired.append((oldest, SYNC_OVERFLOW))
        return expired

    def is_waiting(self, cloud: PendingCloud) -> bool:
        with self._lock:
            return self._clouds.get(cloud.stamp_ns) is cloud

    def matched(self, msg: Any) -> tuple[PendingCloud | None, list[Expired]]:
        """The waiting cloud the synchroniser matched (None: it was already answered) and the older ones it ends.

        Found by message identity among at most ``capacity`` clouds, so the stamp converted when the cloud
        arrived is the one used: the synchroniser's callback does not convert it again.
        """
        with self._lock:
            stamp_ns = next((stamp for stamp, cloud in self._clouds.items() if cloud.msg is msg), None)
            if stamp_ns is None:
                return None, []
            cloud = self._clouds.pop(stamp_ns)
            older = [stamp for stamp in self._clouds if stamp < stamp_ns]
            return cloud, [(self._clouds.pop(stamp), SYNC_UNMATCHED) for stamp in older]

    def sweep(self, now_s: float, wait_s: float, silent_since_s: float | None, grace_s: float) -> list[Expired]:
        """Clouds that arrived while a camera was silent and waited ``grace_s``, or that waited ``wait_s`` (> 0).

        ``silent_since_s``: when the first listed camera that is silent now
        went silent (its last message + the timeout); None when none is. A
        camera that goes silent while a cloud waits makes that cloud
        unmatched, not timed out: its images were due while the camera still talked.
        """
        expired: list[Expired] = []
        with self._lock:
            for stamp, cloud in list(self._clouds.items()):
                waited = now_s - cloud.arrived_s
                if silent_since_s is not None and silent_since_s <= cloud.arrived_s and waited >= grace_s:
                    expired.append((self._clouds.pop(stamp), CAMERA_TIMEOUT))
                elif wait_s > 0 and waited >= wait_s:
                    expired.append((self._clouds.pop(stamp), SYNC_UNMATCHED))
        return expired

    def drain(self) -> list[PendingCloud]:
        """Every waiting cloud, removed (deactivation: they are counted as dropped)."""
        with self._lock:
            clouds = list(self._clouds.values())
            self._clouds.clear()
        return clouds

    def _sort(self) -> None:
        """Oldest stamp first (clouds may arrive out of order); the lock is held."""
        if any(a > b for a, b in zip(self._clouds, list(self._clouds)[1:], strict=False)):
            for stamp in sorted(self._clouds):
                self._clouds.move_to_end(stamp)
