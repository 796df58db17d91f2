"""What each scan tells the operator: its outcome counted for /diagnostics (NodeStats), its problems logged by reason.

The cloud callback reports an unparsable cloud; the worker reports each
scan after decoding (cameras left out) and after publishing (adapted or why
not, late, visible points) or its failure. Counting and logging sit
together so every outcome on /diagnostics has its log line (ReasonLog: the
first of each reason in full, repeats summarised). No rclpy.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import TYPE_CHECKING

from ttt_kd_ros.geometry import project_points
from ttt_kd_ros.msgs.scan_messages import BAD_CAMERA, DecodedScan
from ttt_kd_ros.ros.diagnostics import UNADAPTED_WARN_SCANS, NodeStats, expects_adaptation, reason_key
from ttt_kd_ros.ros.pending import CAMERA_TIMEOUT, SYNC_OVERFLOW, SYNC_UNMATCHED
from ttt_kd_ros.ros.reason_log import ReasonLog
from ttt_kd_ros.scan import Prediction

if TYPE_CHECKING:
    from ttt_kd_ros.ros.params import NodeParams

ALONE_REASONS = frozenset({CAMERA_TIMEOUT, SYNC_UNMATCHED, SYNC_OVERFLOW})
"""Reasons logged where the cloud is answered alone (ros/pairing.py), not again after segmenting it."""
UNADAPTED_HINTS = {
    "time_budget": "adapt.time_budget_s left no time for a step after the checks, voxels, teacher and targets: "
                   "raise it, lower max_points or teacher_resolution, or run on a GPU",
    "no_visible_point": "no point of the cloud projects into a camera image: check the extrinsics (tf or "
                        "camera.<name>.extrinsics) and the Image frame_id",
    "no_camera": "no camera view reached this scan (see left_out.* on /diagnostics)",
}
"""What an operator can do about an engine reason, appended to its first log line."""


class ScanOutcomes:
    """Counts and logs scans for the node's lifetime; the callbacks and the worker report concurrently."""

    def __init__(self, stats: NodeStats, problems: ReasonLog) -> None:
        self._stats = stats
        self._problems = problems
        self._views_lock = threading.Lock()
        self._views_by_camera: Counter[str] = Counter()  # scans that carried each camera's view
        self._visible_sampled_s = 0.0

    def bad_cloud(self, exc: ValueError) -> None:
        """A cloud that cannot be read: ``skipped.bad_cloud``."""
        self._stats.count_skipped("bad_cloud")
        self._problems.report(f"bad_cloud: {exc}", f"cloud skipped: {exc}")

    def decoded(self, decoded: DecodedScan) -> None:
        """Cameras left out of the scan (``left_out.<reason>.<camera>``) and the views it carries."""
        for miss in decoded.left_out:
            self._stats.count_left_out(miss.reason, miss.camera)
            # keyed by the cloud's frame too: a second sensor in a frame tf does not know is a problem of its own
            reason = (f"{miss.reason} from {decoded.header.frame_id!r}" if miss.reason != BAD_CAMERA
                      else f"{miss.reason}: {miss.detail}")
            self._problems.report(reason, f"camera {miss.camera} left out of this scan: {miss.detail}",
                                  camera=miss.camera)
        with self._views_lock:
            self._views_by_camera.update(view.name for view in decoded.scan.cameras)

    def camera_views(self) -> list[tuple[str, int]]:
        """(camera, scans that carried its view) by name, for /diagnostics."""
        with self._views_lock:
            return sorted(self._views_by_camera.items())

    def processed(self, params: NodeParams, prediction: Prediction, alone_reason: str,
                  timings: dict[str, float]) -> None:
        """A published scan: ``processed``, why it did not adapt, its latency; the WARN / ERROR switches logged."""
        reason = "" if prediction.adapted else (alone_reason or prediction.skip_reason)
        fused = int(prediction.fused.sum()) if prediction.fused is not None else 0
        in_a_row = self._stats.record_scan(timings, prediction.adapted, prediction.kd_loss_before,
                                          prediction.kd_loss_after, skip_reason=reason, steps_run=prediction.steps_run,
                                          fused_points=fused, fusion_withheld=prediction.fusion_withheld)
        self._log_unadapted(reason, in_a_row)
        self._log_late(params, timings["total"])

    def failed(self, stamp_ns: int, exc: Exception) -> None:
        """A scan the worker could not finish: ``dropped.worker_error``."""
        self._stats.count_error(type(exc).__name__)
        self._problems.report(f"error.{type(exc).__name__}",
                              f"scan at {stamp_ns} ns failed: {type(exc).__name__}: {exc}")

    def sample_visible_points(self, params: NodeParams, decoded: DecodedScan) -> None:
        """Visible points per camera of one scan about every diagnostics period (a projection costs milliseconds)."""
        now = time.monotonic()
        if not params.cameras or params.cloud_only or now - self._visible_sampled_s < params["diagnostics_period_s"]:
            return
        self._visible_sampled_s = now
        visible = dict.fromkeys((cam.name for cam in params.cameras), 0)
        points = decoded.scan.points_xyz_m
        for view in decoded.scan.cameras:
            visible[view.name] = int(project_points(points, view).visible.sum()) if len(points) else 0
        self._stats.set_visible_points(visible)

    def _log_late(self, params: NodeParams, total_s: float) -> None:
        """The switch of /diagnostics to ERROR (late_scans_error late scans in a row), by reason like the rest."""
        limit, in_a_row = params["late_scans_error"], self._stats.late_in_a_row()
        if params["late_scan_s"] > 0 and in_a_row == limit:
            self._problems.report("late_scans", f"/diagnostics is ERROR: {in_a_row} scans in a row took longer than "
                                                f"late_scan_s {params['late_scan_s']:g} s (last {total_s:.3f} s)")

    def _log_unadapted(self, reason: str, in_a_row: int) -> None:
        """The engine's reasons and the switch to WARN in the log, by reason: first in full, then summarised.

        WHY: with the default budget on a CPU nothing adapted for a whole run
        and only /diagnostics said so. Reasons the node gave itself (a cloud
        answered alone) were logged when it answered them.
        """
        if reason and reason not in ALONE_REASONS:
            key = reason_key(reason)
            hint = UNADAPTED_HINTS.get(key)
            self._problems.report(f"unadapted.{key}", f"scan segmented without adaptation: {reason}"
                                                      + (f" ({hint})" if hint else ""))
        if in_a_row == UNADAPTED_WARN_SCANS and expects_adaptation(self._stats.mode, self._stats.strategy):
            self._problems.report("no_adaptation", f"/diagnostics is WARN: no adaptation in the last {in_a_row} "
                                                   f"scans (strategy {self._stats.strategy}); last reason: "
                                                   f"{reason or 'unknown'}")
