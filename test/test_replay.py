"""ttt_kd_replay: frame grouping, point matching, node params, report books; bags through Segmenter and live node."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT
from replay_books import assert_nothing_lost, bag_cloud_stamps

from ttt_kd_ros.msgs.transforms import invert_transform, pose_to_matrix
from ttt_kd_ros.replay.bag_messages import RawMessage, cdr_header_stamp_ns, plan_bag
from ttt_kd_ros.replay.report import FrameRecord, ReplayReport, StrategyRun
from ttt_kd_ros.ros.replay_live import (
    flatten_params,
    frames_of,
    load_params_file,
    node_parameters,
    write_params_file,
)
from ttt_kd_ros.tools import make_bag, replay

COUNT = 3
POINTS = 1500
FAST = ["--steps", "1", "-p", "adapt.kd_points_per_step:=256", "--device", "cpu"]


def _cdr(stamp_ns: int, little: bool = True) -> bytes:
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    order = "<" if little else ">"
    return bytes([0, 1 if little else 0, 0, 0]) + struct.pack(order + "iI", sec, nanosec) + b"\0" * 8


def _msg(topic: str, stamp_ns: int) -> RawMessage:
    return RawMessage(topic, "sensor_msgs/msg/Image", stamp_ns, _cdr(stamp_ns))


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("replay") / "small"
    assert make_bag.main([str(out), "--count", str(COUNT), "--max-points", str(POINTS), "--rate-hz", "2",
                          "--domain", "lidar", "--seed", "5"]) == 0
    return out


def test_cdr_header_stamp_ns_both_byte_orders() -> None:
    assert cdr_header_stamp_ns(_cdr(1_700_000_000_123_456_789)) == 1_700_000_000_123_456_789
    assert cdr_header_stamp_ns(_cdr(42_000_000_007, little=False)) == 42_000_000_007
    with pytest.raises(ValueError, match="12 bytes"):
        cdr_header_stamp_ns(b"\0\1\0\0")


def test_frames_of_groups_camera_messages_before_and_after_their_cloud() -> None:
    slop = 10_000_000
    stream = [
        _msg("/img", 100_000_000), _msg("/cloud", 100_000_000),  # camera first (synthetic bags)
        _msg("/cloud", 200_000_000), _msg("/img", 200_000_000),  # cloud first (KITTI bags)
        _msg("/img", 300_000_000), _msg("/cloud", 300_000_000), _msg("/img", 305_000_000),
        _msg("/img", 400_000_000),  # an image with no cloud after it is not a frame
    ]
    frames = list(frames_of(iter(stream), "/cloud", slop))
    assert [[(m.topic, m.log_time_ns) for m in f] for f in frames] == [
        [("/img", 100_000_000), ("/cloud", 100_000_000)],
        [("/cloud", 200_000_000), ("/img", 200_000_000)],
        [("/img", 300_000_000), ("/cloud", 300_000_000), ("/img", 305_000_000)],
    ]


def test_node_parameters_cameras_extrinsics_and_cloud_only(small_bag: Path) -> None:
    plan = plan_bag(small_bag)
    base = {"cloud_topic": "/kitti/velo/points", "cameras": ["left"], "camera.left.image_topic": "/x",
            "camera_timeout_s": 2.0, "adapt.steps": 3}
    params = node_parameters(plan, base, {"adapt.steps": 1}, sensor_period_s=0.5, rate=0.1)
    assert params["cloud_topic"] == "/sensor/points" and params["mode"] == "adapt"
    assert params["cameras"] == ["sensor_cam_0", "sensor_cam_1", "sensor_cam_2"]
    assert "camera.left.image_topic" not in params
    assert params["camera.sensor_cam_1.image_topic"] == "/sensor/cam_1/image_raw"
    # the node's convention (static_transform_publisher's): the camera's pose in the cloud frame, which it inverts
    assert params["camera.sensor_cam_0.parent_frame"] == plan.cloud_frame
    cloud_from_cam = pose_to_matrix(params["camera.sensor_cam_0.extrinsics"])
    np.testing.assert_allclose(invert_transform(cloud_from_cam), plan.cam_from_cloud["sensor/cam_0"], atol=1e-9)
    assert params["adapt.steps"] == 1
    assert params["camera_timeout_s"] == pytest.approx(15.0)  # 3 periods of a 10x slowed 2 Hz bag
    plan.cameras = []
    cloud_only = node_parameters(plan, base, {}, sensor_period_s=None, rate=None)
    assert cloud_only["mode"] == "cloud_only" and "cameras" not in cloud_only


def test_plan_bag_finds_moving_cameras(small_bag: Path, tmp_path: Path) -> None:
    """The robot's cameras are rigid; a hand-held RGB-D camera moves every scan (the node cannot follow it)."""
    from ttt_kd_ros.data.synthetic import SyntheticDataset

    assert plan_bag(small_bag).moving_cameras == []
    make_bag.write_bag(tmp_path / "rgbd", SyntheticDataset("source", 2, seed=0), max_points=500)
    plan = plan_bag(tmp_path / "rgbd")
    assert plan.moving_cameras == ["sensor/rgbd_0", "sensor/rgbd_1", "sensor/rgbd_2"]
    assert plan.num_clouds == 2 and plan.label_set == "synthetic_indoor"


def test_write_params_file_round_trips_dotted_names(tmp_path: Path) -> None:
    flat = {"adapt.steps": 2, "camera.front.cam_from_cloud": [1.0, 0.0], "cameras": ["front"], "mode": "adapt"}
    path = write_params_file(tmp_path / "p.yaml", flat)
    assert "/**/ttt_kd_segmenter" in path.read_text()  # any namespace
    assert flatten_params(load_params_file(path)) == flat
    (tmp_path / "bad.yaml").write_text("other_node:\n  ros__parameters: {a: 1}\n")
    with pytest.raises(ValueError, match="ros__parameters"):
        load_params_file(tmp_path / "bad.yaml")


def test_parse_overrides_yaml_values() -> None:
    assert replay.parse_overrides(["adapt.lr:=0.01", "cameras:=[a, b]", "teacher:=tiny"]) == {
        "adapt.lr": 0.01, "cameras": ["a", "b"], "teacher": "tiny"}
    with pytest.raises(ValueError, match="NAME:=VALUE"):
        replay.parse_overrides(["adapt.lr=0.01"])


def test_report_summary_splits_drops_by_the_node_and_counts_the_rest_lost(tmp_path: Path) -> None:
    def frames(unanswered: set[int]) -> list[FrameRecord]:
        return [FrameRecord(i, i * 100, 10, sent_s=0.1 * i, done_s=None if i in unanswered else 0.1 * i + 0.05)
                for i in range(5)]

    # 5 sent, frame 2 replaced in the node's slot
    replaced = StrategyRun("ttt_kd", frames({2}), wall_s=1.0,
                           node_diagnostics={"received": "5", "processed": "4", "dropped": "1", "dropped.stale": "1",
                                             "skipped": "0", "in_flight": "0", "latency_ms.forward": "12.5",
                                             "latency_ms.pipeline": "1.3e12"})  # a KITTI stamp: the bag's age
    # 5 sent, the node got 4: one failed in its worker, one never arrived
    leaky = StrategyRun("tent", frames({2, 3}), wall_s=1.0,
                        node_diagnostics={"received": "4", "processed": "3", "dropped": "1",
                                          "dropped.worker_error": "1", "skipped": "0", "in_flight": "0"})
    report = ReplayReport("b", "node", "rate x1", "/c", ["cam"], 10.0, "", runs=[replaced, leaky])
    summary, other = report.summaries()
    assert (summary["frames_in"], summary["frames_out"], summary["dropped"]) == (5, 4, 1)
    assert (summary["node_received"], summary["dropped_by_node"], summary["skipped_by_node"],
            summary["failed_in_node"], summary["lost"], summary["not_received_by_node"]) == (5, 1, 0, 0, 0, 0)
    assert (other["frames_in"], other["frames_out"], other["dropped"]) == (5, 3, 2)
    assert (other["node_received"], other["dropped_by_node"], other["skipped_by_node"], other["failed_in_node"],
            other["lost"], other["not_received_by_node"]) == (4, 0, 0, 1, 1, 1)
    assert summary["latency_ms"]["p50"] == pytest.approx(50.0)
    assert summary["stage_ms"]["forward"]["p50"] == pytest.approx(12.5)
    assert "pipeline" not in summary["stage_ms"]  # the node's clock minus a recorded stamp is no stage of a replay
    assert summary["achieved_rate_hz"] == pytest.approx(3 / 0.4)
    json_path, md_path = report.write(tmp_path)
    assert json.loads(json_path.read_text())["runs"][0]["summary"]["dropped"] == 1
    markdown = md_path.read_text()
    assert "| ttt_kd | 5 | 4 | 1 |" in markdown and "| tent | 5 | 3 | 2 |" in markdown
    assert "failed 1, lost 1" in markdown


@pytest.mark.slow
def test_run_replay_inprocess_scores_every_strategy(small_bag: Path, tmp_path: Path) -> None:
    report, files = replay.run_replay(small_bag, mode="inprocess", strategies=["none", "ttt_kd"], out=tmp_path,
                                      overrides={"checkpoint": "", "teacher": "tiny", "adapt.steps": 1,
                                                 "adapt.kd_points_per_step": 256, "device": "cpu"})
    assert [run.strategy for run in report.runs] == ["none", "ttt_kd"]
    assert report.label_set == "synthetic_indoor"
    bag_stamps = bag_cloud_stamps(small_bag)
    assert len(bag_stamps) == COUNT
    for run in report.runs:
        assert [f.stamp_ns for f in run.frames] == bag_stamps  # every cloud of the bag, once
    for summary in report.summaries():
        assert summary["frames_in"] == summary["frames_out"] == COUNT and summary["dropped"] == 0
        assert 0.0 <= summary["miou"] <= 1.0
        assert summary["sensor_rate_hz"] == pytest.approx(2.0)
        assert {"prepare", "forward"} <= set(summary["stage_ms"])
    by_name = {s["strategy"]: s for s in report.summaries()}
    assert by_name["none"]["adapted_fraction"] == 0.0 and by_name["ttt_kd"]["adapted_fraction"] == 1.0
    assert {p.name for p in files} >= {"report.json", "report.md", "latency.png", "miou.png", "stages.png"}


def test_main_rejects_unknown_strategy(small_bag: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay.main([str(small_bag), "--mode", "inprocess", "--strategies", "none,magic"]) == 2
    assert "--strategies" in capsys.readouterr().err


def _run_cli(args: list[str], timeout_s: float = 400) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH"))
                                                      if p))
    return subprocess.run([sys.executable, "-m", "ttt_kd_ros.tools.replay", *args], env=env, capture_output=True,
                          text=True, timeout=timeout_s, check=False)


@pytest.mark.ros
@pytest.mark.slow
def test_main_node_mode_as_fast_as_possible_counts_and_labels(small_bag: Path, tmp_path: Path) -> None:
    pytest.importorskip("rclpy")
    done = _run_cli([str(small_bag), "--mode", "node", "--as-fast-as-possible", "--strategies", "ttt_kd",
                     "--checkpoint", "", "--teacher", "tiny", "--out", str(tmp_path), "--frame-timeout-s", "60",
                     "--no-plots", *FAST, "-p", "adapt.time_budget_s:=0"])  # every scan adapts, however busy the CPU
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["mode"] == "node" and report["label_set"] == "synthetic_indoor"
    bag_stamps = bag_cloud_stamps(small_bag)
    assert len(bag_stamps) == COUNT
    for run in report["runs"]:
        s = run["summary"]
        assert assert_nothing_lost(run, bag_stamps) == {}  # one frame at a time: nothing to drop
        assert s["frames_in"] == s["frames_out"] == COUNT and s["dropped"] == 0
        assert 0.0 <= s["miou"] <= 1.0
        assert s["latency_ms"]["p50"] > 0 and "forward" in s["stage_ms"]
        assert all(f["num_points"] == POINTS for f in run["frames"])
    assert [r["summary"]["strategy"] for r in report["runs"]] == ["ttt_kd"]  # none + ttt_kd: test_demo
    assert report["runs"][0]["summary"]["adapted_fraction"] == 1.0
    assert "ttt_kd" in done.stdout


@pytest.mark.ros
@pytest.mark.slow
def test_main_node_mode_fast_rate_drops_are_accounted(tmp_path: Path) -> None:
    """At 80 Hz (a 40 Hz bag at 2x) a CPU node cannot keep up: scans are dropped, and the books still balance:
    every cloud of the bag reached the node and was answered or replaced in its latest-wins slot."""
    pytest.importorskip("rclpy")
    bag = tmp_path / "fast"
    assert make_bag.main([str(bag), "--count", "8", "--max-points", "1000", "--rate-hz", "40", "--seed", "2"]) == 0
    # The replay publishes best effort (sensor data QoS): a cloud queue deeper than the 8 clouds of the burst keeps
    # them in DDS until the node's callback takes them, so every drop is the node's own (its latest-wins slot).
    done = _run_cli([str(bag), "--mode", "node", "--rate", "2.0", "--strategies", "ttt_kd", "--checkpoint", "",
                     "--teacher", "tiny", "--out", str(tmp_path / "out"), "--drain-timeout-s", "5", "--no-plots",
                     *FAST, "-p", "qos_overrides./sensor/points.subscription.depth:=16"])
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    run = json.loads((tmp_path / "out" / "report.json").read_text())["runs"][0]
    bag_stamps = bag_cloud_stamps(bag)
    assert len(bag_stamps) == 8
    drops = assert_nothing_lost(run, bag_stamps)
    assert drops.get("dropped.stale", 0) >= 1  # the node could not keep up
    s = run["summary"]
    assert s["frames_out"] >= 1 and s["dropped"] == sum(drops.values()) and s["lost"] == 0


@pytest.mark.data
@pytest.mark.slow
def test_run_replay_kitti_rosbag2_adapts_in_process(real_data: Path, tmp_path: Path) -> None:
    report, _ = replay.run_replay(real_data / "bags" / "kitti_object_ros2", mode="inprocess", strategies=["ttt_kd"],
                                  out=tmp_path, max_frames=1, plots=False,
                                  overrides={"checkpoint": "", "teacher": "tiny", "adapt.steps": 1, "device": "cpu",
                                             "adapt.kd_points_per_step": 256, "max_points": 8000})
    assert report.cameras == ["kitti/camera_color_left"] and report.adaptation_possible
    summary = report.summaries()[0]
    assert summary["frames_out"] == 1 and summary["adapted_fraction"] == 1.0
    assert report.runs[0].frames[0].num_points > 100_000  # every point labelled, not only the network's subset
    assert "miou" not in summary  # KITTI object clouds carry no labels


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("bag", ["ouster_os1_ros1.mcap", "luminar_ros1.bag"])
def test_run_replay_ros1_clouds_only_says_no_adaptation(real_data: Path, tmp_path: Path, bag: str) -> None:
    report, _ = replay.run_replay(real_data / "bags" / bag, mode="inprocess", strategies=["none", "ttt_kd"],
                                      out=tmp_path, max_frames=1, plots=False,
                                      overrides={"checkpoint": "", "teacher": "tiny", "device": "cpu",
                                                 "max_points": 20000})
    assert not report.adaptation_possible and [r.strategy for r in report.runs] == ["none"]
    assert any("no camera" in note for note in report.notes)
    assert report.summaries()[0]["frames_out"] == 1
    assert "predicted without adaptation" in (tmp_path / "report.md").read_text()
    assert report.sensor_rate_hz is None  # one frame replayed: no rate
