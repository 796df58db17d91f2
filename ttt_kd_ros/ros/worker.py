"""A latest-wins hand-off between ROS callbacks and the thread that runs the model.

Segmenting a scan (with test-time training) takes longer than the sensor
period, so a queue would only grow and serve ever older scans. The callback
puts each new scan into a one-item slot; if the worker has not taken the
previous one yet, that one is stale and is replaced (and counted as dropped).
Nothing here imports ROS, so the hand-off is tested on its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """A one-item mailbox: ``put`` replaces, ``take`` waits; counts replaced items."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._has_item = False
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Store ``item``; True when it replaced one the worker never took (that one is dropped)."""
        with self._cond:
            replaced = self._has_item
            self._store(item)
        return replaced

    def replace(self, item: T) -> T | None:
        """Store ``item``; the item it replaced (never taken, so dropped), or None.

        WHY beside ``put``: ros/handoff.py hands over a group of clouds at
        once and counts every cloud of a replaced group, not one per group.
        """
        with self._cond:
            replaced = self._item if self._has_item else None
            self._store(item)
        return replaced

    def _store(self, item: T) -> None:
        """Put ``item`` in the slot and wake the taker (the condition's lock is held)."""
        if self._has_item:
            self.dropped += 1
        self._item = item
        self._has_item = True
        self._cond.notify()

    def take(self, timeout_s: float | None = None) -> T | None:
        """The newest item, removing it; None after ``timeout_s`` or once closed and empty."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._has_item or self._closed, timeout=timeout_s):
                return None
            if not self._has_item:
                return None
            item = self._item
            self._item = None
            self._has_item = False
            return item

    def close(self) -> None:
        """Wake every waiter; later ``take`` calls return what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class SlotWorker(Generic[T]):
    """A daemon thread that takes items from a LatestSlot and hands each to ``process``.

    ``process`` runs outside every lock. An exception in it is passed to
    ``on_error`` and the worker goes on with the next item, because one bad
    scan must never stop the node.
    """

    def __init__(
        self,
        slot: LatestSlot[T],
        process: Callable[[T], None],
        on_error: Callable[[T, Exception], None],
        name: str = "ttt_kd_worker",
        on_start: Callable[[], None] | None = None,
    ) -> None:
        """``on_start`` runs first on the worker thread itself: per-thread state such as the current CUDA device
        (torch keeps it per thread, and spconv / MinkowskiEngine launch on it) must be set there."""
        self._slot = slot
        self._process = process
        self._on_error = on_error
        self._on_start = on_start
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._busy = threading.Event()

    def start(self) -> None:
        self._thread.start()

    @property
    def busy(self) -> bool:
        """True while ``process`` is running (tests and shutdown use it)."""
        return self._busy.is_set()

    def _run(self) -> None:
        if self._on_start is not None:
            self._on_start()
        while True:
            item = self._slot.take(timeout_s=0.5)
            if item is None:
                if self._slot.closed:
                    return
                continue
            self._busy.set()
            try:
                self._process(item)
            except Exception as exc:  # reported through on_error: one bad scan must not stop the node
                self._on_error(item, exc)
            finally:
                self._busy.clear()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Close the slot and join; True when the thread ended within ``timeout_s``."""
        self._slot.close()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)
        return not self._thread.is_alive()
