"""segment_node: the ROS 2 lifecycle node that segments every incoming cloud with TTT-KD.

Callbacks stay thin: subscriptions feed the approximate-time synchroniser, the
matched set is converted to a Scan (cheap numpy views) and put into a
latest-wins slot; one worker thread runs ``Segmenter.segment`` and publishes.
A slow model therefore drops stale scans (counted) instead of queueing them.
Configure reads the parameters and loads the model (a failure returns FAILURE
with a log line naming the parameter or file); activate subscribes and starts
the worker. With ``autostart`` (default) main() drives both transitions, so
the node runs without a lifecycle manager.

Bad input never stops the node: an unparsable cloud is skipped, a bad image
leaves its camera out of that scan (no adaptation rather than no labels), a
camera that stays silent longer than ``camera_timeout_s`` lets clouds through
alone; every case is counted on /diagnostics by reason.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from ttt_kd_ros.compose import engine_error_text
from ttt_kd_ros.labels import LABEL_SETS, LabelSet
from ttt_kd_ros.msgs.scan_messages import (
    NO_TRANSFORM,
    CameraMessages,
    CloudHeader,
    DecodedScan,
    ScanPolicy,
    empty_prediction,
    prediction_to_pointcloud2,
    read_cloud_header,
    scan_from_messages,
)
from ttt_kd_ros.node_parameters import NODE_NAME
from ttt_kd_ros.ros.compat import make_synchronizer, make_tf_lookup
from ttt_kd_ros.ros.diagnostics import NodeStats, diagnostic_array
from ttt_kd_ros.ros.params import NodeParams, ParameterError, read_parameters, segmenter_config
from ttt_kd_ros.ros.reason_log import ReasonLog
from ttt_kd_ros.ros.worker import LatestSlot, SlotWorker
from ttt_kd_ros.segmenter import Segmenter

OUTPUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
"""RELIABLE: a best-effort publisher never reaches a reliable subscriber such as rviz2's default."""
LOG_SUMMARY_PERIOD_S = 30.0


@dataclass
class Job:
    """One scan waiting for the worker, with what is needed to answer it (header, source rows)."""

    decoded: DecodedScan
    received_s: float  # time.monotonic() when the cloud reached the node
    convert_s: float


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
        self._camera_frames: dict[str, str] = {}  # camera name -> camera.<name>.frame_id (tf lookups)
        self._problems = ReasonLog(self.get_logger().warning, LOG_SUMMARY_PERIOD_S)
        self._slot: LatestSlot[Job] = LatestSlot()
        self._worker: SlotWorker[Job] | None = None
        self._output_pub = None
        self._diag_pub = None
        self._diag_timer = None
        self._input_subscriptions: list[Any] = []  # not `_subscriptions`: that is rclpy Node's own list
        self._sync = None
        self._tf: Any = None  # compat.make_tf_lookup's object: lookup(target, source, stamp_ns) -> (4, 4) | None
        self._tf_subscriptions: list[Any] = []
        self._views_lock = threading.Lock()
        self._views_by_camera: Counter[str] = Counter()  # scans that carried each camera's view
        self._camera_seen_s: dict[str, float] = {}
        self._active_since_s = 0.0
        self._cloud_alone_logged = False

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            params = read_parameters(self)
            config = segmenter_config(params)
        except ParameterError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
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
                self.get_logger().error(f"configure failed: parameter camera.{needs_tf[0]}.cam_from_cloud is unset "
                                        "and neither tf2_ros nor tf2_msgs is importable here (no way to follow "
                                        "/tf); give the extrinsics as parameters")
                return TransitionCallbackReturn.FAILURE
            self._tf, self._tf_subscriptions = made
            self.get_logger().info(f"extrinsics of {needs_tf} from tf ({self._tf.backend})")
        self.params = params
        self.segmenter = segmenter
        self.label_set = self._label_set_of(segmenter)
        self._rng = np.random.default_rng(params["seed"])
        # the input cap lives in the one scan path (msgs.scan_messages), nowhere else in the node
        self._scan_policy = ScanPolicy(max_points=params["max_input_points"], label_set=self.label_set.name)
        self._camera_frames = {cam.name: cam.frame_id for cam in params.cameras}
        self.stats.strategy = params["adapt.strategy"]
        self.stats.mode = "cloud_only" if params.cloud_only else "adapt"
        self.stats.label_set = self.label_set.name
        self._output_pub = self.create_publisher(PointCloud2, params["output_topic"], OUTPUT_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.get_logger().info(
            f"configured: mode={self.stats.mode} strategy={self.stats.strategy} cameras="
            f"{[c.name for c in params.cameras]} cloud={params['cloud_topic']} output={params['output_topic']} "
            f"label_set={self.label_set.name}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        params = self.params
        self._slot = LatestSlot()
        self._worker = SlotWorker(self._slot, self._process, self._on_worker_error)
        self._worker.start()
        self._active_since_s = time.monotonic()
        self._camera_seen_s = {}
        self._input_subscriptions = [self.create_subscription(
            PointCloud2, params["cloud_topic"], self._on_cloud, qos_profile_sensor_data)]
        if not params.cloud_only:
            names = ["cloud"]
            for cam in params.cameras:
                names += [f"{cam.name}/image", f"{cam.name}/camera_info"]
            self._sync = make_synchronizer(names, params["sync_queue_size"], params["sync_slop_s"], self._on_matched)
            for i, cam in enumerate(params.cameras):
                self._input_subscriptions.append(self.create_subscription(
                    Image, cam.image_topic, self._camera_feed(cam.name, 1 + 2 * i), qos_profile_sensor_data))
                self._input_subscriptions.append(self.create_subscription(
                    CameraInfo, cam.info_topic, self._camera_feed(cam.name, 2 + 2 * i), qos_profile_sensor_data))
        self._diag_timer = self.create_timer(params["diagnostics_period_s"], self._publish_diagnostics)
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_inputs()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_inputs(self) -> None:
        for sub in self._input_subscriptions:
            self.destroy_subscription(sub)
        self._input_subscriptions = []
        self._sync = None
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        if self._worker is not None:
            if not self._worker.stop(timeout_s=10.0):
                self.get_logger().warning("worker did not finish its scan within 10 s")
            self._worker = None

    def _release(self) -> None:
        for pub in (self._output_pub, self._diag_pub):
            if pub is not None:
                self.destroy_publisher(pub)
        self._output_pub = self._diag_pub = None
        for sub in self._tf_subscriptions:
            self.destroy_subscription(sub)
        self._tf_subscriptions, self._tf = [], None
        self.segmenter = None

    # ---- callbacks (subscription threads: keep them cheap) ---------------------------------------------------

    def _camera_feed(self, camera: str, index: int) -> Callable[[Any], None]:
        def feed(msg: Any) -> None:
            self._camera_seen_s[camera] = time.monotonic()
            self._sync.add(index, msg)

        return feed

    def _silent_cameras(self) -> list[str]:
        timeout = self.params["camera_timeout_s"]
        if timeout <= 0:
            return []
        now = time.monotonic()
        return [c.name for c in self.params.cameras
                if now - self._camera_seen_s.get(c.name, self._active_since_s) > timeout]

    def _on_cloud(self, msg: PointCloud2) -> None:
        self.stats.count_received()
        if self.params.cloud_only:
            self._submit(msg, [])
            return
        silent = self._silent_cameras()
        if silent:
            self.stats.count_skipped("camera_timeout")
            if not self._cloud_alone_logged:
                self._cloud_alone_logged = True
                self.get_logger().warning(
                    f"no message from camera(s) {silent} for {self.params['camera_timeout_s']} s: "
                    "segmenting clouds alone (no adaptation) until they are back")
            self._submit(msg, [])
            return
        if self._cloud_alone_logged:
            self._cloud_alone_logged = False
            self.get_logger().info("all cameras are back: pairing clouds with images again")
        self._sync.add(0, msg)

    def _on_matched(self, cloud: PointCloud2, *camera_msgs: Any) -> None:
        pairs = list(zip(camera_msgs[0::2], camera_msgs[1::2], strict=True))
        self._submit(cloud, pairs)

    def _stamp_refusal(self, stamp_ns: int) -> str:
        now_ns = self.get_clock().now().nanoseconds
        max_age, max_future = self.params["max_cloud_age_s"], self.params["max_future_s"]
        if max_age > 0 and now_ns - stamp_ns > max_age * 1e9:
            return "stamp_too_old"
        if max_future > 0 and stamp_ns - now_ns > max_future * 1e9:
            return "stamp_in_future"
        return ""

    def _submit(self, msg: PointCloud2, pairs: list[tuple[Image, CameraInfo]]) -> None:
        """Convert one cloud (+ its camera pairs) to a Scan and hand it to the worker."""
        received_s = time.monotonic()
        t0 = time.perf_counter()
        try:
            header = read_cloud_header(msg)  # the stamp is converted here, once, for refusal, tf and the Scan
        except ValueError as exc:
            self._skip_cloud(exc)
            return
        refusal = self._stamp_refusal(header.stamp_ns)
        if refusal:
            self.stats.count_skipped(refusal)
            self._problems.report(refusal, f"cloud refused: {refusal}")
            return
        cameras = [CameraMessages(cam.name, image, info, cam.cam_from_cloud)
                   for cam, (image, info) in zip(self.params.cameras, pairs, strict=False)]
        try:
            decoded = scan_from_messages(msg, cameras, self._lookup_extrinsics, self._scan_policy, self._rng, header)
        except ValueError as exc:
            self._skip_cloud(exc)
            return
        for miss in decoded.left_out:
            self.stats.count_skipped(f"{miss.reason}.{miss.camera}")
            # a missing transform is keyed by the source frame too: a second sensor in a frame tf does not
            # know is a problem of its own
            reason = (f"{NO_TRANSFORM} from {header.frame_id!r}" if miss.reason == NO_TRANSFORM
                      else f"{miss.reason}: {miss.detail}")
            self._problems.report(reason, f"camera {miss.camera} left out of this scan: {miss.detail}",
                                  camera=miss.camera)
        with self._views_lock:
            self._views_by_camera.update(view.name for view in decoded.scan.cameras)
        job = Job(decoded=decoded, received_s=received_s, convert_s=time.perf_counter() - t0)
        if self._slot.put(job):
            self.stats.count_dropped()

    def _skip_cloud(self, exc: ValueError) -> None:
        self.stats.count_skipped("bad_cloud")
        self._problems.report(f"bad_cloud: {exc}", f"cloud skipped: {exc}")

    def _lookup_extrinsics(self, camera: CameraMessages, header: CloudHeader) -> np.ndarray:
        """cam_from_cloud from tf (cloud frame -> camera.<name>.frame_id) at the cloud's stamp; LookupError if none."""
        camera_frame = self._camera_frames[camera.name]
        if self._tf is None:
            raise LookupError(f"no transform from {header.frame_id!r} to {camera_frame!r}: tf is not followed here")
        cam_from_cloud = self._tf.lookup(camera_frame, header.frame_id, header.stamp_ns)
        if cam_from_cloud is None:
            why = self._tf.why_not(camera_frame, header.frame_id, header.stamp_ns)
            raise LookupError(f"no transform from {header.frame_id!r} to {camera_frame!r} at {header.stamp_ns} ns: "
                              f"{why}")
        return cam_from_cloud

    # ---- worker thread ---------------------------------------------------------------------------------------

    def _process(self, job: Job) -> None:
        start = time.monotonic()
        scan = job.decoded.scan
        prediction = empty_prediction("no_valid_points") if scan.num_points == 0 else self.segmenter.segment(scan)
        timings = dict(prediction.timings_s)
        t_encode = time.perf_counter()
        out = prediction_to_pointcloud2(job.decoded, prediction, self.label_set, self.params["output_min_confidence"])
        t_publish = time.perf_counter()
        self._output_pub.publish(out)
        done = time.perf_counter()
        timings.update({
            "convert": job.convert_s,
            "wait": start - job.received_s - job.convert_s,
            "encode": t_publish - t_encode,
            "publish": done - t_publish,
        })
        timings["total"] = time.monotonic() - job.received_s
        self.stats.record_scan(timings, prediction.adapted, prediction.kd_loss_before, prediction.kd_loss_after,
                               skip_reason=prediction.skip_reason, steps_run=prediction.steps_run)

    def _on_worker_error(self, job: Job, exc: Exception) -> None:
        self.stats.count_error(type(exc).__name__)
        self._problems.report(f"error.{type(exc).__name__}",
                              f"scan at {job.decoded.scan.stamp_ns} ns failed: {type(exc).__name__}: {exc}")

    def _publish_diagnostics(self) -> None:
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
    """Run the node until Ctrl-C or ROS shutdown; 1 when configure or activate fails."""
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
        rclpy.spin(node)
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
