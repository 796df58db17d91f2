"""What the node reports on /diagnostics, collected from two threads.

Callbacks count what arrived, what was dropped or refused; the worker records
what each scan cost and what adaptation did. A timer turns a snapshot into a
DiagnosticStatus about once a second. Counters are totals since start so a
reader can difference them; latencies are medians over a short window so one
slow scan does not hide the steady state.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

WINDOW = 50
"""Scans kept for rates and latency medians."""


@dataclass
class StatsSnapshot:
    """A consistent copy of NodeStats at one instant."""

    received: int
    processed: int
    dropped: int
    skipped: dict[str, int]
    errors: dict[str, int]
    rate_hz: float
    latency_ms: dict[str, float]  # stage -> median over the window
    kd_loss_before: float | None
    kd_loss_after: float | None
    strategy: str
    adapted_fraction: float
    mode: str
    label_set: str
    steps_run: int  # of the last scan


@dataclass
class NodeStats:
    """Thread-safe counters and recent timings of one node."""

    strategy: str = "none"
    mode: str = "adapt"
    label_set: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _received: int = 0
    _processed: int = 0
    _dropped: int = 0
    _skipped: Counter = field(default_factory=Counter)
    _errors: Counter = field(default_factory=Counter)
    _done_at: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    _stage_ms: dict = field(default_factory=dict)
    _adapted: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    _kd_before: float | None = None
    _kd_after: float | None = None
    _steps_run: int = 0

    def count_received(self) -> None:
        with self._lock:
            self._received += 1

    def count_dropped(self, n: int = 1) -> None:
        with self._lock:
            self._dropped += n

    def count_skipped(self, reason: str) -> None:
        """A scan or message that was not segmented (bad input), by reason."""
        with self._lock:
            self._skipped[reason] += 1

    def count_error(self, kind: str) -> None:
        """An exception in the worker, by exception type."""
        with self._lock:
            self._errors[kind] += 1

    def record_scan(
        self,
        stage_s: dict[str, float],
        adapted: bool,
        kd_loss_before: float | None,
        kd_loss_after: float | None,
        skip_reason: str = "",
        steps_run: int = 0,
        now_s: float | None = None,
    ) -> None:
        """One published scan: per-stage seconds, whether it adapted, the KD losses."""
        with self._lock:
            self._processed += 1
            self._steps_run = int(steps_run)
            self._done_at.append(time.monotonic() if now_s is None else now_s)
            for stage, seconds in stage_s.items():
                self._stage_ms.setdefault(stage, deque(maxlen=WINDOW)).append(1000.0 * float(seconds))
            self._adapted.append(bool(adapted))
            if skip_reason:
                self._skipped[f"adapt:{skip_reason}"] += 1
            if kd_loss_before is not None:
                self._kd_before = float(kd_loss_before)
            if kd_loss_after is not None:
                self._kd_after = float(kd_loss_after)

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            done = list(self._done_at)
            rate = (len(done) - 1) / (done[-1] - done[0]) if len(done) >= 2 and done[-1] > done[0] else 0.0
            latency = {stage: _median(list(values)) for stage, values in self._stage_ms.items()}
            adapted = sum(self._adapted) / len(self._adapted) if self._adapted else 0.0
            return StatsSnapshot(
                received=self._received,
                processed=self._processed,
                dropped=self._dropped,
                skipped=dict(self._skipped),
                errors=dict(self._errors),
                rate_hz=rate,
                latency_ms=latency,
                kd_loss_before=self._kd_before,
                kd_loss_after=self._kd_after,
                strategy=self.strategy,
                adapted_fraction=adapted,
                mode=self.mode,
                label_set=self.label_set,
                steps_run=self._steps_run,
            )


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _fmt(value: float | None) -> str:
    return "nan" if value is None else f"{value:.6g}"


def snapshot_to_status(snap: StatsSnapshot, name: str, hardware_id: str) -> DiagnosticStatus:
    """OK while scans flow; WARN when none were processed yet or errors occurred."""
    values = [
        KeyValue(key="strategy", value=snap.strategy),
        KeyValue(key="mode", value=snap.mode),
        KeyValue(key="label_set", value=snap.label_set),
        KeyValue(key="steps_run", value=str(snap.steps_run)),
        KeyValue(key="rate_hz", value=f"{snap.rate_hz:.3f}"),
        KeyValue(key="received", value=str(snap.received)),
        KeyValue(key="processed", value=str(snap.processed)),
        KeyValue(key="dropped", value=str(snap.dropped)),
        KeyValue(key="adapted_fraction", value=f"{snap.adapted_fraction:.3f}"),
        KeyValue(key="kd_loss_before", value=_fmt(snap.kd_loss_before)),
        KeyValue(key="kd_loss_after", value=_fmt(snap.kd_loss_after)),
    ]
    values += [KeyValue(key=f"latency_ms.{stage}", value=f"{ms:.3f}") for stage, ms in sorted(snap.latency_ms.items())]
    values += [KeyValue(key=f"skipped.{reason}", value=str(n)) for reason, n in sorted(snap.skipped.items())]
    values += [KeyValue(key=f"errors.{kind}", value=str(n)) for kind, n in sorted(snap.errors.items())]
    if snap.errors:
        level, message = DiagnosticStatus.WARN, f"{sum(snap.errors.values())} scans failed in the worker"
    elif snap.processed == 0:
        level, message = DiagnosticStatus.WARN, "no scan segmented yet"
    else:
        level, message = DiagnosticStatus.OK, f"{snap.rate_hz:.2f} Hz, {snap.dropped} dropped"
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id, values=values)


def diagnostic_array(snap: StatsSnapshot, name: str, hardware_id: str, stamp: Time) -> DiagnosticArray:
    """The /diagnostics message for one snapshot."""
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = [snapshot_to_status(snap, name, hardware_id)]
    return msg
