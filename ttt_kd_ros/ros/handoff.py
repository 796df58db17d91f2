"""What the callbacks hand the worker: one Job per answered cloud, every callback's Jobs as one group.

WHY groups: a cloud answered alone and the matched cloud that ends its wait
come out of the same callback; handed over one by one, the second replaced
the first in the latest-wins slot (ros/worker.py) and the unmatched cloud
was counted as dropped.stale, never answered. A group replaces only an older
group, and every cloud of a replaced group is counted as ``dropped.stale``.

``Handoff`` is the answer interface ros/pairing.py is given (``group``,
``on_pair``, ``on_alone``), so a matched cloud goes from the synchroniser to
the worker's slot without passing through the node. Plain Python (no rclpy).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ttt_kd_ros.msgs.scan_messages import CameraMessages
from ttt_kd_ros.ros.pending import PendingCloud
from ttt_kd_ros.ros.worker import LatestSlot

if TYPE_CHECKING:  # diagnostics imports message packages; this module needs only the counter's method
    from ttt_kd_ros.ros.diagnostics import NodeStats


@dataclass(frozen=True)
class Job:
    """One cloud for the worker: its record, its camera messages (decoded there, off the executor) and why it has
    none, if so."""

    cloud: PendingCloud
    cameras: tuple[CameraMessages, ...] = ()  # as the synchroniser matched them, in the cameras parameter's order
    alone_reason: str = ""  # camera_timeout / sync_unmatched / sync_overflow: segmented without its cameras


class Handoff:
    """Collects the Jobs of one callback (nested synchroniser callbacks included) and puts them in ``slot`` at once.

    Thread-safe: each executor thread collects its own group (a
    thread-local), and the slot has its own lock.
    """

    def __init__(self, slot: LatestSlot[list[Job]], stats: NodeStats) -> None:
        self.slot = slot
        self._stats = stats
        self._local = threading.local()  # .jobs: what this thread's callback hands over at once (or None)

    @contextmanager
    def group(self) -> Iterator[None]:
        """Every Job submitted inside reaches the slot as one group; a nested group joins the outer one."""
        if getattr(self._local, "jobs", None) is not None:  # nested: the outer callback hands over
            yield
            return
        self._local.jobs = []
        try:
            yield
        finally:
            jobs, self._local.jobs = self._local.jobs, None
            if jobs:
                replaced = self.slot.replace(jobs)
                if replaced:
                    self._stats.count_dropped("stale", len(replaced))

    def on_pair(self, cloud: PendingCloud, cameras: tuple[CameraMessages, ...]) -> None:
        """``cloud`` with the camera messages it was matched with (none in cloud_only mode)."""
        self._submit(Job(cloud, cameras))

    def on_alone(self, cloud: PendingCloud, reason: str) -> None:
        """``cloud`` without its cameras, and why (a reason of ros/pending.py)."""
        self._submit(Job(cloud, alone_reason=reason))

    def _submit(self, job: Job) -> None:
        with self.group():
            self._local.jobs.append(job)
