"""What the node reports on /diagnostics, collected from two threads.

Every cloud the node receives ends in exactly one named outcome, so the books
balance by the node's own counters:

    received = processed + dropped + skipped + in_flight

- processed: answered (a labeled cloud was published), adapted or not;
- dropped.<reason>: lost after it was accepted: ``stale`` (a newer scan
  replaced it in the worker's slot), ``worker_error`` (an exception while
  segmenting it), ``shutdown`` (still waiting when the node deactivated),
  ``disabled`` (still waiting when ``~/enable`` turned the inputs off);
- skipped.<reason>: refused on arrival: ``bad_cloud``, ``stamp_too_old``,
  ``stamp_in_future``, ``no_subscriber`` (nothing reads the output and
  the strategy keeps nothing between scans);
- in_flight: accepted and not yet answered (waiting for its images, in the
  slot or in the worker); 0 once the node is idle.

Processed scans that did not adapt say why in ``unadapted.<reason>``
(``camera_timeout``, ``sync_unmatched``, ``sync_overflow``, or the engine's
reason as a fixed key, ``reason_key``: ``time_budget``, ``no_visible_point``,
``no_camera``), and cameras left out of a scan in
``left_out.<reason>.<camera>``: these describe processed scans, they are not
outcomes. Counters are totals since start so a reader can difference them;
latencies are medians over a short window so one slow scan does not hide the
steady state.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

WINDOW = 50
"""Scans kept for rates and latency medians."""
UNADAPTED_WARN_SCANS = 10
"""WARN when this many processed scans in a row did not adapt although a strategy that adapts is configured."""


def reason_key(reason: str) -> str:
    """The fixed diagnostics key of an unadaptation reason: its leading words in snake_case, no numbers or details.

    WHY: the engine's reasons carry values ("time budget 0.539 s", "out of
    memory during adaptation: <the error>"), and a key per value gave 185
    distinct keys after 1405 scans. Keys are names; the full text stays in
    the WARN message and the log. "time budget 0.539 s" -> "time_budget",
    "no visible point" -> "no_visible_point", "sync_unmatched" unchanged.
    """
    head = re.split(r"[:;(]|\s[-+]?\.?\d", reason, maxsplit=1)[0]
    return "_".join(word.lower() for word in re.findall(r"[A-Za-z_]+", head)) or "unknown"


def expects_adaptation(mode: str, strategy: str) -> bool:
    """Whether scans are expected to adapt: a strategy that adapts, with cameras in use."""
    return mode == "adapt" and strategy != "none"


@dataclass
class StatsSnapshot:
    """A consistent copy of NodeStats at one instant."""

    received: int
    processed: int
    dropped: dict[str, int]
    skipped: dict[str, int]
    unadapted: dict[str, int]
    left_out: dict[str, int]
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
    unadapted_in_a_row: int  # processed scans since the last adapted one
    last_unadapted_reason: str
    visible_points: dict[str, int]  # camera -> visible points of the last sampled scan
    sync_overflow: dict[str, int]  # synchroniser input -> messages it pushed out unmatched
    resets: int
    late_scans: int = 0  # processed scans whose processing time exceeded late_scan_s
    late_in_a_row: int = 0
    late_scan_s: float = 0.0  # 0: lateness is not judged
    late_scans_error: int = 5
    last_total_s: float = 0.0  # processing time of the last scan
    enabled: bool = True
    fusion: str = "off"  # the output's fusion mode (fusion.mode as the node runs it)
    fused_points: int = 0  # points of the last scan whose label fuses the teacher's prediction
    fusion_withheld: int = 0  # scans whose teacher was withheld (class mix too unlike the 3D one)

    @property
    def in_flight(self) -> int:
        return self.received - self.processed - sum(self.dropped.values()) - sum(self.skipped.values())

    @property
    def adapts(self) -> bool:
        """Whether scans are expected to adapt (a strategy that adapts, cameras in use)."""
        return expects_adaptation(self.mode, self.strategy)


@dataclass
class NodeStats:
    """Thread-safe counters and recent timings of one node."""

    strategy: str = "none"
    mode: str = "adapt"
    label_set: str = ""
    enabled: bool = True  # ~/enable: false while the node has no subscription and does no work
    fusion: str = "off"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _received: int = 0
    _processed: int = 0
    _dropped: Counter = field(default_factory=Counter)
    _skipped: Counter = field(default_factory=Counter)
    _unadapted: Counter = field(default_factory=Counter)
    _left_out: Counter = field(default_factory=Counter)
    _errors: Counter = field(default_factory=Counter)
    _done_at: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    _stage_ms: dict = field(default_factory=dict)
    _adapted: deque = field(default_factory=lambda: deque(maxlen=WINDOW))
    _kd_before: float | None = None
    _kd_after: float | None = None
    _steps_run: int = 0
    _fused_points: int = 0
    _fusion_withheld: int = 0
    _unadapted_in_a_row: int = 0
    _last_unadapted_reason: str = ""
    _visible: dict = field(default_factory=dict)
    _sync_overflow: dict = field(default_factory=dict)
    _resets: int = 0
    _late_scan_s: float = 0.0
    _late_scans_error: int = 5
    _late: int = 0
    _late_in_a_row: int = 0
    _last_total_s: float = 0.0

    def set_late_limits(self, late_scan_s: float, late_scans_error: int) -> None:
        """A scan slower than ``late_scan_s`` (0: off) is late; ``late_scans_error`` late ones in a row: ERROR."""
        with self._lock:
            self._late_scan_s, self._late_scans_error = float(late_scan_s), int(late_scans_error)

    def count_received(self) -> None:
        with self._lock:
            self._received += 1

    def count_dropped(self, reason: str, n: int = 1) -> None:
        """Accepted clouds that will never be answered, by reason (stale, worker_error, shutdown)."""
        with self._lock:
            self._dropped[reason] += n

    def count_skipped(self, reason: str) -> None:
        """A cloud refused on arrival (bad_cloud, stamp_too_old, stamp_in_future, no_subscriber)."""
        with self._lock:
            self._skipped[reason] += 1

    def count_left_out(self, reason: str, camera: str) -> None:
        """A camera that could not be used for one processed scan."""
        with self._lock:
            self._left_out[f"{reason}.{camera}"] += 1

    def count_error(self, kind: str) -> None:
        """An exception in the worker, by exception type (its cloud is also counted as dropped.worker_error)."""
        with self._lock:
            self._errors[kind] += 1
            self._dropped["worker_error"] += 1

    def count_reset(self) -> None:
        with self._lock:
            self._resets += 1

    def set_visible_points(self, visible: dict[str, int]) -> None:
        """Visible points per camera of the latest sampled scan (cameras not in it keep their last value)."""
        with self._lock:
            self._visible.update(visible)

    def set_sync_overflow(self, overflow: dict[str, int]) -> None:
        with self._lock:
            self._sync_overflow = dict(overflow)

    def record_scan(
        self,
        stage_s: dict[str, float],
        adapted: bool,
        kd_loss_before: float | None,
        kd_loss_after: float | None,
        skip_reason: str = "",
        steps_run: int = 0,
        now_s: float | None = None,
        fused_points: int = 0,
        fusion_withheld: bool = False,
    ) -> int:
        """One published scan: per-stage seconds, whether it adapted (else why not), the KD losses.

        The KD losses count only for a scan that adapted (the diagnostics show
        the last adapted scan's); the reason is counted under ``reason_key``.
        Returns the processed scans since the last adapted one, this one included.
        """
        with self._lock:
            self._processed += 1
            self._steps_run = int(steps_run)
            self._fused_points = int(fused_points)
            self._fusion_withheld += int(bool(fusion_withheld))
            self._done_at.append(time.monotonic() if now_s is None else now_s)
            for stage, seconds in stage_s.items():
                self._stage_ms.setdefault(stage, deque(maxlen=WINDOW)).append(1000.0 * float(seconds))
            self._judge_lateness(float(stage_s.get("total", 0.0)))
            self._adapted.append(bool(adapted))
            if adapted:
                self._unadapted_in_a_row = 0
                self._record_losses(kd_loss_before, kd_loss_after)
            else:
                self._unadapted_in_a_row += 1
                if skip_reason:
                    self._unadapted[reason_key(skip_reason)] += 1
                    self._last_unadapted_reason = skip_reason
            return self._unadapted_in_a_row

    def _judge_lateness(self, total_s: float) -> None:
        """Count the scan as late when its processing time exceeds the limit (the lock is held)."""
        self._last_total_s = total_s
        if self._late_scan_s > 0 and total_s > self._late_scan_s:
            self._late += 1
            self._late_in_a_row += 1
        else:
            self._late_in_a_row = 0

    def late_in_a_row(self) -> int:
        with self._lock:
            return self._late_in_a_row

    def _record_losses(self, kd_loss_before: float | None, kd_loss_after: float | None) -> None:
        """The KD losses of an adapted scan (the lock is held)."""
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
                dropped=dict(self._dropped),
                skipped=dict(self._skipped),
                unadapted=dict(self._unadapted),
                left_out=dict(self._left_out),
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
                unadapted_in_a_row=self._unadapted_in_a_row,
                last_unadapted_reason=self._last_unadapted_reason,
                visible_points=dict(self._visible),
                sync_overflow=dict(self._sync_overflow),
                resets=self._resets,
                late_scans=self._late,
                late_in_a_row=self._late_in_a_row,
                late_scan_s=self._late_scan_s,
                late_scans_error=self._late_scans_error,
                last_total_s=self._last_total_s,
                enabled=self.enabled,
                fusion=self.fusion,
                fused_points=self._fused_points,
                fusion_withheld=self._fusion_withheld,
            )


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _fmt(value: float | None) -> str:
    return "nan" if value is None else f"{value:.6g}"


def _counts(prefix: str, counts: dict[str, int]) -> list[KeyValue]:
    return [KeyValue(key=f"{prefix}.{name}", value=str(n)) for name, n in sorted(counts.items())]


def status_level(snap: StatsSnapshot) -> tuple[bytes, str]:
    """(level, message): ERROR after late_scans_error late scans in a row; WARN before the first scan, after
    worker errors, while nothing adapts, or while the last scan was late; OK otherwise."""
    if not snap.enabled:
        return DiagnosticStatus.OK, "disabled by ~/enable: no subscription, no work"
    late = f"(processing > late_scan_s {snap.late_scan_s:g} s; last {snap.last_total_s:.3f} s)"
    if snap.late_scan_s > 0 and snap.late_in_a_row >= snap.late_scans_error:
        return DiagnosticStatus.ERROR, f"{snap.late_in_a_row} late scans in a row {late}"
    if snap.errors:
        return DiagnosticStatus.WARN, f"{sum(snap.errors.values())} scans failed in the worker"
    if snap.processed == 0:
        return DiagnosticStatus.WARN, "no scan segmented yet"
    if snap.adapts and snap.unadapted_in_a_row >= UNADAPTED_WARN_SCANS:
        return DiagnosticStatus.WARN, (f"no adaptation in the last {snap.unadapted_in_a_row} scans (strategy "
                                       f"{snap.strategy}); last reason: {snap.last_unadapted_reason or 'unknown'}")
    if snap.late_scan_s > 0 and snap.late_in_a_row > 0:
        return DiagnosticStatus.WARN, f"the last scan was late {late}"
    return DiagnosticStatus.OK, f"{snap.rate_hz:.2f} Hz, {sum(snap.dropped.values())} dropped"


def snapshot_to_status(snap: StatsSnapshot, name: str, hardware_id: str) -> DiagnosticStatus:
    """The node's one DiagnosticStatus: the books (every outcome named), rates, latencies, adaptation, cameras."""
    values = [
        KeyValue(key="enabled", value=str(snap.enabled).lower()),
        KeyValue(key="strategy", value=snap.strategy),
        KeyValue(key="mode", value=snap.mode),
        KeyValue(key="label_set", value=snap.label_set),
        KeyValue(key="steps_run", value=str(snap.steps_run)),
        KeyValue(key="rate_hz", value=f"{snap.rate_hz:.3f}"),
        KeyValue(key="received", value=str(snap.received)),
        KeyValue(key="processed", value=str(snap.processed)),
        KeyValue(key="dropped", value=str(sum(snap.dropped.values()))),
        KeyValue(key="skipped", value=str(sum(snap.skipped.values()))),
        KeyValue(key="in_flight", value=str(snap.in_flight)),
        KeyValue(key="adapted_fraction", value=f"{snap.adapted_fraction:.3f}"),
        KeyValue(key="unadapted_in_a_row", value=str(snap.unadapted_in_a_row)),
        KeyValue(key="kd_loss_before", value=_fmt(snap.kd_loss_before)),
        KeyValue(key="kd_loss_after", value=_fmt(snap.kd_loss_after)),
        KeyValue(key="resets", value=str(snap.resets)),
        KeyValue(key="fusion", value=snap.fusion),
        KeyValue(key="fused_points", value=str(snap.fused_points)),
        KeyValue(key="fusion_withheld", value=str(snap.fusion_withheld)),
        KeyValue(key="late_scans", value=str(snap.late_scans)),
        KeyValue(key="late_in_a_row", value=str(snap.late_in_a_row)),
    ]
    values += [KeyValue(key=f"latency_ms.{stage}", value=f"{ms:.3f}") for stage, ms in sorted(snap.latency_ms.items())]
    for prefix, counts in (("dropped", snap.dropped), ("skipped", snap.skipped), ("unadapted", snap.unadapted),
                           ("left_out", snap.left_out), ("errors", snap.errors),
                           ("visible_points", snap.visible_points), ("sync.overflow", snap.sync_overflow)):
        values += _counts(prefix, counts)
    level, message = status_level(snap)
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id, values=values)


def diagnostic_array(snap: StatsSnapshot, name: str, hardware_id: str, stamp: Time) -> DiagnosticArray:
    """The /diagnostics message for one snapshot."""
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = [snapshot_to_status(snap, name, hardware_id)]
    return msg
