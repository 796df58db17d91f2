"""Runtime parameters (``ros2 param set``) and ``~/reset``: checked on the executor, applied between two scans.

WHY between scans: the engine is not thread-safe and the worker may be in
the middle of a scan when a change arrives. Node-level values (thresholds,
timeouts) apply at once, since the node reads them live; adaptation knobs
and a reset wait here until the worker calls ``apply`` before its next scan.
The node turns the outcome into its parameter and service responses.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ttt_kd_ros.parameters.segmenter_config import RUNTIME_ADAPT_FIELDS, retune
from ttt_kd_ros.parameters.table import ParameterError
from ttt_kd_ros.ros.params import NodeParams, check_update

if TYPE_CHECKING:
    from ttt_kd_ros.ros.diagnostics import NodeStats

LATE_LIMITS = frozenset({"late_scan_s", "late_scans_error"})
"""Runtime parameters /diagnostics judges lateness by: NodeStats is told at once."""


class RuntimeChanges:
    """Adaptation knobs and a reset waiting for the next scan; one lock, shared by the executor and the worker."""

    def __init__(self, stats: NodeStats, logger: Any) -> None:
        self._stats = stats
        self._logger = logger  # rclpy's node logger: info / error
        self._lock = threading.Lock()
        self._adapt: dict[str, Any] = {}
        self._reset = False

    def accept(self, params: NodeParams, changes: Mapping[str, Any]) -> dict[str, Any]:
        """The checked ``changes`` (ParameterError names the first refused one), taken: node-level values at once,
        adaptation knobs from the next scan."""
        checked = check_update(params.values, changes)
        params.values.update(checked)
        if LATE_LIMITS & set(checked):
            self._stats.set_late_limits(params["late_scan_s"], params["late_scans_error"])
        adapt = {name: value for name, value in checked.items() if name in RUNTIME_ADAPT_FIELDS}
        if adapt:
            with self._lock:
                self._adapt.update(adapt)
        return checked

    def request_reset(self) -> None:
        """The strategy's source weights back before the next scan (``~/reset``)."""
        with self._lock:
            self._reset = True

    def apply(self, segmenter: Any) -> None:
        """What waits, on the worker thread before a scan: the knobs first, then a reset."""
        with self._lock:
            changes, self._adapt = self._adapt, {}
            reset, self._reset = self._reset, False
        if changes:
            try:
                config = retune(segmenter, changes)
            except ParameterError as exc:
                self._logger.error(f"runtime parameters not applied: {exc}")
            else:
                self._logger.info(f"adaptation now: steps={config.steps} lr={config.lr:g} "
                                  f"kd_points_per_step={config.kd_points_per_step} loss={config.loss} "
                                  f"time_budget_s={config.time_budget_s}")
        if reset:
            segmenter.reset()
            self._stats.count_reset()
