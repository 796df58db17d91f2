"""segment_node: the ROS 2 lifecycle node that segments every incoming cloud with TTT-KD.

Callbacks stay thin: subscriptions feed the approximate-time synchroniser and
put the clouds each callback answers (matched, or expired: see ros/pending.py),
with their camera messages, into a latest-wins slot as one group; one worker
thread turns each into a Scan
(decoding, tf lookups: off the executor), runs ``Segmenter.segment`` and
publishes. A slow model therefore drops stale scans (counted) instead of
queueing them. Configure reads the parameters and loads the model (a failure
returns FAILURE with a log line naming the parameter or file); activate
subscribes and starts the worker. With ``autostart`` (default) main() drives
both transitions, so the node runs without a lifecycle manager.

Every cloud ends in one named outcome on /diagnostics (ros/diagnostics.py):
processed, dropped.<reason> or skipped.<reason>. Bad input never stops the
node: an unparsable cloud is skipped, a bad image leaves its camera out of
that scan (no adaptation rather than no labels), a cloud its images never
match is answered alone. Runtime parameters (``ros2 param set``) are checked
in a set-parameters callback; adaptation knobs reach the engine between scans.
"""

from __future__ import annotations

import copy
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.task import Future
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Float64
from std_srvs.srv import SetBool, Trigger

from ttt_kd_ros.geometry import project_points
from ttt_kd_ros.labels import LABEL_SETS, LabelSet
from ttt_kd_ros.msgs.scan_messages import (
    BAD_CAMERA,
    CameraMessages,
    CloudHeader,
    DecodedScan,
    FrameMismatchError,
    ScanPolicy,
    empty_prediction,
    prediction_to_pointcloud2,
    read_cloud_header,
    scan_from_messages,
)
from ttt_kd_ros.parameters.segmenter_config import RUNTIME_ADAPT_FIELDS, engine_error_text, retune
from ttt_kd_ros.parameters.table import NODE_NAME, RUNTIME_PARAMETERS
from ttt_kd_ros.ros.compat import (
    backends,
    label_info_publisher,
    lookup_within,
    make_synchronizer,
    make_tf_lookup,
    release_tf_lookup,
)
from ttt_kd_ros.ros.diagnostics import (
    UNADAPTED_WARN_SCANS,
    NodeStats,
    diagnostic_array,
    expects_adaptation,
    reason_key,
)
from ttt_kd_ros.ros.params import (
    CameraParams,
    NodeParams,
    ParameterError,
    accept_integers_for_doubles,
    check_update,
    declare_label_parameters,
    read_parameters,
    segmenter_config,
)
from ttt_kd_ros.ros.pending import CAMERA_TIMEOUT, SYNC_OVERFLOW, SYNC_UNMATCHED, PendingCloud, PendingClouds
from ttt_kd_ros.ros.reason_log import ReasonLog
from ttt_kd_ros.ros.worker import LatestSlot, SlotWorker
from ttt_kd_ros.scan import CameraIntrinsics, CameraView, Scan
from ttt_kd_ros.segmenter import Segmenter

OUTPUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
"""RELIABLE: a best-effort publisher never reaches a reliable subscriber such as rviz2's default."""
LOG_SUMMARY_PERIOD_S = 30.0
SWEEP_PERIOD_S = 0.05
"""How often clouds waiting for their images are checked for expiry (ros/pending.py)."""
SILENT_CAMERA_GRACE_S = 0.1
"""While a camera is silent, a cloud still waits this long (or sync_slop_s, if longer) for images sent after it."""
ALONE_REASONS = frozenset({CAMERA_TIMEOUT, SYNC_UNMATCHED, SYNC_OVERFLOW})
"""Reasons the node logs where it answers the cloud alone (ros/pending.py), not again after segmenting it."""
UNADAPTED_HINTS = {
    "time_budget": "adapt.time_budget_s left no time for a step after the checks, voxels, teacher and targets: "
                   "raise it, lower max_points or teacher_resolution, or run on a GPU",
    "no_visible_point": "no point of the cloud projects into a camera image: check the extrinsics (tf or "
                        "camera.<name>.extrinsics) and the Image frame_id",
    "no_camera": "no camera view reached this scan (see left_out.* on /diagnostics)",
}
"""What an operator can do about an engine reason, appended to its first log line."""


@dataclass
class Job:
    """One cloud for the worker: its messages (decoded there, off the executor) and why it has no cameras, if so."""

    cloud: Any
    header: CloudHeader
    cameras: list[tuple[str, Any, Any]]  # (camera name, Image, CameraInfo), matched by the synchroniser
    received_s: float  # time.monotonic() when the cloud reached the node
    alone_reason: str = ""  # camera_timeout / sync_unmatched / sync_overflow: segmented without its cameras


def own_qos(profile: QoSProfile) -> QoSProfile:
    """A copy of ``profile`` for one entity.

    WHY: rclpy writes a topic's ``qos_overrides`` into the profile object it
    is handed, so one shared object (``qos_profile_sensor_data``) carried the
    cloud's override into every subscription created after it: a reliable
    cloud made both cameras reliable and a best-effort camera driver no
    longer connected.
    """
    return copy.copy(profile)


WARM_UP_POINTS = 2000
WARM_UP_IMAGE_PX = (640, 480)


def warm_up_scan(with_camera: bool, seed: int = 0) -> Scan:
    """A synthetic scan for the warm-up: points 2-5 m in front of one 640x480 pinhole camera at the cloud's origin."""
    rng = np.random.default_rng(seed)
    depth = rng.uniform(2.0, 5.0, WARM_UP_POINTS)
    points = np.stack([rng.uniform(-0.6, 0.6, WARM_UP_POINTS) * depth,
                       rng.uniform(-0.45, 0.45, WARM_UP_POINTS) * depth, depth], axis=1).astype(np.float32)
    width, height = WARM_UP_IMAGE_PX
    cameras = []
    if with_camera:
        intrinsics = CameraIntrinsics(K=np.array([[500.0, 0.0, width / 2], [0.0, 500.0, height / 2], [0, 0, 1]]),
                                      width_px=width, height_px=height)
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        cameras.append(CameraView(image_rgb=image, intrinsics=intrinsics, cam_from_cloud=np.eye(4), name="warm_up"))
    return Scan(points_xyz_m=points, intensity=np.full(WARM_UP_POINTS, 0.5, dtype=np.float32), cameras=cameras,
                frame_id="warm_up")


def fallback_label_set(num_classes: int) -> LabelSet:
    """Distinct colours for a checkpoint whose label set this package does not know."""
    golden = (np.arange(num_classes) * 0.618034) % 1.0
    colors = tuple(tuple(int(255 * c) for c in (h, 1.0 - h, 0.5 + 0.5 * np.cos(6.283 * h))) for h in golden)
    return LabelSet("unknown", tuple(f"class_{i}" for i in range(num_classes)), colors)


class SegmenterNode(LifecycleNode):
    """Cloud (+ N cameras) in, labeled cloud and diagnostics out; see the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.autostart = self.declare_parameter("autostart", True, ParameterDescriptor(
            description="Configure and activate at start-up (no lifecycle manager needed).", read_only=True)).value
        self.stats = NodeStats()
        self.params: NodeParams | None = None
        self.segmenter: Any = None
        self.label_set: LabelSet | None = None
        self._rng = np.random.default_rng(0)
        self._scan_policy = ScanPolicy()
        self._cameras: dict[str, CameraParams] = {}
        self._problems = ReasonLog(self.get_logger().warning, LOG_SUMMARY_PERIOD_S)
        self._slot: LatestSlot[list[Job]] = LatestSlot()
        self._worker: SlotWorker[list[Job]] | None = None
        self._handoff = threading.local()  # .jobs: what this thread's callback hands over at once (or None)
        self._pending = PendingClouds(1)
        self._output_pub = None
        self._diag_pub = None
        self._timings_pub = None  # ~/debug/timings: per-stage times of each scan
        self._latency_pub = None  # ~/debug/latency_ms: now minus the cloud's stamp when its output went out
        self._label_info_pub = None
        self._reset_srv = None
        self._enable_srv = None
        self._active = False  # the lifecycle state is active
        self._enabled = True  # ~/enable: inputs subscribed and the worker running while active
        self._diag_timer = None
        self.warm_up_s: float | None = None  # how long the last warm-up took; None: none since configure
        self._input_timers: list[Any] = []  # the pending clouds' sweep (not `_timers`: rclpy Node's own list)
        self._input_subscriptions: list[Any] = []  # not `_subscriptions`: that is rclpy Node's own list
        self._sync = None
        self._tf: Any = None  # compat.make_tf_lookup's object (lookup / lookup_latest / why_not)
        self._tf_subscriptions: list[Any] = []
        self._views_lock = threading.Lock()
        self._views_by_camera: Counter[str] = Counter()  # scans that carried each camera's view
        self._camera_seen_s: dict[str, float] = {}
        self._active_since_s = 0.0
        self._alone_logged = False
        self._changes_lock = threading.Lock()
        self._adapt_changes: dict[str, Any] = {}  # runtime adaptation knobs waiting for the next scan
        self._reset_requested = False
        self._visible_sampled_s = 0.0
        self.finished = Future()  # done after the lifecycle shutdown transition: main() then returns
        accept_integers_for_doubles(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            params = read_parameters(self)
            config = segmenter_config(params)
        except ParameterError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        if params["threads"] > 0:
            import torch

            torch.set_num_threads(int(params["threads"]))
        try:
            segmenter = Segmenter.from_config(config)
        except (ValueError, OSError, RuntimeError, KeyError) as exc:
            self.get_logger().error(f"configure failed loading the model (checkpoint {params['checkpoint']!r}, "
                                    f"teacher {params['teacher']!r}): {type(exc).__name__}: {engine_error_text(exc)}")
            return TransitionCallbackReturn.FAILURE
        needs_tf = [cam.name for cam in params.cameras if cam.cam_from_cloud is None]
        if needs_tf and not params.cloud_only:
            made = make_tf_lookup(self)
            if made is None:
                self.get_logger().error(f"configure failed: camera {needs_tf[0]} has no camera.{needs_tf[0]}."
                                        "extrinsics parameter and neither tf2_ros nor tf2_msgs is importable here "
                                        "(no way to follow /tf); give the extrinsics as parameters")
                return TransitionCallbackReturn.FAILURE
            self._tf, self._tf_subscriptions = made
            self.get_logger().info(f"extrinsics of {needs_tf} from tf ({self._tf.backend})")
        self.params = params
        self.segmenter = segmenter
        self.warm_up_s = None
        self.label_set = self._label_set_of(segmenter)
        declare_label_parameters(self, self.label_set)
        self._rng = np.random.default_rng(params["seed"])
        # the input cap lives in the one scan path (msgs.scan_messages), nowhere else in the node
        self._scan_policy = ScanPolicy(max_points=params["max_input_points"], label_set=self.label_set.name)
        self._cameras = {cam.name: cam for cam in params.cameras}
        self.stats.strategy = params["adapt.strategy"]
        self.stats.fusion = segmenter.fusion.mode if not params.cloud_only else "off"
        self.stats.mode = "cloud_only" if params.cloud_only else "adapt"
        self.stats.label_set = self.label_set.name
        self._output_pub = self.create_publisher(PointCloud2, params["output_topic"], own_qos(OUTPUT_QOS),
                                                 qos_overriding_options=QoSOverridingOptions.with_default_policies())
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._timings_pub = self.create_publisher(DiagnosticArray, "~/debug/timings", 10)
        self._latency_pub = self.create_publisher(Float64, "~/debug/latency_ms", 10)
        self.stats.set_late_limits(params["late_scan_s"], params["late_scans_error"])
        self._label_info_pub = label_info_publisher(self, "~/label_info")
        self._reset_srv = self.create_service(Trigger, "~/reset", self._on_reset)
        self._enable_srv = self.create_service(SetBool, "~/enable", self._on_enable)
        self.get_logger().info(
            f"configured: mode={self.stats.mode} strategy={self.stats.strategy} cameras="
            f"{[c.name for c in params.cameras]} cloud={params['cloud_topic']} output={params['output_topic']} "
            f"label_set={self.label_set.name}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        if self.params["warm_up"] and self.warm_up_s is None:
            self._warm_up()
        self._active = True
        if self._enabled:
            self._start_inputs()
        else:
            self.get_logger().info("active, but disabled by ~/enable: not subscribing until enabled")
        self._diag_timer = self.create_timer(self.params["diagnostics_period_s"], self._publish_diagnostics)
        if self._label_info_pub is not None:
            self._label_info_pub.publish(self.label_set, self.get_clock().now().to_msg())
        self._log_activation()
        return super().on_activate(state)

    def _warm_up(self) -> None:
        """One synthetic scan through the engine before the first real one, then the strategy restored.

        WHY: the first scan after start-up paid for lazy initialisation
        (kernels, allocator pools, the teacher's first pass) and, with no step
        time measured yet, could overrun its time budget. A failure here is
        logged and never stops activation: the real scans then pay instead.
        """
        start = time.perf_counter()
        try:
            steps = min(1, int(self.params["adapt.steps"]))
            prediction = self.segmenter.segment_steps(warm_up_scan(not self.params.cloud_only), [steps])[-1]
            self.segmenter.reset()  # an online strategy starts from the checkpoint, as without a warm-up
        except Exception as exc:  # any engine failure: activation goes on without the warm-up
            self.warm_up_s = 0.0
            self.get_logger().warning(f"warm-up failed, the first scan pays for initialisation: "
                                      f"{type(exc).__name__}: {exc}")
            return
        self.warm_up_s = time.perf_counter() - start
        self.get_logger().info(f"warm-up: one synthetic scan in {self.warm_up_s:.3f} s (steps_run "
                               f"{prediction.steps_run}; strategy restored)")

    def _start_inputs(self) -> None:
        """Worker, pairing and subscriptions: what activation and ``~/enable`` true start."""
        params = self.params
        self._slot = LatestSlot()
        self._worker = SlotWorker(self._slot, self._process_jobs, self._on_jobs_error)
        self._worker.start()
        self._active_since_s = time.monotonic()
        self._camera_seen_s = {}
        self._pending = PendingClouds(params["sync_queue_size"])
        qos_options = QoSOverridingOptions.with_default_policies
        self._input_subscriptions = [self.create_subscription(
            PointCloud2, params["cloud_topic"], self._on_cloud, own_qos(qos_profile_sensor_data),
            qos_overriding_options=qos_options())]
        if not params.cloud_only:
            names = ["cloud"]
            for cam in params.cameras:
                names += [f"{cam.name}/image", f"{cam.name}/camera_info"]
            self._sync = make_synchronizer(names, params["sync_queue_size"], params["sync_slop_s"], self._on_matched)
            for i, cam in enumerate(params.cameras):
                self._input_subscriptions.append(self.create_subscription(
                    Image, cam.image_topic, self._camera_feed(cam.name, 1 + 2 * i), own_qos(qos_profile_sensor_data),
                    qos_overriding_options=qos_options()))
                self._input_subscriptions.append(self.create_subscription(
                    CameraInfo, cam.info_topic, self._camera_feed(cam.name, 2 + 2 * i),
                    own_qos(qos_profile_sensor_data),
                    qos_overriding_options=qos_options()))
            self._input_timers.append(self.create_timer(SWEEP_PERIOD_S, self._sweep_pending))

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._active = False
        self._stop_inputs()
        self._stop_diagnostics()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        """Stop and release everything, and let main() return: a supervisor expects the process to exit."""
        self._active = False
        self._stop_inputs()
        self._stop_diagnostics()
        self._release()
        self.finished.set_result(True)
        return TransitionCallbackReturn.SUCCESS

    def _log_activation(self) -> None:
        """One line a robot operator can check: device, model, teacher, adaptation settings, cameras, backends."""
        import torch

        params, seg = self.params, self.segmenter
        adapt = getattr(getattr(seg, "strategy", None), "config", None)
        teacher = getattr(getattr(seg, "teacher", None), "teacher_id", "none")
        cameras = ", ".join(
            f"{c.name} ({'extrinsics in ' + repr(c.parent_frame) if c.cam_from_cloud is not None else 'tf'}, "
            f"frame {c.frame_id or 'from image header'})" for c in params.cameras) or "none"
        settings = (f"strategy={adapt.strategy} steps={adapt.steps} lr={adapt.lr:g} optimizer={adapt.optimizer} "
                    f"params={adapt.params} bn_train={adapt.bn_train} kd_points_per_step={adapt.kd_points_per_step} "
                    f"loss={adapt.loss} time_budget_s={adapt.time_budget_s} guard_kd_ratio={adapt.guard_kd_ratio} "
                    f"unadapted_weight={adapt.unadapted_weight}") if adapt is not None else "none"
        fusion = getattr(seg, "fusion", None)
        settings += f"; fusion: {fusion.mode} weight_2d={fusion.weight_2d:g}" if fusion is not None else ""
        validated = ("the checkpoint's validated settings except " + (", ".join(params.given) or "none")
                     if params["use_validated"] else "the declared parameters (use_validated false)")
        self.get_logger().info(
            f"active: device={getattr(seg, 'device', '?')} threads={torch.get_num_threads()} "
            f"checkpoint={params['checkpoint']!r} label_set={self.label_set.name} "
            f"({self.label_set.num_classes} classes) teacher={teacher} max_points={params['max_points']}; "
            f"adaptation: {settings} (from {validated}); mode={self.stats.mode}; cameras: {cameras}; "
            f"output={params['output_topic']} ({params['output_layout']}); backends={backends()}")

    def _stop_diagnostics(self) -> None:
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None

    def _stop_inputs(self, reason: str = "shutdown") -> None:
        """Unsubscribe, stop pairing and the worker (its scan finishes); clouds still waiting: ``dropped.<reason>``."""
        for sub in self._input_subscriptions:
            self.destroy_subscription(sub)
        self._input_subscriptions = []
        self._sync = None
        for timer in self._input_timers:
            self.destroy_timer(timer)
        self._input_timers = []
        waiting = self._pending.drain()
        if waiting:
            self.stats.count_dropped(reason, len(waiting))
        if self._worker is not None:
            if not self._worker.stop(timeout_s=10.0):
                self.get_logger().warning("worker did not finish its scan within 10 s")
            self._worker = None

    def _release(self) -> None:
        for pub in (self._output_pub, self._diag_pub, self._timings_pub, self._latency_pub):
            if pub is not None:
                self.destroy_publisher(pub)
        self._output_pub = self._diag_pub = self._timings_pub = self._latency_pub = None
        if self._label_info_pub is not None:
            self._label_info_pub.destroy()
            self._label_info_pub = None
        for srv in (self._reset_srv, self._enable_srv):
            if srv is not None:
                self.destroy_service(srv)
        self._reset_srv = self._enable_srv = None
        release_tf_lookup(self, self._tf, self._tf_subscriptions)
        self._tf_subscriptions, self._tf = [], None
        self.segmenter = None

    # ---- runtime parameters and services (executor thread) ---------------------------------------------------

    def _on_set_parameters(self, parameters: list[Any]) -> SetParametersResult:
        """Accept a ``ros2 param set`` of a runtime knob after checking it; adaptation knobs wait for the next scan.

        rclpy itself refuses read-only parameters and wrong types before this
        runs; parameters other than the runtime ones (declarations, labels,
        QoS overrides) pass through untouched.
        """
        changes = {p.name: p.value for p in parameters if p.name in RUNTIME_PARAMETERS}
        if not changes or self.params is None:
            return SetParametersResult(successful=True)
        try:
            checked = check_update(self.params.values, changes)
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.params.values.update(checked)  # node-level values (thresholds, timeouts) apply at once
        if {"late_scan_s", "late_scans_error"} & set(checked):
            self.stats.set_late_limits(self.params["late_scan_s"], self.params["late_scans_error"])
        adapt = {name: value for name, value in checked.items() if name in RUNTIME_ADAPT_FIELDS}
        if adapt:
            with self._changes_lock:
                self._adapt_changes.update(adapt)
        self.get_logger().info(f"parameters set: {checked} (adaptation knobs apply from the next scan)")
        return SetParametersResult(successful=True)

    def _on_reset(self, request: Any, response: Any) -> Any:
        """~/reset (std_srvs/Trigger): the strategy's source weights back before the next scan."""
        with self._changes_lock:
            self._reset_requested = True
        online = self.segmenter is not None and not getattr(self.segmenter.strategy, "episodic", True)
        response.success = True
        response.message = ("online adaptation state returns to the checkpoint before the next scan" if online else
                            f"strategy {self.stats.strategy} keeps nothing between scans; reset before the next scan")
        self.get_logger().info(f"~/reset: {response.message}")
        return response

    def _on_enable(self, request: Any, response: Any) -> Any:
        """~/enable (std_srvs/SetBool): false unsubscribes and stops the worker, true subscribes again; no transition.

        WHY: an operator pauses perception (a docked robot, a CPU needed
        elsewhere) without a lifecycle manager; /diagnostics goes on saying so.
        """
        wanted = bool(request.data)
        changed = wanted != self._enabled
        self._enabled = self.stats.enabled = wanted
        if changed and self._active:
            if wanted:
                self._start_inputs()
            else:
                self._stop_inputs(reason="disabled")
        state = "enabled: subscribed, segmenting" if wanted else "disabled: unsubscribed, no work"
        response.success = True
        response.message = (state if self._active else f"{state} once active") + ("" if changed else " (already)")
        self.get_logger().info(f"~/enable: {response.message}")
        return response

    # ---- callbacks (executor threads: keep them cheap) -------------------------------------------------------

    def _camera_feed(self, camera: str, index: int) -> Callable[[Any], None]:
        def feed(msg: Any) -> None:
            self._camera_seen_s[camera] = time.monotonic()
            sync = self._sync
            if sync is not None:
                sync.add(index, msg)

        return feed

    def _silent_cameras(self) -> dict[str, float]:
        """Camera name -> when it went silent (its last message + camera_timeout_s), for each one silent now."""
        timeout = self.params["camera_timeout_s"]
        if timeout <= 0:
            return {}
        now = time.monotonic()
        went_silent = {c.name: self._camera_seen_s.get(c.name, self._active_since_s) + timeout
                       for c in self.params.cameras}
        return {name: at for name, at in went_silent.items() if at < now}

    @contextmanager
    def _one_handoff(self) -> Iterator[None]:
        """Every job a callback submits (nested synchroniser callbacks included) reaches the slot as one group.

        WHY: a cloud answered alone and the matched cloud that ends it come
        out of the same callback; handed over one by one, the second replaced
        the first in the latest-wins slot and the unmatched cloud was counted
        as dropped.stale, never answered. A group replaces only an older group.
        """
        if getattr(self._handoff, "jobs", None) is not None:  # nested: the outer callback hands over
            yield
            return
        self._handoff.jobs = []
        try:
            yield
        finally:
            jobs, self._handoff.jobs = self._handoff.jobs, None
            if jobs:
                replaced = self._slot.replace(jobs)
                if replaced:
                    self.stats.count_dropped("stale", len(replaced))

    def _on_cloud(self, msg: PointCloud2) -> None:
        with self._one_handoff():
            self._take_cloud(msg)

    def _take_cloud(self, msg: PointCloud2) -> None:
        self.stats.count_received()
        received_s = time.monotonic()
        try:
            header = read_cloud_header(msg)  # the stamp is converted here, once, for refusal, pairing and the Scan
        except ValueError as exc:
            self._skip_cloud(exc)
            return
        refusal = self._stamp_refusal(header.stamp_ns) or self._output_refusal()
        if refusal:
            self.stats.count_skipped(refusal)
            self._problems.report(refusal, f"cloud refused: {refusal}" + (
                f" (nothing subscribes to {self.params['output_topic']}; strategy {self.stats.strategy} keeps "
                "nothing between scans, so the scan is not segmented; skip_without_subscriber: false to segment "
                "anyway)" if refusal == "no_subscriber" else ""))
            return
        if self.params.cloud_only:
            self._submit(Job(msg, header, [], received_s))
            return
        # Pair first: images that arrived before this cloud match it now, whatever the cameras' silence says.
        cloud = PendingCloud(msg, header.stamp_ns, received_s, header)
        for expired, reason in self._pending.add(cloud):
            self._answer_alone(expired, reason)
        sync = self._sync
        if sync is not None:
            sync.add(0, msg)

    def _on_matched(self, cloud_msg: PointCloud2, *camera_msgs: Any) -> None:
        with self._one_handoff():
            self._take_match(cloud_msg, camera_msgs)

    def _take_match(self, cloud_msg: PointCloud2, camera_msgs: tuple[Any, ...]) -> None:
        cloud, older = self._pending.matched(cloud_msg)
        for expired, reason in older:
            self._answer_alone(expired, reason)
        if cloud is None:  # answered alone already (timed out); its late images change nothing
            return
        if self._alone_logged:
            self._alone_logged = False
            self.get_logger().info("clouds are pairing with their images again")
        pairs = list(zip(camera_msgs[0::2], camera_msgs[1::2], strict=True))
        cameras = [(cam.name, image, info) for cam, (image, info) in zip(self.params.cameras, pairs, strict=True)]
        self._submit(Job(cloud.msg, cloud.header, cameras, cloud.arrived_s))

    def _sweep_pending(self) -> None:
        """Answer clouds whose images will not come (timer): a silent camera, or waiting camera_timeout_s."""
        silent = self._silent_cameras()
        grace = max(self.params["sync_slop_s"], SILENT_CAMERA_GRACE_S)
        with self._one_handoff():
            for expired, reason in self._pending.sweep(time.monotonic(), self.params["camera_timeout_s"],
                                                       min(silent.values(), default=None), grace):
                if reason == CAMERA_TIMEOUT and not self._alone_logged:
                    self._alone_logged = True
                    self.get_logger().warning(
                        f"no message from camera(s) {sorted(silent)} for {self.params['camera_timeout_s']} s: "
                        "segmenting clouds alone (no adaptation) until they are back")
                self._answer_alone(expired, reason)

    def _answer_alone(self, cloud: PendingCloud, reason: str) -> None:
        """A cloud its images did not match: segmented without cameras, ``unadapted.<reason>`` on /diagnostics."""
        if reason != CAMERA_TIMEOUT:
            self._problems.report(reason, f"cloud at {cloud.stamp_ns} ns answered without adaptation: {reason} "
                                          "(no image set matched it within sync_slop_s)")
        self._submit(Job(cloud.msg, cloud.header, [], cloud.arrived_s, alone_reason=reason))

    def _output_refusal(self) -> str:
        """"no_subscriber" while nothing reads the output and the strategy keeps nothing between scans.

        WHY: segmenting a scan nobody reads costs a robot's CPU or GPU for
        nothing; a per-scan strategy loses nothing by skipping it, an online
        one would miss an update, so it segments on.
        """
        if not self.params["skip_without_subscriber"] or self._output_pub.get_subscription_count() > 0:
            return ""
        strategy = self.segmenter.strategy
        online = strategy.name != "none" and not getattr(strategy, "episodic", True)
        return "" if online else "no_subscriber"

    def _stamp_refusal(self, stamp_ns: int) -> str:
        now_ns = self.get_clock().now().nanoseconds
        max_age, max_future = self.params["max_cloud_age_s"], self.params["max_future_s"]
        if max_age > 0 and now_ns - stamp_ns > max_age * 1e9:
            return "stamp_too_old"
        if max_future > 0 and stamp_ns - now_ns > max_future * 1e9:
            return "stamp_in_future"
        return ""

    def _submit(self, job: Job) -> None:
        """Hand ``job`` to the worker with the rest of this callback's jobs (see _one_handoff)."""
        jobs = getattr(self._handoff, "jobs", None)
        if jobs is not None:
            jobs.append(job)
            return
        with self._one_handoff():
            self._handoff.jobs.append(job)

    def _skip_cloud(self, exc: ValueError) -> None:
        self.stats.count_skipped("bad_cloud")
        self._problems.report(f"bad_cloud: {exc}", f"cloud skipped: {exc}")

    # ---- worker thread ---------------------------------------------------------------------------------------

    def _extrinsics(self, camera: CameraMessages, header: CloudHeader) -> np.ndarray:
        """cam_from_cloud of one camera for this cloud: the parameter (in its own frame only) or tf, off the executor.

        LookupError (FrameMismatchError for a parameter given in another frame)
        leaves the camera out of this scan with the reason.
        """
        cam = self._cameras[camera.name]
        cloud_frame = header.frame_id.lstrip("/")
        if cam.cam_from_cloud is not None:
            if cloud_frame != cam.parent_frame.lstrip("/"):
                raise FrameMismatchError(
                    f"camera.{cam.name}.extrinsics are given in {cam.parent_frame!r} (camera.{cam.name}.parent_frame) "
                    f"but this cloud is in {header.frame_id!r}: not applied; publish the cloud in that frame or set "
                    "parent_frame (or drop the extrinsics and use tf)")
            return cam.cam_from_cloud
        camera_frame = (cam.frame_id or str(getattr(camera.image.header, "frame_id", ""))).lstrip("/")
        if not camera_frame:
            raise LookupError(f"camera {cam.name}: the Image header has no frame_id and camera.{cam.name}.frame_id "
                              "is unset, so there is no frame to look up in tf")
        if self._tf is None:
            raise LookupError(f"no transform from {header.frame_id!r} to {camera_frame!r}: tf is not followed here")
        return lookup_within(self._tf, camera_frame, cloud_frame, header.stamp_ns, self.params["tf_tolerance_s"])

    def _apply_changes(self) -> None:
        """Runtime adaptation knobs and a requested reset, between two scans (the engine is not thread-safe)."""
        with self._changes_lock:
            changes, self._adapt_changes = self._adapt_changes, {}
            reset, self._reset_requested = self._reset_requested, False
        if changes:
            try:
                config = retune(self.segmenter, changes)
            except ParameterError as exc:
                self.get_logger().error(f"runtime parameters not applied: {exc}")
            else:
                self.get_logger().info(f"adaptation now: steps={config.steps} lr={config.lr:g} "
                                       f"kd_points_per_step={config.kd_points_per_step} loss={config.loss} "
                                       f"time_budget_s={config.time_budget_s}")
        if reset:
            self.segmenter.reset()
            self.stats.count_reset()

    def _decode(self, job: Job) -> DecodedScan | None:
        """The job's messages -> DecodedScan (None: the cloud is unusable, counted as skipped.bad_cloud)."""
        cameras = [CameraMessages(name, image, info) for name, image, info in job.cameras]
        try:
            decoded = scan_from_messages(job.cloud, cameras, self._extrinsics, self._scan_policy, self._rng,
                                         job.header)
        except ValueError as exc:
            self._skip_cloud(exc)
            return None
        for miss in decoded.left_out:
            self.stats.count_left_out(miss.reason, miss.camera)
            # keyed by the cloud's frame too: a second sensor in a frame tf does not know is a problem of its own
            reason = (f"{miss.reason} from {job.header.frame_id!r}" if miss.reason != BAD_CAMERA
                      else f"{miss.reason}: {miss.detail}")
            self._problems.report(reason, f"camera {miss.camera} left out of this scan: {miss.detail}",
                                  camera=miss.camera)
        with self._views_lock:
            self._views_by_camera.update(view.name for view in decoded.scan.cameras)
        return decoded

    def _process_jobs(self, jobs: list[Job]) -> None:
        """One hand-off's clouds, oldest first; an exception costs only the scan that raised it."""
        for job in jobs:
            try:
                self._process(job)
            except Exception as exc:  # counted per scan (dropped.worker_error); the group's other scans go on
                self._on_worker_error(job, exc)

    def _on_jobs_error(self, jobs: list[Job], exc: Exception) -> None:
        for job in jobs:
            self._on_worker_error(job, exc)

    def _process(self, job: Job) -> None:
        start = time.monotonic()
        self._apply_changes()
        t0 = time.perf_counter()
        decoded = self._decode(job)
        if decoded is None:
            return
        convert_s = time.perf_counter() - t0
        scan = decoded.scan
        prediction = empty_prediction("no_valid_points") if scan.num_points == 0 else self.segmenter.segment(scan)
        timings = dict(prediction.timings_s)
        t_encode = time.perf_counter()
        out = prediction_to_pointcloud2(decoded, prediction, self.label_set, self.params["output_min_confidence"],
                                        organized=self.params["output_layout"] == "organized")
        t_publish = time.perf_counter()
        self._output_pub.publish(out)
        done = time.perf_counter()
        timings.update({"convert": convert_s, "wait": start - job.received_s, "encode": t_publish - t_encode,
                        "publish": done - t_publish})
        timings["total"] = time.monotonic() - job.received_s
        # pipeline latency: the node's clock (sim time when used) minus the cloud's stamp, sensor to output
        timings["pipeline"] = (self.get_clock().now().nanoseconds - job.header.stamp_ns) / 1e9
        reason = "" if prediction.adapted else (job.alone_reason or prediction.skip_reason)
        fused = int(prediction.fused.sum()) if prediction.fused is not None else 0
        in_a_row = self.stats.record_scan(timings, prediction.adapted, prediction.kd_loss_before,
                                          prediction.kd_loss_after, skip_reason=reason, steps_run=prediction.steps_run,
                                          fused_points=fused)
        self._log_unadapted(reason, in_a_row)
        self._log_late(timings["total"])
        self._publish_debug(job.header, timings)
        self._sample_visible_points(decoded)

    def _log_late(self, total_s: float) -> None:
        """The switch of /diagnostics to ERROR (late_scans_error late scans in a row), by reason like the rest."""
        limit, in_a_row = self.params["late_scans_error"], self.stats.late_in_a_row()
        if self.params["late_scan_s"] > 0 and in_a_row == limit:
            self._problems.report("late_scans", f"/diagnostics is ERROR: {in_a_row} scans in a row took longer than "
                                                f"late_scan_s {self.params['late_scan_s']:g} s (last {total_s:.3f} s)")

    def _publish_debug(self, header: CloudHeader, timings: dict[str, float]) -> None:
        """~/debug/timings (each stage of this scan, ms) and ~/debug/latency_ms (now - the cloud's stamp), when read.

        Stamped with the cloud's stamp, so a plot lines a scan's stages up
        with its latency; nothing is built while nobody subscribes.
        """
        latency_ms = 1000.0 * timings["pipeline"]
        if self._latency_pub.get_subscription_count() > 0:
            self._latency_pub.publish(Float64(data=latency_ms))
        if self._timings_pub.get_subscription_count() == 0:
            return
        msg = DiagnosticArray()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(header.stamp_ns, 1_000_000_000)
        msg.header.frame_id = header.frame_id
        values = [KeyValue(key=f"{stage}_ms", value=f"{1000.0 * seconds:.3f}") for stage, seconds in timings.items()]
        msg.status = [DiagnosticStatus(level=DiagnosticStatus.OK, name=f"{self.get_name()}: scan timings",
                                       hardware_id=self.get_fully_qualified_name(), values=values)]
        self._timings_pub.publish(msg)

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
        if in_a_row == UNADAPTED_WARN_SCANS and expects_adaptation(self.stats.mode, self.stats.strategy):
            self._problems.report("no_adaptation", f"/diagnostics is WARN: no adaptation in the last {in_a_row} "
                                                   f"scans (strategy {self.stats.strategy}); last reason: "
                                                   f"{reason or 'unknown'}")

    def _sample_visible_points(self, decoded: DecodedScan) -> None:
        """Visible points per camera of one scan about every diagnostics period (a projection costs milliseconds)."""
        now = time.monotonic()
        if not self._cameras or self.params.cloud_only or now - self._visible_sampled_s < \
                self.params["diagnostics_period_s"]:
            return
        self._visible_sampled_s = now
        visible = dict.fromkeys(self._cameras, 0)
        points = decoded.scan.points_xyz_m
        for view in decoded.scan.cameras:
            visible[view.name] = int(project_points(points, view).visible.sum()) if len(points) else 0
        self.stats.set_visible_points(visible)

    def _on_worker_error(self, job: Job, exc: Exception) -> None:
        self.stats.count_error(type(exc).__name__)
        self._problems.report(f"error.{type(exc).__name__}",
                              f"scan at {job.header.stamp_ns} ns failed: {type(exc).__name__}: {exc}")

    def _publish_diagnostics(self) -> None:
        sync = getattr(self._sync, "synchronizer", None)
        overflow = getattr(sync, "overflow_by_input", None)
        if overflow is not None:
            self.stats.set_sync_overflow({name.name: n for name, n in zip(self._sync.inputs, overflow, strict=True)})
        snap = self.stats.snapshot()
        msg = diagnostic_array(snap, f"{self.get_name()}: segmenter", self.get_fully_qualified_name(),
                               self.get_clock().now().to_msg())
        with self._views_lock:
            views = sorted(self._views_by_camera.items())
        msg.status[0].values += [KeyValue(key=f"camera_views.{name}", value=str(n)) for name, n in views]
        self._diag_pub.publish(msg)

    @staticmethod
    def _label_set_of(segmenter: Any) -> LabelSet:
        name = getattr(segmenter, "label_set", "")
        if isinstance(name, LabelSet):
            return name
        if name in LABEL_SETS:
            return LABEL_SETS[name]
        return fallback_label_set(int(getattr(segmenter, "num_classes", 20)))


def main(argv: list[str] | None = None) -> int:
    """Run the node until Ctrl-C, ROS shutdown or the lifecycle shutdown transition; 1 when configure or activate
    fails."""
    rclpy.init(args=sys.argv if argv is None else argv)
    node: SegmenterNode | None = None
    code = 0
    try:
        node = SegmenterNode()
        if node.autostart:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                return 1
            if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                return 1
        rclpy.spin_until_future_complete(node, node.finished)  # the response to `shutdown` is sent before
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ParameterError as exc:
        print(f"segment_node: {exc}", file=sys.stderr)
        code = 1
    finally:
        if node is not None:
            node._stop_inputs()
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
