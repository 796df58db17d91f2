"""Warnings keyed by (reason, camera): the first of each is logged, repeats only in a periodic summary.

WHY: a throttle per log call site (one 5 s window for every reason that
site can report) hides the second problem behind the first: a 32FC1 image on
one camera and a size mismatch on another came out of the same call site, and
only the first ever reached the log. Here every distinct (reason, camera)
gets its own first line, whatever else is going wrong, and repeats are
counted and reported together, at most once per ``summary_period_s``.

Plain Python (no rclpy): the node passes its logger's ``warning`` method.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

ReasonKey = tuple[str, str]
"""(reason, camera); camera is "" for a problem of the whole cloud."""
OTHER_REASONS = "other reasons (too many distinct ones to log each)"


class ReasonLog:
    """Logs the first occurrence of each (reason, camera), then a summary of repeats every ``summary_period_s``.

    Thread-safe: subscription callbacks and the worker report concurrently.
    The sink is called outside the lock, so a slow logger never blocks the
    other reporters' counting.
    """

    def __init__(self, sink: Callable[[str], None], summary_period_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 256) -> None:
        if summary_period_s <= 0:
            raise ValueError(f"summary_period_s: expected > 0, got {summary_period_s}")
        self._sink = sink
        self._clock = clock
        self.summary_period_s = summary_period_s
        self.max_keys = max_keys  # bounds memory when reasons carry values (sizes, frames) that keep changing
        self._lock = threading.Lock()
        self._totals: Counter[ReasonKey] = Counter()
        self._since_summary: Counter[ReasonKey] = Counter()
        self._last_summary_s = clock()

    def report(self, reason: str, message: str, camera: str = "") -> bool:
        """Count one occurrence; log ``message`` when it is the first of its (reason, camera).

        Returns whether ``message`` itself was logged. A repeat may instead
        trigger the summary line of everything repeated since the last one.
        """
        key = (reason, camera)
        lines: list[str] = []
        with self._lock:
            if key not in self._totals and len(self._totals) >= self.max_keys:
                key = (OTHER_REASONS, camera)
            self._totals[key] += 1
            first = self._totals[key] == 1
            if first:
                lines.append(message)
            else:
                self._since_summary[key] += 1
            now = self._clock()
            if self._since_summary and now - self._last_summary_s >= self.summary_period_s:
                lines.append(self._summary_line(now))
        for line in lines:
            self._sink(line)
        return first

    def counts(self) -> dict[ReasonKey, int]:
        """Every (reason, camera) seen so far and how often (first occurrences included)."""
        with self._lock:
            return dict(self._totals)

    def _summary_line(self, now: float) -> str:
        """The repeats since the last summary as one line; resets that window (lock held)."""
        elapsed = now - self._last_summary_s
        parts = [f"{reason}{f'[{camera}]' if camera else ''} x{n}"
                 for (reason, camera), n in sorted(self._since_summary.items())]
        self._since_summary.clear()
        self._last_summary_s = now
        return f"repeated in the last {elapsed:.0f} s (first occurrence of each logged above): {', '.join(parts)}"
