"""Pairing and the hand-off without DDS: one record per cloud from arrival to the worker's slot, answers grouped."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from ttt_kd_ros.msgs.scan_messages import CameraMessages, read_cloud_header
from ttt_kd_ros.ros.handoff import Handoff, Job
from ttt_kd_ros.ros.pending import CAMERA_TIMEOUT, SYNC_UNMATCHED, PendingCloud
from ttt_kd_ros.ros.reason_log import ReasonLog
from ttt_kd_ros.ros.worker import LatestSlot

builtin_interfaces = pytest.importorskip("builtin_interfaces.msg")
pytest.importorskip("rclpy")  # ros.params (NodeParams, CameraParams) declares parameters on an rclpy node

from ttt_kd_ros.ros.pairing import Pairing  # noqa: E402
from ttt_kd_ros.ros.params import CameraParams, NodeParams  # noqa: E402


def _msg(stamp_ns: int, frame_id: str = "lidar") -> SimpleNamespace:
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    return SimpleNamespace(header=SimpleNamespace(stamp=builtin_interfaces.Time(sec=sec, nanosec=nanosec),
                                                  frame_id=frame_id))


def _cloud(stamp_ns: int) -> PendingCloud:
    msg = _msg(stamp_ns)
    return PendingCloud(msg, read_cloud_header(msg), time.monotonic())


class _Stats:
    def __init__(self) -> None:
        self.dropped: dict[str, int] = {}

    def count_dropped(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


def _started(camera_timeout_s: float = 0.0, slop_s: float = 0.01) -> tuple[Pairing, Handoff, list[str]]:
    logged: list[str] = []
    logger = SimpleNamespace(info=logged.append, warning=logged.append)
    params = NodeParams(values={"mode": "adapt", "sync_queue_size": 5, "sync_slop_s": slop_s,
                                "camera_timeout_s": camera_timeout_s},
                        cameras=(CameraParams("front", "/front/image", "/front/info", "", "", None),))
    pairing = Pairing(logger, ReasonLog(logged.append))
    handoff = Handoff(LatestSlot(), _Stats())
    pairing.start(params, handoff)
    return pairing, handoff, logged


def test_pairing_hands_the_arrival_record_and_camera_messages_to_the_slot_with_the_cloud_it_ends() -> None:
    pairing, handoff, _ = _started()
    on_image, on_info = pairing.camera_feeds(0)
    older, cloud = _cloud(1_000_000_000), _cloud(2_000_000_000)
    image, info = _msg(2_000_000_000, "cam"), _msg(2_000_000_000, "cam")
    with handoff.group():  # the cloud callback
        pairing.take(older)
    with handoff.group():
        pairing.take(cloud)
    on_image(image)
    assert handoff.slot.take(timeout_s=0) is None  # nothing matched yet: both clouds still wait
    on_info(info)  # the set is complete: the synchroniser calls back inside this feed
    jobs = handoff.slot.take(timeout_s=0)
    assert jobs == [Job(older, alone_reason=SYNC_UNMATCHED), Job(cloud, (CameraMessages("front", image, info),))]
    assert jobs[1].cloud is cloud  # the record that waited is the one the worker gets
    assert pairing.stop() == 0


def test_pairing_sweep_answers_clouds_alone_while_a_camera_is_silent_and_stop_counts_the_rest() -> None:
    pairing, handoff, logged = _started(camera_timeout_s=0.3, slop_s=0.25)  # the grace: max(slop, 0.1 s)
    time.sleep(0.31)  # the camera never sent: silent since start + camera_timeout_s
    cloud = _cloud(1_000_000_000)
    with handoff.group():
        pairing.take(cloud)
    pairing.sweep()
    assert handoff.slot.take(timeout_s=0) is None  # arrived while silent, but the grace for late images runs
    time.sleep(0.3)
    pairing.sweep()
    assert handoff.slot.take(timeout_s=0) == [Job(cloud, alone_reason=CAMERA_TIMEOUT)]
    assert sum("segmenting clouds alone" in line for line in logged) == 1
    with handoff.group():
        pairing.take(_cloud(2_000_000_000))
    assert pairing.stop() == 1


def test_handoff_group_replaced_by_a_newer_one_counts_every_cloud_stale() -> None:
    stats = _Stats()
    handoff = Handoff(LatestSlot(), stats)
    first, second, third = _cloud(1), _cloud(2), _cloud(3)
    with handoff.group():
        handoff.on_alone(first, SYNC_UNMATCHED)
        with handoff.group():  # a nested synchroniser callback joins the outer group
            handoff.on_pair(second, ())
    handoff.on_pair(third, ())  # outside a callback's group: a group of its own
    assert stats.dropped == {"stale": 2}
    assert handoff.slot.take(timeout_s=0) == [Job(third)]
