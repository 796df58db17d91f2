"""segment_node: the ROS 2 lifecycle node that segments every incoming cloud with TTT-KD.

This module keeps the lifecycle, the wiring and the publishing; the jobs in
between have modules of their own: pairing clouds with their cameras
(ros/pairing.py, the clouds waiting in ros/pending.py), the hand-off to the
worker (ros/handoff.py), the cameras' extrinsics (ros/extrinsics.py),
runtime parameters and ~/reset (ros/runtime_changes.py) and what each scan
counts and logs (ros/scan_outcomes.py).

A scan enters this module twice: the cloud callback admits the cloud and
hands it to the pairing, whose answers (matched, or expired) go into a
latest-wins slot as one group per callback; the worker thread takes them
back here, turns each into a Scan (decoding, tf lookups: off the executor),
runs ``Segmenter.segment`` and publishes. A slow model therefore drops stale
scans (counted) instead of queueing them. Configure reads the parameters and
loads the model (a failure returns FAILURE with a log line naming the
parameter or file); activate subscribes and starts the worker. With
``autostart`` (default) main() drives both transitions, so the node runs
without a lifecycle manager.

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
import time
from collections.abc import Callable
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

from ttt_kd_ros.labels import LABEL_SETS, LabelSet
from ttt_kd_ros.msgs.scan_messages import (
    CloudHeader,
    DecodedScan,
    ScanPolicy,
    empty_prediction,
    prediction_to_pointcloud2,
    read_cloud_header,
    scan_from_messages,
)
from ttt_kd_ros.parameters.segmenter_config import engine_error_text
from ttt_kd_ros.parameters.table import NODE_NAME, RUNTIME_PARAMETERS
from ttt_kd_ros.ros.admission import NO_SUBSCRIBER, output_refusal, stamp_refusal
from ttt_kd_ros.ros.compat import backends, label_info_publisher
from ttt_kd_ros.ros.diagnostics import NodeStats, diagnostic_array
from ttt_kd_ros.ros.extrinsics import CameraExtrinsics
from ttt_kd_ros.ros.handoff import Handoff, Job
from ttt_kd_ros.ros.pairing import SWEEP_PERIOD_S, Pairing
from ttt_kd_ros.ros.params import (
    NodeParams,
    ParameterError,
    accept_integers_for_doubles,
    declare_label_parameters,
    read_parameters,
    segmenter_config,
)
from ttt_kd_ros.ros.pending import PendingCloud
from ttt_kd_ros.ros.reason_log import ReasonLog
from ttt_kd_ros.ros.runtime_changes import RuntimeChanges
from ttt_kd_ros.ros.scan_outcomes import ScanOutcomes
from ttt_kd_ros.ros.worker import LatestSlot, SlotWorker
from ttt_kd_ros.scan import CameraIntrinsics, CameraView, Scan
from ttt_kd_ros.segmenter import Segmenter

OUTPUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
"""RELIABLE: a best-effort publisher never reaches a reliable subscriber such as rviz2's default."""
LOG_SUMMARY_PERIOD_S = 30.0


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
"""Small on purpose: two nodes warming up side by side on a 2-core machine must not starve each other. The step
cost it logs is a small scan's; a large scan's steps run on crops of adapt.crop_voxels and cost more (the start-up
log names the point count so nobody mistakes one for the other)."""
WARM_UP_IMAGE_PX = (640, 480)


def warm_up_costs(prediction: Any) -> str:
    """The measured cost of one adaptation step and of the final forward, in words for the start-up log.

    Why: how many steps a scan gets is its time budget minus the fixed stages, divided by the step cost; a
    robot team reads both numbers here before the first real scan instead of guessing from the budget.
    """
    timings = prediction.timings_s
    parts = []
    if prediction.steps_run:
        parts.append(f"one adaptation step {1000 * timings.get('ttt_step', 0.0) / prediction.steps_run:.1f} ms")
    if "encoder" in timings:  # the frozen-prefix path: what never moves once per scan, the final forward the rest
        parts.append(f"the frozen prefix (the encoder and any decoder stage before the first that moves), once per "
                     f"scan, {1000 * timings['encoder']:.1f} ms")
        parts.append(f"the final forward (the stages that move) {1000 * timings.get('forward', 0.0):.1f} ms")
    else:
        parts.append(f"the final forward {1000 * timings.get('forward', 0.0):.1f} ms")
    fixed = sum(v for k, v in timings.items() if k != "ttt_step")
    parts.append(f"every stage but the steps {1000 * fixed:.1f} ms")
    return ", ".join(parts) + f" ({WARM_UP_POINTS} points)"


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
        self._problems = ReasonLog(self.get_logger().warning, LOG_SUMMARY_PERIOD_S)
        self._outcomes = ScanOutcomes(self.stats, self._problems)
        self._changes = RuntimeChanges(self.stats, self.get_logger())
        self._pairing = Pairing(self.get_logger(), self._problems)
        self._extrinsics: CameraExtrinsics | None = None  # from configure to cleanup
        self._handoff = Handoff(LatestSlot(), self.stats)  # a fresh slot each time the inputs start
        self._worker: SlotWorker[list[Job]] | None = None
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
        self._input_timers: list[Any] = []  # the pairing's sweep (not `_timers`: rclpy Node's own list)
        self._input_subscriptions: list[Any] = []  # not `_subscriptions`: that is rclpy Node's own list
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
        try:
            self._extrinsics = CameraExtrinsics.follow(self, params)
        except ParameterError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.params = params
        self.segmenter = segmenter
        self.warm_up_s = None
        self.label_set = self._label_set_of(segmenter)
        declare_label_parameters(self, self.label_set)
        self._rng = np.random.default_rng(params["seed"])
        # the input cap lives in the one scan path (msgs.scan_messages), nowhere else in the node
        self._scan_policy = ScanPolicy(max_points=params["max_input_points"], label_set=self.label_set.name)
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
            # reset inside: an online strategy starts from the checkpoint, as without a warm-up
            prediction = self.segmenter.warm_up(warm_up_scan(not self.params.cloud_only), steps)
        except Exception as exc:  # any engine failure: activation goes on without the warm-up
            self.warm_up_s = 0.0
            self.get_logger().warning(f"warm-up failed, the first scan pays for initialisation: "
                                      f"{type(exc).__name__}: {exc}")
            return
        self.warm_up_s = time.perf_counter() - start
        self.get_logger().info(f"warm-up: one synthetic scan in {self.warm_up_s:.3f} s (steps_run "
                               f"{prediction.steps_run}; strategy restored); {warm_up_costs(prediction)}")

    def _start_inputs(self) -> None:
        """Worker, pairing and subscriptions: what activation and ``~/enable`` true start."""
        params = self.params
        self._handoff = Handoff(LatestSlot(), self.stats)
        self._worker = SlotWorker(self._handoff.slot, self._process_jobs, self._on_jobs_error,
                                  on_start=self.segmenter.bind_thread)
        self._worker.start()
        if not params.cloud_only:
            self._pairing.start(params, self._handoff)
        self._input_subscriptions = [self._sensor_subscription(PointCloud2, params["cloud_topic"], self._on_cloud)]
        if not params.cloud_only:
            for i, cam in enumerate(params.cameras):
                on_image, on_info = self._pairing.camera_feeds(i)
                self._input_subscriptions += [self._sensor_subscription(Image, cam.image_topic, on_image),
                                              self._sensor_subscription(CameraInfo, cam.info_topic, on_info)]
            self._input_timers.append(self.create_timer(SWEEP_PERIOD_S, self._pairing.sweep))

    def _sensor_subscription(self, msg_type: Any, topic: str, callback: Callable[[Any], None]) -> Any:
        """A sensor-data subscription whose QoS a user may override (``qos_overrides.<topic>.subscription.*``)."""
        return self.create_subscription(msg_type, topic, callback, own_qos(qos_profile_sensor_data),
                                        qos_overriding_options=QoSOverridingOptions.with_default_policies())

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
                    f"unadapted_weight={adapt.unadapted_weight} guard_kd_max={adapt.guard_kd_max:g} "
                    f"prior_strength={adapt.prior_strength:g} prior_iterations={adapt.prior_iterations}") \
            if adapt is not None else "none"
        fusion = getattr(seg, "fusion", None)
        settings += (f"; fusion: {fusion.mode} weight_2d={fusion.weight_2d:g} max_disagreement="
                     f"{fusion.max_disagreement:g}") if fusion is not None else ""
        if fusion is not None and fusion.shift_adaptive:
            settings += (f" per-scan share: +{fusion.shift_slope_3d:g} x (3D shift - {fusion.shift_ref_3d:g}) "
                         f"- {fusion.shift_slope_2d:g} x (teacher shift - {fusion.shift_ref_2d:g})")
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
        for timer in self._input_timers:
            self.destroy_timer(timer)
        self._input_timers = []
        waiting = self._pairing.stop()
        if waiting:
            self.stats.count_dropped(reason, waiting)
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
        if self._extrinsics is not None:
            self._extrinsics.release(self)
            self._extrinsics = None
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
            checked = self._changes.accept(self.params, changes)
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.get_logger().info(f"parameters set: {checked} (adaptation knobs apply from the next scan)")
        return SetParametersResult(successful=True)

    def _on_reset(self, request: Any, response: Any) -> Any:
        """~/reset (std_srvs/Trigger): the strategy's source weights back before the next scan."""
        self._changes.request_reset()
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

    def _on_cloud(self, msg: PointCloud2) -> None:
        """Admit the cloud, then answer it at once (cloud_only) or hand it to the pairing; one hand-off group."""
        with self._handoff.group():
            cloud = self._admit(msg)
            if cloud is None:
                return
            if self.params.cloud_only:
                self._handoff.on_pair(cloud, ())
            else:
                self._pairing.take(cloud)

    def _admit(self, msg: PointCloud2) -> PendingCloud | None:
        """The cloud's one record (its header read once, for the refusals, the pairing and the Scan), or None
        when it is skipped (counted and logged)."""
        self.stats.count_received()
        received_s = time.monotonic()
        try:
            header = read_cloud_header(msg)
        except ValueError as exc:
            self._outcomes.bad_cloud(exc)
            return None
        params = self.params
        refusal = (stamp_refusal(header.stamp_ns, self.get_clock().now().nanoseconds, params["max_cloud_age_s"],
                                 params["max_future_s"])
                   or output_refusal(params["skip_without_subscriber"], self._output_pub.get_subscription_count(),
                                     self.segmenter.strategy))
        if refusal:
            self.stats.count_skipped(refusal)
            self._problems.report(refusal, f"cloud refused: {refusal}" + (
                f" (nothing subscribes to {self.params['output_topic']}; strategy {self.stats.strategy} keeps "
                "nothing between scans, so the scan is not segmented; skip_without_subscriber: false to segment "
                "anyway)" if refusal == NO_SUBSCRIBER else ""))
            return None
        return PendingCloud(msg, header, received_s)

    # ---- worker thread ---------------------------------------------------------------------------------------

    def _process_jobs(self, jobs: list[Job]) -> None:
        """One hand-off's clouds, oldest first; an exception costs only the scan that raised it."""
        for job in jobs:
            try:
                self._process(job)
            except Exception as exc:  # counted per scan (dropped.worker_error); the group's other scans go on
                self._outcomes.failed(job.cloud.stamp_ns, exc)

    def _on_jobs_error(self, jobs: list[Job], exc: Exception) -> None:
        for job in jobs:
            self._outcomes.failed(job.cloud.stamp_ns, exc)

    def _process(self, job: Job) -> None:
        """One cloud, on the worker thread: waiting changes applied, decoded, segmented, published, reported."""
        start = time.monotonic()
        self._changes.apply(self.segmenter)
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
        timings.update({"convert": convert_s, "wait": start - job.cloud.arrived_s, "encode": t_publish - t_encode,
                        "publish": done - t_publish})
        timings["total"] = time.monotonic() - job.cloud.arrived_s
        # pipeline latency: the node's clock (sim time when used) minus the cloud's stamp, sensor to output
        timings["pipeline"] = (self.get_clock().now().nanoseconds - job.cloud.stamp_ns) / 1e9
        self._outcomes.processed(self.params, prediction, job.alone_reason, timings)
        self._publish_debug(job.cloud.header, timings)
        self._outcomes.sample_visible_points(self.params, decoded)

    def _decode(self, job: Job) -> DecodedScan | None:
        """The job's messages -> DecodedScan (None: the cloud is unusable, counted as skipped.bad_cloud).

        The extrinsics object, not the node, answers the message layer's
        question for each camera's cam_from_cloud (tf lookups happen here,
        off the executor).
        """
        try:
            decoded = scan_from_messages(job.cloud.msg, job.cameras, self._extrinsics, self._scan_policy, self._rng,
                                         job.cloud.header)
        except ValueError as exc:
            self._outcomes.bad_cloud(exc)
            return None
        self._outcomes.decoded(decoded)
        return decoded

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

    def _publish_diagnostics(self) -> None:
        overflow = self._pairing.overflow_by_input()
        if overflow is not None:
            self.stats.set_sync_overflow(overflow)
        snap = self.stats.snapshot()
        msg = diagnostic_array(snap, f"{self.get_name()}: segmenter", self.get_fully_qualified_name(),
                               self.get_clock().now().to_msg())
        msg.status[0].values += [KeyValue(key=f"camera_views.{name}", value=str(n))
                                 for name, n in self._outcomes.camera_views()]
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
