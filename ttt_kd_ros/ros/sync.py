"""Approximate-time pairing of one cloud with N cameras (Image + CameraInfo each).

The semantics follow message_filters' ApproximateTimeSynchronizer, which a
real ROS install provides and ``compat.make_synchronizer`` prefers: a list of
upstream inputs, a queue size per input, a slop in seconds; a set of one
message per input is emitted when all its stamps lie within the slop; the
callback receives the messages in input order; memory is bounded by the queue
size (the oldest message of an overflowing input is dropped). Stamps become
integer nanoseconds once, at the boundary, so comparisons are exact.

Two things differ on purpose: the matching set is found directly (the window
of width ``slop`` around the new message that gives the smallest spread)
instead of enumerating every combination of candidates, and the user callback
is never called while the lock is held, so a slow callback (or one that feeds
another synchroniser) cannot dead-lock or stall the subscription threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ttt_kd_ros.msgs.stamps import stamp_to_ns

Callback = Callable[..., Any]


class SimpleFilter:
    """message_filters' tiny base: callbacks are registered, a message is signalled to all of them."""

    def __init__(self) -> None:
        self._callbacks: dict[int, tuple[Callback, tuple[Any, ...]]] = {}
        self._next_id = 0
        self._callbacks_lock = threading.Lock()

    def registerCallback(self, callback: Callback, *args: Any) -> int:  # noqa: N802 - message_filters' name
        """Call ``callback(*messages, *args)`` for every signalled set; returns its id, as message_filters does."""
        with self._callbacks_lock:
            conn = self._next_id
            self._next_id += 1
            self._callbacks[conn] = (callback, args)
        return conn

    def signalMessage(self, *msgs: Any) -> None:  # noqa: N802 - message_filters' name
        with self._callbacks_lock:
            callbacks = list(self._callbacks.values())
        for callback, args in callbacks:
            callback(*(msgs + args))


class SyncInput(SimpleFilter):
    """One upstream of a synchroniser; the pairing calls ``add(msg)`` from the node's subscription callbacks."""

    def __init__(self, name: str = "") -> None:
        super().__init__()
        self.name = name

    def add(self, msg: Any) -> None:
        self.signalMessage(msg)


def message_stamp_ns(msg: Any) -> int | None:
    """``msg.header.stamp`` in ns, or None for a header-less message."""
    header = getattr(msg, "header", None)
    if header is None or not hasattr(header, "stamp"):
        return None
    return stamp_to_ns(header.stamp)


class ApproximateTimeSynchronizer(SimpleFilter):
    """Emit one message per input when all stamps lie within ``slop`` seconds of each other.

    ``inputs`` are filters with ``registerCallback`` (SyncInput here, or
    message_filters.Subscriber / SimpleFilter on a ROS install);
    ``queue_size`` bounds each input's queue; ``slop`` is in seconds.
    Header-less messages are dropped and counted unless ``allow_headerless``,
    which stamps them with ``clock_ns()`` on arrival.
    """

    def __init__(
        self,
        inputs: Sequence[Any],
        queue_size: int,
        slop: float,
        allow_headerless: bool = False,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"queue_size: expected >= 1, got {queue_size}")
        if slop < 0:
            raise ValueError(f"slop: expected >= 0 seconds, got {slop}")
        if len(inputs) < 1:
            raise ValueError("inputs: expected at least one input")
        self.queue_size = int(queue_size)
        self.slop_ns = round(slop * 1e9)
        self.allow_headerless = allow_headerless
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._queues: list[dict[int, Any]] = [{} for _ in inputs]
        self.emitted = 0
        self.dropped_overflow = 0
        self.overflow_by_input = [0] * len(inputs)  # messages each input pushed out unmatched (/diagnostics)
        self.dropped_headerless = 0
        for index, upstream in enumerate(inputs):
            upstream.registerCallback(self.add, index)

    def queue_lengths(self) -> list[int]:
        with self._lock:
            return [len(q) for q in self._queues]

    def add(self, msg: Any, index: int) -> None:
        """Queue ``msg`` on input ``index``; emit a matched set (outside the lock) if one now exists."""
        if not 0 <= index < len(self._queues):
            raise ValueError(f"index: expected 0..{len(self._queues) - 1}, got {index}")
        stamp = message_stamp_ns(msg)
        if stamp is None:
            if not self.allow_headerless:
                with self._lock:
                    self.dropped_headerless += 1
                return
            stamp = int(self._clock_ns())
        with self._lock:
            queue = self._queues[index]
            queue[stamp] = msg
            while len(queue) > self.queue_size:
                del queue[min(queue)]
                self.dropped_overflow += 1
                self.overflow_by_input[index] += 1
            if stamp not in queue:  # it was itself the oldest of a full queue
                return
            chosen = self._best_set(index, stamp)
            if chosen is None:
                return
            matched = [self._queues[i].pop(s) for i, s in enumerate(chosen)]
            self.emitted += 1
        self.signalMessage(*matched)

    def _best_set(self, index: int, stamp: int) -> list[int] | None:
        """Stamps (one per input, input order) of the tightest set holding ``stamp``, or None.

        Every valid set lies inside a window [low, low + slop] that contains
        ``stamp``; trying each candidate stamp as ``low`` and taking, per input,
        the stamp nearest the new one inside that window finds the set with
        the smallest spread (ties: smallest total distance to the new stamp).
        """
        slop = self.slop_ns
        near: list[list[int]] = []
        for i, queue in enumerate(self._queues):
            if i == index:
                near.append([stamp])
                continue
            candidates = [s for s in queue if abs(s - stamp) <= slop]
            if not candidates:
                return None
            near.append(candidates)
        lows = sorted({s for candidates in near for s in candidates if s <= stamp})
        best: list[int] | None = None
        best_key: tuple[int, int] | None = None
        for low in lows:
            high = low + slop
            chosen: list[int] = []
            for candidates in near:
                inside = [s for s in candidates if low <= s <= high]
                if not inside:
                    break
                chosen.append(min(inside, key=lambda s: (abs(s - stamp), s)))
            else:
                key = (max(chosen) - min(chosen), sum(abs(s - stamp) for s in chosen))
                if best_key is None or key < best_key:
                    best, best_key = chosen, key
        return best
