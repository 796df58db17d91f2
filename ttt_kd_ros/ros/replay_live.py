"""Replay a bag through the LIVE node: a separate process, real DDS both ways, the node's own threads.

For each strategy a fresh node process (``python -m ttt_kd_ros.ros.segment_command``,
what ``ttt_kd_segment`` runs) starts with a params file written for the bag:
its cloud and camera topics, each camera's cam_from_cloud from the bag's tf,
the strategy. It runs on a per-replay ROS_DOMAIN_ID, with
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and the shipped FastDDS large-data
profile, in a namespace of its own, so replays and tests beside it do not
hear each other.

This process publishes the bag's CDR bytes as they are (``publish(raw)``)
on the bag's own topic names:

- ``rate``: at the recorded pace scaled by ``rate`` (1.0 = real time), so a
  slow node drops stale scans in its latest-wins slot as it would on a robot;
- as fast as possible (``rate=None``): one frame (the cloud with the camera
  messages recorded around it) at a time, the next one as soon as the labels
  of the previous come back or ``frame_timeout_s`` passes.

Outputs (~/labeled_points) are received raw and matched to their clouds by
header stamp (the node copies the input header), and each output point to
its input point by its ``index`` field; /diagnostics gives the
node's own counts and per-stage medians. A frame whose labels have not come
back ``drain_timeout_s`` after the last one is lost.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ttt_kd_ros.metrics import ConfusionMatrix
from ttt_kd_ros.msgs.pointcloud2 import read_points
from ttt_kd_ros.msgs.scan_messages import scan_from_messages
from ttt_kd_ros.msgs.transforms import invert_transform, matrix_to_pose
from ttt_kd_ros.msgs.typestore import ros2_typestore
from ttt_kd_ros.replay.bag_messages import BagPlan, RawMessage, cdr_header_stamp_ns, read_raw_messages
from ttt_kd_ros.replay.inprocess import ground_truth
from ttt_kd_ros.replay.report import FrameRecord, StrategyRun, node_books
from ttt_kd_ros.ros.segment_command import FASTDDS_PROFILE_ENV, NODE_NAME

DISCOVERY_ENV = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
SETTLE_S = 1.0
"""Pause after discovery matched, so the node side has matched our publishers too (best effort drops otherwise)."""


@dataclass
class NodeReplayOptions:
    """How the live replay paces, waits and configures the node."""

    rate: float | None = 1.0  # None: as fast as possible
    frame_timeout_s: float = 30.0  # as fast as possible: longest wait for one frame's labels
    drain_timeout_s: float = 10.0  # after the last frame: longest wait without any new output
    startup_timeout_s: float = 180.0  # node start (imports, model load) until it subscribes
    domain_id: int | None = None  # None: a random one in 1..100
    base_params_file: Path | None = None  # None: the shipped config/segment.yaml
    params: dict[str, Any] = field(default_factory=dict)  # dotted name -> value, over the base file
    max_frames: int | None = None
    slop_s: float = 0.05  # camera messages within this of a cloud's stamp belong to its frame


def pick_domain_id() -> int:
    """A ROS_DOMAIN_ID in 1..100 (the range free of port clashes on Linux), different run to run."""
    return random.Random(os.getpid() ^ time.time_ns()).randint(1, 100)


def nest_params(flat: dict[str, Any]) -> dict[str, Any]:
    """{"adapt.steps": 3} -> {"adapt": {"steps": 3}}, the form a ros__parameters YAML takes."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        parts = name.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def flatten_params(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_params(value, name + "."))
        else:
            out[name] = value
    return out


def camera_param_name(camera: str) -> str:
    """A node camera name (no '/' or '.') for a bag camera such as ``sensor/cam_0``."""
    return camera.replace("/", "_").replace(".", "_").strip("_") or "camera"


def node_parameters(plan: BagPlan, base: dict[str, Any], overrides: dict[str, Any], sensor_period_s: float | None,
                    rate: float | None) -> dict[str, Any]:
    """Flat node parameters for this bag: base file values, the bag's topics and extrinsics, then overrides.

    The base file's cameras are dropped (they describe another sensor rig).
    Bag stamps are old, so stamp-age checks are off; the camera timeout is
    stretched to three (scaled) sensor periods so a slowed-down replay does
    not look like a dead camera.
    """
    params = {k: v for k, v in flatten_params(base).items() if k != "cameras" and not k.startswith("camera.")}
    params.update({"cloud_topic": plan.cloud_topic, "output_topic": "~/labeled_points", "max_cloud_age_s": 0.0,
                   "max_future_s": 0.0, "diagnostics_period_s": 0.5})
    if sensor_period_s is not None and rate:
        params["camera_timeout_s"] = max(float(params.get("camera_timeout_s", 2.0)), 3.0 * sensor_period_s / rate)
    if plan.cameras:
        params["mode"] = "adapt"
        names = []
        for cam in plan.cameras:
            name = camera_param_name(cam.name)
            names.append(name)
            params[f"camera.{name}.image_topic"] = cam.image
            params[f"camera.{name}.info_topic"] = cam.info
            params[f"camera.{name}.frame_id"] = ""
            # the node takes tf's convention: the camera's pose in the cloud frame, for clouds in that frame
            params[f"camera.{name}.parent_frame"] = plan.cloud_frame
            params[f"camera.{name}.extrinsics"] = matrix_to_pose(invert_transform(plan.cam_from_cloud[cam.name]))
        params["cameras"] = names
    else:
        params["mode"] = "cloud_only"
    params.update(overrides)
    return params


def write_params_file(path: Path, params: dict[str, Any]) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    # "/**/" matches the node in any namespace (each replay runs it in its own)
    path.write_text(yaml.safe_dump({f"/**/{NODE_NAME}": {"ros__parameters": nest_params(params)}}, sort_keys=True,
                                   default_flow_style=None))
    return path


def load_params_file(path: Path) -> dict[str, Any]:
    """ros__parameters of the node in a params YAML (nested form)."""
    import yaml

    doc = yaml.safe_load(Path(path).read_text()) or {}
    for key, section in doc.items():
        if (str(key).rsplit("/", 1)[-1] == NODE_NAME or key == "/**") and isinstance(section, dict):
            return dict(section.get("ros__parameters", {}))
    raise ValueError(f"{path}: expected a `{NODE_NAME}: ros__parameters:` section, found keys {sorted(doc)}")


class NodeProcess:
    """The segmenter node in a child process, logging into a file; stopped with SIGINT (clean shutdown)."""

    def __init__(self, params_file: Path, namespace: str, domain_id: int, log_path: Path) -> None:
        import ttt_kd_ros
        from ttt_kd_ros.package_files import share_file

        env = dict(os.environ)
        env.update(DISCOVERY_ENV)
        env["ROS_DOMAIN_ID"] = str(domain_id)
        env.setdefault(FASTDDS_PROFILE_ENV, str(share_file("config", "fastdds_large_data.xml")))
        package_root = str(Path(ttt_kd_ros.__file__).resolve().parent.parent)  # the same code as this process
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        self.log_path = log_path
        self._log = log_path.open("wb")
        command = [sys.executable, "-m", "ttt_kd_ros.ros.segment_command", "--params-file", str(params_file),
                   "--namespace", namespace]
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout_s: float = 15.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)
        self._log.close()
        return self.process.returncode


class Bridge:
    """This process's side of DDS: publishers for the bag's topics, raw output and diagnostics subscriptions."""

    def __init__(self, domain_id: int, topics: dict[str, str]) -> None:
        for key, value in DISCOVERY_ENV.items():
            os.environ.setdefault(key, value)
        if not os.environ.get(FASTDDS_PROFILE_ENV):
            from ttt_kd_ros.package_files import share_file

            os.environ[FASTDDS_PROFILE_ENV] = str(share_file("config", "fastdds_large_data.xml"))
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import qos_profile_sensor_data

        self._rclpy = rclpy
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node("ttt_kd_replay", context=self.context)
        self.publishers = {topic: self.node.create_publisher(_message_class(msgtype), topic, qos_profile_sensor_data)
                           for topic, msgtype in topics.items()}
        self.lock = threading.Lock()
        self.outputs: dict[int, tuple[float, bytes]] = {}  # stamp -> (monotonic time, raw CDR)
        self.diagnostics: dict[str, str] = {}
        self.diagnostics_at = 0.0
        self.hardware_id = ""
        self._output_sub: Any = None
        self._diag_sub: Any = None
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # the context shut down under us (rclpy raises several kinds): the thread ends
                return

    def listen(self, output_topic: str, hardware_id: str, keep_outputs: bool) -> None:
        """(Re)subscribe to one node's output and diagnostics; clears what an earlier node sent."""
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import PointCloud2

        for sub in (self._output_sub, self._diag_sub):
            if sub is not None:
                self.node.destroy_subscription(sub)
        with self.lock:
            self.outputs, self.diagnostics, self.diagnostics_at = {}, {}, 0.0
            self.hardware_id = hardware_id
        self._keep = keep_outputs
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self._output_sub = self.node.create_subscription(PointCloud2, output_topic, self._on_output, qos, raw=True)
        self._diag_sub = self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 20)

    def _on_output(self, raw: bytes) -> None:
        now = time.monotonic()
        stamp = cdr_header_stamp_ns(raw)
        with self.lock:
            self.outputs.setdefault(stamp, (now, raw if self._keep else b""))

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.hardware_id == self.hardware_id:
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}
                    self.diagnostics_at = time.monotonic()

    def matched(self) -> bool:
        """Every publisher has the node's subscription and the node's output publisher is discovered."""
        subs = all(pub.get_subscription_count() > 0 for pub in self.publishers.values())
        return subs and self._output_sub is not None and self._output_sub.get_publisher_count() > 0

    def publish(self, topic: str, cdr: bytes) -> None:
        self.publishers[topic].publish(cdr)

    def output_count(self) -> int:
        with self.lock:
            return len(self.outputs)

    def has_output(self, stamp_ns: int) -> bool:
        with self.lock:
            return stamp_ns in self.outputs

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=2.0)


def _message_class(msgtype: str) -> Any:
    """rclpy message class for a ROS 2 type name such as sensor_msgs/msg/PointCloud2."""
    import importlib

    package, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def frames_of(messages: Iterator[RawMessage], cloud_topic: str, slop_ns: int) -> Iterator[list[RawMessage]]:
    """Group log-ordered messages into frames: everything up to a cloud, plus what follows it within the slop.

    Drivers differ in order (KITTI bags log the cloud before its image), so a
    camera message stamped within ``slop_ns`` of the cloud after it still
    belongs to the cloud's frame.
    """
    current: list[RawMessage] = []
    cloud_stamp: int | None = None
    for msg in messages:
        if cloud_stamp is not None:
            is_tail = msg.topic != cloud_topic and abs(cdr_header_stamp_ns(msg.cdr) - cloud_stamp) <= slop_ns
            if is_tail:
                current.append(msg)
                continue
            yield current
            current, cloud_stamp = [], None
        current.append(msg)
        if msg.topic == cloud_topic:
            cloud_stamp = cdr_header_stamp_ns(msg.cdr)
    if cloud_stamp is not None:
        yield current


def _wait(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()


def _drive(bridge: Bridge, plan: BagPlan, options: NodeReplayOptions, node: NodeProcess,
           bar: Any) -> tuple[list[FrameRecord], float]:
    """Publish the bag; returns one FrameRecord per cloud sent (send times on the run clock) and the clock's start."""
    messages = _started(read_raw_messages(plan.path, plan.topics))  # the bag is open: the clock can start
    frames: list[FrameRecord] = []
    start = time.monotonic()
    sent_clouds = 0

    def send(msg: RawMessage) -> None:
        nonlocal sent_clouds
        bridge.publish(msg.topic, msg.cdr)
        if msg.topic == plan.cloud_topic:
            frames.append(FrameRecord(index=sent_clouds, stamp_ns=cdr_header_stamp_ns(msg.cdr), num_points=0,
                                      sent_s=time.monotonic() - start))
            sent_clouds += 1
            if bar is not None:
                bar.update(1)

    def room_for(count: int) -> bool:
        return options.max_frames is None or count < options.max_frames

    if options.rate is None:
        for frame in frames_of(messages, plan.cloud_topic, round(options.slop_s * 1e9)):
            if not room_for(sent_clouds) or not node.alive():
                break
            for msg in frame:
                send(msg)
            stamp = frames[-1].stamp_ns
            _wait(lambda stamp=stamp: bridge.has_output(stamp) or not node.alive(), options.frame_timeout_s)
    else:
        first_log: int | None = None
        for msg in messages:
            if msg.topic == plan.cloud_topic and not room_for(sent_clouds):
                break
            if first_log is None:
                first_log = msg.log_time_ns
            due = start + (msg.log_time_ns - first_log) * 1e-9 / options.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            send(msg)
            if not node.alive():
                break
    return frames, start


def _started(messages: Iterator[RawMessage]) -> Iterator[RawMessage]:
    """The same messages, with the first one already read (opening a bag can take a while)."""
    first = next(messages, None)
    if first is None:
        return iter(())
    return itertools.chain([first], messages)


def _settle_outputs(bridge: Bridge, sent: int, options: NodeReplayOptions, node: NodeProcess) -> None:
    """Wait until every frame is accounted for, or no new output came for drain_timeout_s.

    Accounted: answered, or (by a /diagnostics message newer than the last
    publish) received by the node and dropped, refused or failed there, with
    every scan the node processed back here.
    """
    last_count, last_change = -1, time.monotonic()
    published = time.monotonic()
    while node.alive():
        count = bridge.output_count()
        if count >= sent:
            return
        with bridge.lock:
            fresh = bridge.diagnostics_at > published
            books = node_books(bridge.diagnostics)
        if fresh and books["received"] >= sent and count >= books["processed"] and \
                books["processed"] + books["dropped"] + books["refused"] + books["failed"] >= sent:
            return
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > options.drain_timeout_s:
            return
        time.sleep(0.02)


def run_node_strategy(bridge: Bridge, plan: BagPlan, strategy: str, options: NodeReplayOptions, base: dict[str, Any],
                      out_dir: Path, domain_id: int, score_classes: int | None,
                      progress: Callable[[int, str], Any] | None = None) -> StrategyRun:
    """Start a node for ``strategy``, replay the bag into it, collect and score what came back."""
    namespace = f"replay_{os.getpid()}_{strategy}"
    overrides = dict(options.params)
    overrides["adapt.strategy"] = strategy
    params = node_parameters(plan, base, overrides, 1.0 / plan.sensor_rate_hz if plan.sensor_rate_hz else None,
                             options.rate)
    params_file = write_params_file(out_dir / f"node_params_{strategy}.yaml", params)
    node = NodeProcess(params_file, namespace, domain_id, out_dir / f"node_{strategy}.log")
    fqn = f"/{namespace}/{NODE_NAME}"
    bridge.listen(f"{fqn}/labeled_points", fqn, keep_outputs=score_classes is not None)
    try:
        if not _wait(lambda: bridge.matched() or not node.alive(), options.startup_timeout_s, poll_s=0.1) \
                or not node.alive():
            state = "exited" if not node.alive() else f"did not subscribe within {options.startup_timeout_s:.0f} s"
            raise RuntimeError(f"node for strategy {strategy} {state}; log {node.log_path}:\n{node.log_tail()}")
        time.sleep(SETTLE_S)
        total = min(plan.num_clouds, options.max_frames or plan.num_clouds)
        bar = progress(total, f"{strategy} (node)") if progress else None
        wall_start = time.monotonic()
        frames, clock = _drive(bridge, plan, options, node, bar)
        if bar is not None:
            bar.close()
        _settle_outputs(bridge, len(frames), options, node)
        after = time.monotonic()
        _wait(lambda: bridge.diagnostics_at > after + 0.05 or not node.alive(), 3.0)
        wall = time.monotonic() - wall_start
        if not node.alive():
            raise RuntimeError(f"node for strategy {strategy} exited during the replay (code "
                               f"{node.process.returncode}); log {node.log_path}:\n{node.log_tail()}")
    finally:
        code = node.stop()
    with bridge.lock:
        outputs = dict(bridge.outputs)
        diagnostics = dict(bridge.diagnostics)
    for frame in frames:
        got = outputs.get(frame.stamp_ns)
        if got is not None:
            frame.done_s = got[0] - clock
    run = StrategyRun(strategy, frames, wall_s=wall, node_diagnostics=diagnostics, node_log=str(node.log_path))
    if code not in (0, None, -signal.SIGINT):
        run.notes.append(f"node exited with code {code}")
    run.confusion = score_outputs(plan, frames, outputs, score_classes)
    return run


def score_outputs(plan: BagPlan, frames: Sequence[FrameRecord], outputs: dict[int, tuple[float, bytes]],
                  num_classes: int | None) -> ConfusionMatrix | None:
    """Fill each frame's point count; with ``num_classes``, the confusion of the node's labels against the bag's.

    Every output point carries its input row (the ``index`` field), so the
    truth of each returned point is looked up directly: a node that thinned
    the cloud is scored on exactly the points it returned.
    """
    store = ros2_typestore()
    confusion = ConfusionMatrix(num_classes) if num_classes is not None else None
    by_stamp = {f.stamp_ns: f for f in frames}
    for msg in read_raw_messages(plan.path, [plan.cloud_topic]):
        stamp = cdr_header_stamp_ns(msg.cdr)
        frame = by_stamp.get(stamp)
        if frame is None:
            continue
        cloud_msg = store.deserialize_cdr(msg.cdr, msg.msgtype)
        decoded = scan_from_messages(cloud_msg)
        frame.num_points = decoded.scan.num_points
        got = outputs.get(stamp)
        if confusion is None or got is None or decoded.scan.labels is None:
            continue
        out = read_points(store.deserialize_cdr(got[1], "sensor_msgs/msg/PointCloud2"), ["label", "index"])
        predicted = np.where(out["label"] == 65535, -1, out["label"].astype(np.int64))
        truth = ground_truth(read_points(cloud_msg, ["label"])["label"])[out["index"]]
        confusion.update(truth, predicted)
        single = ConfusionMatrix(confusion.num_classes)
        single.update(truth, predicted)
        frame.miou = single.miou()
    return confusion


def run_node(plan: BagPlan, strategies: Sequence[str], options: NodeReplayOptions, out_dir: Path,
             score_classes: int | None, progress: Callable[[int, str], Any] | None = None) -> list[StrategyRun]:
    """One fresh node per strategy (clean counters, source weights), all on one per-replay domain."""
    from ttt_kd_ros.package_files import share_file

    base_file = options.base_params_file or share_file("config", "segment.yaml")
    base = load_params_file(base_file)
    domain_id = options.domain_id if options.domain_id is not None else pick_domain_id()
    from ttt_kd_ros.data.rosbag import bag_topics

    types = bag_topics(plan.path)
    bridge = Bridge(domain_id, {topic: types[topic] for topic in plan.topics})
    try:
        return [run_node_strategy(bridge, plan, strategy, options, base, out_dir, domain_id, score_classes, progress)
                for strategy in strategies]
    finally:
        bridge.close()
