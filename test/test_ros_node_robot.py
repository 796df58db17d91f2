"""The node as a robot runs it, over DDS: a reliable LiDAR beside best-effort cameras, parameters given as
integers, the engine's reasons in the log, and the lifecycle shutdown ending the process.

One node process serves the module (camera ``front`` only, extrinsics parameters, ``adapt.steps`` 0 so that
no scan here adapts unless a test says so), fed by test/ros_publisher.py with a RELIABLE cloud writer; the
helpers are test_ros_node's. The module runs on a ROS_DOMAIN_ID of its own (200-214).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

rclpy = pytest.importorskip("rclpy")

import test_ros_node as dds  # noqa: E402  (the DDS helpers: listener, sensors, node processes)
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rcl_interfaces.msg import ParameterType  # noqa: E402
from rcl_interfaces.srv import GetParameters  # noqa: E402
from std_msgs.msg import Float64  # noqa: E402
from std_srvs.srv import SetBool  # noqa: E402

from ttt_kd_ros.parameters.table import NODE_NAME  # noqa: E402
from ttt_kd_ros.ros.diagnostics import UNADAPTED_WARN_SCANS  # noqa: E402

pytestmark = pytest.mark.ros

FQN = f"/{NODE_NAME}"
CLOUD_TOPIC = f"{dds.PREFIX}/points"


def _robot_config() -> dict:
    params = {
        "cloud_topic": CLOUD_TOPIC,
        "output_topic": dds.LABELED_TOPIC,
        "camera_timeout_s": 2,  # an integer for a double, as people write it
        "max_cloud_age_s": 60.0,
        "diagnostics_period_s": 0.3,
        "teacher": "tiny",
        "checkpoint": "",
        "device": "cpu",
        "max_points": dds.MAX_POINTS,
        "adapt": {"strategy": "ttt_kd", "steps": 0, "kd_points_per_step": 256, "optimizer": "sgd", "lr": 0.001,
                  "time_budget_s": 0.0},
        "cameras": ["front"],
        "camera": {"front": {"image_topic": f"{dds.PREFIX}/front/image",
                             "info_topic": f"{dds.PREFIX}/front/camera_info",
                             "parent_frame": "test_lidar", "extrinsics": [0, 0, 0, 0, 0, 0, 1]}},
        # the LiDAR driver publishes RELIABLE; the cameras stay best effort (the default sensor-data QoS)
        "qos_overrides": {CLOUD_TOPIC: {"subscription": {"reliability": "reliable"}}},
    }
    return {f"/**/{NODE_NAME}": {"ros__parameters": params}}


class Robot:
    def __init__(self, listener: dds.Listener, sensors: dds.Sensors, log: Path, env: dict[str, str],
                 tmp: Path) -> None:
        self.listener, self.sensors, self.log, self.env, self.tmp = listener, sensors, log, env, tmp

    def logs_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def diag_after(self, predicate: object, timeout_s: float = dds.WAIT_S) -> dict[str, str] | None:
        """The node's /diagnostics from a message sent after this call that satisfies ``predicate``."""
        with self.listener.lock:
            asked = self.listener.diagnostics_seen
        return self.listener.diag(FQN, lambda d: int(d["_seq"]) >= asked and predicate(d), timeout_s)

    def good(self) -> int:
        stamp = self.sensors.send("good")["stamp_ns"]
        assert self.listener.output(stamp) is not None, f"no output for a good scan\n{self.logs_text()}"
        return stamp

    def set_parameters(self, **values: object) -> list:
        request = dds.SetParameters.Request(parameters=[
            dds.Parameter(name.replace("__", "."), value=value).to_parameter_msg() for name, value in values.items()])
        reply = self.listener.call(dds.SetParameters, f"{FQN}/set_parameters", request)
        assert reply is not None, f"no reply from the parameter service\n{self.logs_text()}"
        return reply.results


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def robot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Robot]:
    tmp = tmp_path_factory.mktemp("ros_robot")
    env = dds._ros_env(domain_id=200 + os.getpid() % 15)
    config = tmp / "robot.yaml"
    config.write_text(yaml.safe_dump(_robot_config()))
    log = tmp / "node.log"
    # max_future_s as an integer on the command line: refused at configure before issue 22
    node = dds._start_node(["--params-file", str(config), "-p", "max_future_s:=60"], env, log)
    os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(dds.REPO_ROOT / "config" / "fastdds_large_data.xml")
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    listener = dds.Listener(int(env["ROS_DOMAIN_ID"]))
    sensors = dds.Sensors({**env, "FASTRTPS_DEFAULT_PROFILES_FILE": os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"]},
                          ("--camera", f"front:{dds.PREFIX}/front/image:{dds.PREFIX}/front/camera_info",
                           "--wait-s", "40", "--cloud-subscribers", "1", "--reliable-cloud"))
    robot = Robot(listener, sensors, log, env, tmp)
    try:
        # ready = the reliable cloud reader AND both best-effort camera readers matched the sensor process
        assert sensors.ready, f"the node's readers never matched the sensors' writers\n{robot.logs_text()}"
        assert listener.wait_for(lambda: listener.node.count_publishers(dds.LABELED_TOPIC) > 0), robot.logs_text()
        robot.good()  # RELIABLE end to end: the first scan is not lost to discovery
        yield robot
    finally:
        sensors.close()
        _stop(node)
        listener.close()


def test_robot_reliable_cloud_override_leaves_the_cameras_best_effort_and_paired(robot: Robot) -> None:
    before = int((robot.diag_after(lambda d: d["in_flight"] == "0") or {}).get("camera_views.front", 0))
    robot.good()
    diag = robot.diag_after(lambda d: int(d.get("camera_views.front", 0)) >= before + 1)
    assert diag is not None, f"the camera's images never reached the node\n{robot.logs_text()}"


def test_robot_activation_warms_the_engine_up_before_it_subscribes(robot: Robot) -> None:
    log = robot.logs_text()
    warm, active = log.find("warm-up: one synthetic scan in"), log.find("]: active: ")
    assert 0 <= warm < active, log[-3000:]
    costs = r"the final forward \d+\.\d ms, every stage but the steps \d+\.\d ms"
    assert re.search(costs, log[warm:active]), log[warm:]


def test_robot_scans_that_ran_no_step_report_no_kd_loss_after(robot: Robot) -> None:
    robot.good()  # adapt.steps 0: the camera sees the points (targets exist) but no step runs
    diag = robot.diag_after(lambda d: int(d["processed"]) >= 2 and d["in_flight"] == "0")
    assert diag is not None, robot.logs_text()
    assert int(diag["visible_points.front"]) > 0 and diag["steps_run"] == "0"
    assert diag["kd_loss_after"] == "nan", diag


def test_robot_integers_for_double_parameters_are_doubles_at_start_and_at_run_time(robot: Robot) -> None:
    results = robot.set_parameters(max_cloud_age_s=50, adapt__time_budget_s=0)  # `ros2 param set ... 50`
    assert all(r.successful for r in results), [r.reason for r in results]
    names = ["max_future_s", "camera_timeout_s", "max_cloud_age_s"]  # -p ...:=60, `2` in the YAML, the set above
    reply = robot.listener.call(GetParameters, f"{FQN}/get_parameters", GetParameters.Request(names=names))
    assert reply is not None, robot.logs_text()
    got = {name: (value.type, value.double_value) for name, value in zip(names, reply.values, strict=True)}
    assert got == {"max_future_s": (ParameterType.PARAMETER_DOUBLE, 60.0),
                   "camera_timeout_s": (ParameterType.PARAMETER_DOUBLE, 2.0),
                   "max_cloud_age_s": (ParameterType.PARAMETER_DOUBLE, 50.0)}, got


def test_robot_engine_reason_is_one_fixed_key_logged_once_and_the_warn_switch_is_logged(robot: Robot) -> None:
    """A budget no step fits: every scan says `time budget 0.000 s`; one key, one log line, WARN logged."""
    results = robot.set_parameters(adapt__steps=1, adapt__time_budget_s=1e-9)
    assert all(r.successful for r in results), [r.reason for r in results]
    try:
        for _ in range(UNADAPTED_WARN_SCANS + 1):
            robot.good()
        diag = robot.diag_after(lambda d: d["in_flight"] == "0" and d["_level"] == dds.WARN
                                and int(d.get("unadapted.time_budget", 0)) >= UNADAPTED_WARN_SCANS)
        assert diag is not None, f"{robot.listener.diagnostics.get(FQN)}\n{robot.logs_text()}"
        keys_with_numbers = [key for key in diag if key.startswith("unadapted.") and re.search(r"\d", key)]
        assert not keys_with_numbers, keys_with_numbers
        assert "time budget" in diag["_message"]  # the value stays in the WARN message
        log = robot.logs_text()
        assert log.count("scan segmented without adaptation: time budget") == 1, log[-3000:]
        assert "adapt.time_budget_s left no time for a step" in log
        assert "/diagnostics is WARN: no adaptation in the last" in log, log[-3000:]
    finally:
        assert all(r.successful for r in robot.set_parameters(adapt__steps=0, adapt__time_budget_s=0.0))


def _collect(robot: Robot, message_type: type, topic: str) -> list:
    """Messages of ``topic`` received from now on (a subscription of the listener's node)."""
    got: list = []

    def keep(msg: object) -> None:
        with robot.listener.lock:
            got.append(msg)

    robot.listener.node.create_subscription(message_type, topic, keep, 10)
    return got


def test_robot_late_scans_warn_then_error_and_debug_topics_carry_stage_times_and_latency(robot: Robot) -> None:
    """Every scan is late against 1 us: ERROR after late_scans_error of them, logged; each scan's stage times and
    its pipeline latency (now - the cloud's stamp) on ~/debug/*, stamped with the cloud's stamp."""
    timings = _collect(robot, DiagnosticArray, f"{FQN}/debug/timings")
    latency = _collect(robot, Float64, f"{FQN}/debug/latency_ms")
    results = robot.set_parameters(late_scan_s=1e-6, late_scans_error=2)
    assert all(r.successful for r in results), [r.reason for r in results]
    try:
        stamps = []
        for _ in range(10):  # until the node's debug writers have matched this reader (best effort discovery)
            stamps.append(robot.good())
            if robot.listener.wait_for(lambda: timings and latency, timeout_s=2.0):
                break
        assert timings and latency, f"no message on ~/debug/*\n{robot.logs_text()}"
        with robot.listener.lock:
            status = timings[-1].status[0]
            stamp_ns = timings[-1].header.stamp.sec * 1_000_000_000 + timings[-1].header.stamp.nanosec
            last_latency_ms = latency[-1].data
        assert stamp_ns in stamps
        values = {kv.key: float(kv.value) for kv in status.values}
        assert {"convert_ms", "forward_ms", "encode_ms", "publish_ms", "total_ms", "pipeline_ms"} <= set(values)
        assert values["pipeline_ms"] >= values["total_ms"] > 0  # the stamp is older than the cloud's arrival
        assert last_latency_ms > 0
        robot.good()
        diag = robot.diag_after(lambda d: d["_level"] == dds._level(DiagnosticStatus.ERROR))
        assert diag is not None, f"{robot.listener.diagnostics.get(FQN)}\n{robot.logs_text()}"
        assert "late scans in a row" in diag["_message"] and int(diag["late_in_a_row"]) >= 2
        assert float(diag["latency_ms.pipeline"]) > 0
        assert "/diagnostics is ERROR: 2 scans in a row took longer than late_scan_s" in robot.logs_text()
    finally:
        assert all(r.successful for r in robot.set_parameters(late_scan_s=0.0, late_scans_error=5))


def _enable(robot: Robot, on: bool) -> str:
    reply = robot.listener.call(SetBool, f"{FQN}/enable", SetBool.Request(data=on))
    assert reply is not None and reply.success, robot.logs_text()
    return reply.message


def test_robot_enable_service_unsubscribes_and_stops_work_then_resumes(robot: Robot) -> None:
    count_readers = robot.listener.node.count_subscribers
    assert "disabled" in _enable(robot, False)
    try:
        gone = robot.listener.wait_for(lambda: count_readers(CLOUD_TOPIC) == 0
                                       and count_readers(f"{dds.PREFIX}/front/image") == 0)
        assert gone, "the node kept its subscriptions"
        before = robot.diag_after(lambda d: d["enabled"] == "false")
        assert before is not None and before["_level"] == dds.OK, (
            f"{robot.listener.diagnostics.get(FQN)}\n{robot.logs_text()[-3000:]}")
        stamp = robot.sensors.send("good")["stamp_ns"]  # nobody reads it
        first = robot.diag_after(lambda d: True)
        assert first is not None, robot.logs_text()
        later = robot.diag_after(lambda d: int(d["_seq"]) > int(first["_seq"]))  # two periods after the send
        assert later is not None and later["received"] == before["received"], (before, later)
        with robot.listener.lock:
            assert stamp not in robot.listener.clouds[dds.LABELED_TOPIC]
    finally:
        assert "enabled" in _enable(robot, True)
    views = int(robot.diag_after(lambda d: d["enabled"] == "true")["camera_views.front"])
    for _ in range(6):  # the sensors' writers match the new readers after a discovery round
        if robot.listener.output(robot.sensors.send("good")["stamp_ns"], timeout_s=5.0) is not None:
            break
    assert robot.diag_after(lambda d: int(d["camera_views.front"]) > views) is not None, robot.logs_text()


def test_robot_per_scan_strategy_does_no_work_while_nothing_reads_the_output(robot: Robot) -> None:
    node = robot.listener.node
    reader = next(sub for sub in node.subscriptions if sub.topic_name == dds.LABELED_TOPIC)
    node.destroy_subscription(reader)
    try:
        before = robot.diag_after(lambda d: d["in_flight"] == "0")
        assert before is not None, robot.logs_text()
        skipped = None
        for _ in range(20):  # until the node's writer has seen the reader go
            robot.sensors.send("good")
            skipped = robot.diag_after(lambda d: int(d.get("skipped.no_subscriber", 0)) > 0 and d["in_flight"] == "0",
                                       timeout_s=1.0)
            if skipped is not None:
                break
        assert skipped is not None, f"{robot.listener.diagnostics.get(FQN)}\n{robot.logs_text()}"
        robot.sensors.send("good")
        after = robot.diag_after(lambda d: d["in_flight"] == "0" and int(d["received"]) > int(skipped["received"]))
        assert after is not None, robot.logs_text()
        # the last cloud was refused on arrival: not segmented, the books still balance
        assert int(after["skipped.no_subscriber"]) == int(skipped["skipped.no_subscriber"]) + 1, after
        assert after["processed"] == skipped["processed"] and dds._books_balance(after), after
        assert "nothing subscribes to /ttt_test/labeled" in robot.logs_text()
    finally:
        node.create_subscription(dds.PointCloud2, dds.LABELED_TOPIC, robot.listener._cloud_callback(dds.LABELED_TOPIC),
                                 dds.QoSProfile(depth=20, reliability=dds.ReliabilityPolicy.RELIABLE))
    answered = False
    for _ in range(10):  # the reader is back: scans are segmented again once the node's writer has matched it
        if robot.listener.output(robot.sensors.send("good")["stamp_ns"], timeout_s=3.0) is not None:
            answered = True
            break
    assert answered, robot.logs_text()


def test_lifecycle_shutdown_transition_ends_the_process(robot: Robot) -> None:
    """`ros2 lifecycle set <node> shutdown`: the transition is answered, then the process exits with 0."""
    namespace = "shutdown_test"
    config = robot.tmp / "shutdown.yaml"
    config.write_text(yaml.safe_dump(dds._tiny_config(cameras=False)))
    proc = dds._start_node(["--params-file", str(config), "--namespace", namespace], robot.env,
                           robot.tmp / "shutdown.log")
    try:
        request = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_ACTIVE_SHUTDOWN))
        reply = robot.listener.call(ChangeState, f"/{namespace}/{NODE_NAME}/change_state", request)
        assert reply is not None and reply.success, (robot.tmp / "shutdown.log").read_text()
        deadline = time.monotonic() + 30.0
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.returncode == 0, f"still running or failed: {proc.returncode}\n" + (
            robot.tmp / "shutdown.log").read_text()
    finally:
        _stop(proc)
