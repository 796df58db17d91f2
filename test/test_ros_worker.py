"""The latest-wins hand-off, the diagnostics counters and the node's pure helpers (no DDS traffic)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus

from ttt_kd_ros.ros.diagnostics import UNADAPTED_WARN_SCANS, NodeStats, reason_key, snapshot_to_status
from ttt_kd_ros.ros.worker import LatestSlot, SlotWorker
from ttt_kd_ros.scan import IGNORE_LABEL


def test_latest_slot_put_take_returns_newest_and_counts_replaced() -> None:
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert slot.take(timeout_s=0.1) == 3
    assert slot.dropped == 2
    assert slot.take(timeout_s=0.01) is None


def test_latest_slot_replace_returns_the_replaced_group_whole() -> None:
    slot: LatestSlot[list[str]] = LatestSlot()
    assert slot.replace(["unmatched", "matched"]) is None
    assert slot.replace(["newer"]) == ["unmatched", "matched"]  # the caller counts both clouds as dropped
    assert slot.take(timeout_s=0.1) == ["newer"]
    assert slot.replace(["after a take"]) is None


def test_latest_slot_take_after_take_does_not_count_drop() -> None:
    slot: LatestSlot[str] = LatestSlot()
    for item in ("a", "b", "c"):
        assert slot.put(item) is False
        assert slot.take(timeout_s=0.1) == item
    assert slot.dropped == 0


def test_latest_slot_take_waits_for_put_from_other_thread() -> None:
    slot: LatestSlot[int] = LatestSlot()
    timer = threading.Timer(0.05, slot.put, args=(7,))
    timer.start()
    t0 = time.monotonic()
    assert slot.take(timeout_s=2.0) == 7
    assert time.monotonic() - t0 < 1.5
    timer.join()


def test_latest_slot_close_wakes_waiter_and_keeps_last_item() -> None:
    slot: LatestSlot[int] = LatestSlot()
    slot.put(5)
    slot.close()
    assert slot.take(timeout_s=1.0) == 5
    t0 = time.monotonic()
    assert slot.take(timeout_s=5.0) is None
    assert time.monotonic() - t0 < 1.0


def test_slot_worker_serves_only_latest_while_busy() -> None:
    slot: LatestSlot[int] = LatestSlot()
    started, release = threading.Event(), threading.Event()
    served: list[int] = []

    def process(item: int) -> None:
        started.set()
        release.wait(timeout=5.0)
        served.append(item)

    worker = SlotWorker(slot, process, on_error=lambda item, exc: None)
    worker.start()
    slot.put(0)
    assert started.wait(timeout=2.0)
    for item in range(1, 6):  # arrive while the worker is busy with 0
        slot.put(item)
    release.set()
    deadline = time.monotonic() + 5.0
    while len(served) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.stop(timeout_s=5.0)
    assert served == [0, 5]
    assert slot.dropped == 4


def test_slot_worker_error_is_reported_and_worker_goes_on() -> None:
    slot: LatestSlot[int] = LatestSlot()
    errors: list[tuple[int, str]] = []
    served: list[int] = []
    done = threading.Event()

    def process(item: int) -> None:
        if item < 0:
            raise RuntimeError(f"bad item {item}")
        served.append(item)
        done.set()

    worker = SlotWorker(slot, process, on_error=lambda item, exc: errors.append((item, str(exc))))
    worker.start()
    slot.put(-1)
    deadline = time.monotonic() + 5.0
    while not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    slot.put(4)
    assert done.wait(timeout=5.0)
    assert worker.stop(timeout_s=5.0)
    assert errors == [(-1, "bad item -1")]
    assert served == [4]
    assert not worker.busy


def test_slot_worker_runs_on_start_on_its_own_thread_before_the_first_item() -> None:
    """Per-thread state (the current CUDA device) must be set on the worker thread, before any scan."""
    slot: LatestSlot[int] = LatestSlot()
    events: list[tuple[str, str]] = []
    done = threading.Event()

    def process(item: int) -> None:
        events.append(("process", threading.current_thread().name))
        done.set()

    worker = SlotWorker(slot, process, on_error=lambda item, exc: None, name="scan-worker",
                        on_start=lambda: events.append(("start", threading.current_thread().name)))
    worker.start()
    slot.put(1)
    assert done.wait(timeout=5.0) and worker.stop(timeout_s=5.0)
    assert events == [("start", "scan-worker"), ("process", "scan-worker")]


def test_segmenter_bind_thread_sets_the_current_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from ttt_kd_ros.segmenter import Segmenter

    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    fake = type("Fake", (), {"device": torch.device("cuda:1")})()
    Segmenter.bind_thread(fake)
    fake.device = torch.device("cpu")
    Segmenter.bind_thread(fake)
    assert chosen == [torch.device("cuda:1")]


def test_node_stats_snapshot_rate_latency_and_counts() -> None:
    stats = NodeStats(strategy="ttt_kd")
    for i in range(5):
        stats.count_received()
        stats.record_scan({"model": 0.010 * (i + 1)}, adapted=i % 2 == 0, kd_loss_before=0.9, kd_loss_after=0.5 + i,
                          skip_reason="" if i % 2 == 0 else "no visible point", now_s=100.0 + 0.5 * i)
    stats.count_dropped("stale", 3)
    stats.count_skipped("bad_cloud")
    stats.count_left_out("no_transform", "side")
    stats.record_scan({}, adapted=False, kd_loss_before=None, kd_loss_after=None, skip_reason="no_valid_points",
                      now_s=102.5)
    snap = stats.snapshot()
    assert snap.received == 5 and snap.processed == 6 and snap.dropped == {"stale": 3}
    assert abs(snap.rate_hz - 2.0) < 1e-9  # 6 scans over 2.5 s
    assert abs(snap.latency_ms["model"] - 30.0) < 1e-9  # median of 10..50 ms
    assert snap.skipped == {"bad_cloud": 1}  # outcomes only: unadapted scans and left-out cameras are apart
    assert snap.unadapted == {"no_visible_point": 2, "no_valid_points": 1}
    assert snap.left_out == {"no_transform.side": 1}
    assert snap.kd_loss_before == 0.9 and snap.kd_loss_after == 4.5  # the last scan that reported one
    assert abs(snap.adapted_fraction - 3 / 6) < 1e-9


def test_node_stats_count_scans_whose_teacher_was_withheld_and_show_the_last_fused_points() -> None:
    """What test_fusion's withheld scan reaches /diagnostics as: a running count, and 0 fused points for it."""
    stats = NodeStats(strategy="ttt_kd")
    for withheld, fused in ((False, 120), (True, 0), (True, 0), (False, 80)):
        stats.record_scan({}, adapted=True, kd_loss_before=0.5, kd_loss_after=0.3, fused_points=fused,
                          fusion_withheld=withheld)
    snap = stats.snapshot()
    assert snap.fusion_withheld == 2 and snap.fused_points == 80
    values = {kv.key: kv.value for kv in snapshot_to_status(snap, "seg", "hw").values}
    assert values["fusion_withheld"] == "2" and values["fused_points"] == "80"


def test_node_stats_engine_reasons_are_fixed_keys_and_the_values_stay_in_the_message() -> None:
    stats = NodeStats(strategy="ttt_kd")
    for remaining_s in (0.539, 0.412, 0.0, 1.25):
        stats.record_scan({}, adapted=False, kd_loss_before=None, kd_loss_after=None,
                          skip_reason=f"time budget {remaining_s:.3f} s")
    stats.record_scan({}, adapted=False, kd_loss_before=None, kd_loss_after=None,
                      skip_reason="out of memory during adaptation: CUDA out of memory. Tried to allocate 2 GiB")
    snap = stats.snapshot()
    assert snap.unadapted == {"time_budget": 4, "out_of_memory_during_adaptation": 1}
    assert snap.last_unadapted_reason.startswith("out of memory during adaptation: CUDA")


@pytest.mark.parametrize(("reason", "key"), [
    ("time budget 0.539 s", "time_budget"), ("no visible point", "no_visible_point"), ("no camera", "no_camera"),
    ("sync_unmatched", "sync_unmatched"), ("drift guard: KD loss 3.1000 > guard_abs_max 2.0", "drift_guard"),
    ("non-finite KD loss (nan) at step 3; source weights restored", "non_finite_kd_loss"), ("", "unknown")])
def test_reason_key_keeps_the_name_and_drops_values(reason: str, key: str) -> None:
    assert reason_key(reason) == key


def test_node_stats_kd_losses_come_from_adapted_scans_only() -> None:
    stats = NodeStats(strategy="ttt_kd")
    assert stats.record_scan({}, adapted=True, kd_loss_before=0.9, kd_loss_after=0.4) == 0
    # a scan that ran no step: the engine may still know the loss before; nothing was adapted "after"
    assert stats.record_scan({}, adapted=False, kd_loss_before=0.8, kd_loss_after=0.8,
                             skip_reason="time budget 0.000 s") == 1
    snap = stats.snapshot()
    assert (snap.kd_loss_before, snap.kd_loss_after) == (0.9, 0.4)
    fresh = NodeStats(strategy="ttt_kd")
    fresh.record_scan({}, adapted=False, kd_loss_before=0.8, kd_loss_after=0.8, skip_reason="time budget 0.000 s")
    assert fresh.snapshot().kd_loss_after is None  # /diagnostics says nan, not a loss no step produced


def test_node_stats_books_balance_with_every_outcome_named() -> None:
    stats = NodeStats(strategy="ttt_kd")
    for _ in range(7):
        stats.count_received()
    stats.record_scan({}, adapted=True, kd_loss_before=None, kd_loss_after=None)
    stats.record_scan({}, adapted=False, kd_loss_before=None, kd_loss_after=None, skip_reason="sync_unmatched")
    stats.count_dropped("stale")
    stats.count_error("RuntimeError")  # its cloud is dropped.worker_error
    stats.count_skipped("stamp_too_old")
    snap = stats.snapshot()
    assert snap.in_flight == 2  # still waiting: not yet an outcome
    values = {kv.key: kv.value for kv in snapshot_to_status(snap, "seg", "hw").values}
    assert values["dropped.stale"] == "1" and values["dropped.worker_error"] == "1"
    # 7 received = 2 answered + 2 dropped + 1 skipped + 2 still waiting, each count as the test made it
    assert (values["received"], values["processed"], values["dropped"], values["skipped"], values["in_flight"]) == (
        "7", "2", "2", "1", "2")
    assert values["unadapted.sync_unmatched"] == "1"


def test_snapshot_to_status_levels_and_keys() -> None:
    stats = NodeStats(strategy="tent")
    idle = snapshot_to_status(stats.snapshot(), "seg", "hw")
    assert idle.level == DiagnosticStatus.WARN
    stats.record_scan({"model": 0.02}, adapted=True, kd_loss_before=None, kd_loss_after=None)
    stats.set_visible_points({"front": 120, "side": 0})
    ok = snapshot_to_status(stats.snapshot(), "seg", "hw")
    values = {kv.key: kv.value for kv in ok.values}
    assert ok.level == DiagnosticStatus.OK
    assert values["strategy"] == "tent" and values["processed"] == "1" and values["kd_loss_before"] == "nan"
    assert float(values["latency_ms.model"]) == 20.0
    assert values["visible_points.front"] == "120" and values["visible_points.side"] == "0"
    stats.count_error("RuntimeError")
    failing = snapshot_to_status(stats.snapshot(), "seg", "hw")
    assert failing.level == DiagnosticStatus.WARN
    assert {kv.key: kv.value for kv in failing.values}["errors.RuntimeError"] == "1"


@pytest.mark.parametrize(("strategy", "mode", "warns"), [("ttt_kd", "adapt", True), ("none", "adapt", False),
                                                         ("ttt_kd", "cloud_only", False)])
def test_snapshot_to_status_warns_while_nothing_adapts(strategy: str, mode: str, warns: bool) -> None:
    stats = NodeStats(strategy=strategy, mode=mode)
    stats.record_scan({}, adapted=True, kd_loss_before=None, kd_loss_after=None)
    for _ in range(UNADAPTED_WARN_SCANS):
        stats.record_scan({}, adapted=False, kd_loss_before=None, kd_loss_after=None, skip_reason="no visible point")
    status = snapshot_to_status(stats.snapshot(), "seg", "hw")
    assert (status.level == DiagnosticStatus.WARN) == warns
    if warns:
        assert "no adaptation in the last 10 scans" in status.message and "no visible point" in status.message
    stats.record_scan({}, adapted=True, kd_loss_before=None, kd_loss_after=None)
    assert snapshot_to_status(stats.snapshot(), "seg", "hw").level == DiagnosticStatus.OK


def test_apply_min_confidence_marks_low_points_ignored() -> None:
    from ttt_kd_ros.msgs.scan_messages import apply_min_confidence

    labels = np.array([3, 4, 5])
    confidence = np.array([0.9, 0.2, 0.5], dtype=np.float32)
    np.testing.assert_array_equal(apply_min_confidence(labels, confidence, 0.5), [3, IGNORE_LABEL, 5])
    assert apply_min_confidence(labels, confidence, 0.0) is labels


def test_cap_cloud_keeps_order_and_source_index() -> None:
    from ttt_kd_ros.msgs.cloud import CloudArrays, cap_cloud

    xyz = np.arange(30, dtype=np.float32).reshape(10, 3)
    cloud = CloudArrays(xyz_m=xyz, intensity=np.arange(10, dtype=np.float32), rgb=None, labels=None,
                        source_index=np.arange(10) * 2, num_input_points=20)
    capped = cap_cloud(cloud, 4, np.random.default_rng(0))
    assert len(capped.xyz_m) == 4 and np.all(np.diff(capped.source_index) > 0)
    np.testing.assert_array_equal(capped.xyz_m[:, 0] / 3, capped.intensity)  # rows stay together
    np.testing.assert_array_equal(capped.source_index, capped.intensity.astype(np.int64) * 2)
    assert cap_cloud(cloud, 10, np.random.default_rng(0)) is cloud


def test_benchmark_node_run_times_every_stage() -> None:
    from ttt_kd_ros.ros.benchmark_node import run

    results = run(points=2000, reps=2, publish=False)
    assert set(results) == {"decode", "sync", "scan_assembly", "encode", "decode_and_assembly", "total"}
    assert all(ms > 0 for ms in results.values())


def test_snapshot_to_status_late_scans_warn_then_error_then_recover() -> None:
    stats = NodeStats(strategy="ttt_kd")
    stats.record_scan({"total": 5.0}, adapted=True, kd_loss_before=None, kd_loss_after=None)
    assert snapshot_to_status(stats.snapshot(), "seg", "hw").level == DiagnosticStatus.OK  # late_scan_s 0: off
    stats.set_late_limits(late_scan_s=0.2, late_scans_error=3)
    levels = []
    for total_s in (0.1, 0.3, 0.25, 0.4, 0.15):
        stats.record_scan({"total": total_s}, adapted=True, kd_loss_before=None, kd_loss_after=None)
        levels.append(snapshot_to_status(stats.snapshot(), "seg", "hw").level)
    assert levels == [DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.WARN, DiagnosticStatus.ERROR,
                      DiagnosticStatus.OK]
    stats.record_scan({"total": 0.3}, adapted=True, kd_loss_before=None, kd_loss_after=None)
    status = snapshot_to_status(stats.snapshot(), "seg", "hw")
    values = {kv.key: kv.value for kv in status.values}
    assert values["late_scans"] == "4" and values["late_in_a_row"] == "1"
    assert "late" in status.message and "0.300 s" in status.message


def test_label_info_publisher_maps_class_ids_to_names_latched() -> None:
    """The LabelInfo code path with a stand-in message module: vision_msgs has no wheel here (README says so)."""
    from types import SimpleNamespace

    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    from ttt_kd_ros.labels import LABEL_SETS
    from ttt_kd_ros.ros.compat import LabelInfoPublisher

    class LabelInfo:
        def __init__(self) -> None:
            self.header = SimpleNamespace(stamp=None)
            self.class_map: list = []
            self.threshold = -1.0

    class VisionClass(SimpleNamespace):
        pass

    sent: list = []
    made: dict = {}

    class FakeNode:
        def create_publisher(self, message_type: type, topic: str, qos: object) -> SimpleNamespace:
            made.update(type=message_type, topic=topic, qos=qos)
            return SimpleNamespace(publish=sent.append)

    publisher = LabelInfoPublisher(FakeNode(), "~/label_info", SimpleNamespace(LabelInfo=LabelInfo,
                                                                                VisionClass=VisionClass))
    label_set = LABEL_SETS["synthetic_indoor"]
    publisher.publish(label_set, "stamp")
    assert made["type"] is LabelInfo and made["topic"] == "~/label_info"
    assert made["qos"].durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert made["qos"].reliability == ReliabilityPolicy.RELIABLE and made["qos"].depth == 1
    (msg,) = sent
    assert msg.header.stamp == "stamp" and msg.threshold == 0.0
    assert [(c.class_id, c.class_name) for c in msg.class_map] == list(enumerate(label_set.class_names))


def test_warm_up_costs_name_the_step_and_the_final_forward() -> None:
    from types import SimpleNamespace

    from ttt_kd_ros.ros.node import warm_up_costs

    prediction = SimpleNamespace(steps_run=2, timings_s={"ttt_step": 0.5, "forward": 0.125, "teacher": 0.1})
    words = warm_up_costs(prediction)
    assert "one adaptation step 250.0 ms" in words and "the final forward 125.0 ms" in words
    assert "every stage but the steps 225.0 ms" in words
    assert "step" not in warm_up_costs(SimpleNamespace(steps_run=0, timings_s={"forward": 0.1})).split(",")[0]
    frozen = warm_up_costs(SimpleNamespace(steps_run=1, timings_s={"ttt_step": 0.05, "encoder": 0.4, "forward": 0.45}))
    assert "once per scan, 400.0 ms" in frozen and "the final forward (the stages that move) 450.0 ms" in frozen


def test_admission_refuses_stamps_too_old_or_in_the_future_and_unread_output() -> None:
    from types import SimpleNamespace

    from ttt_kd_ros.ros.admission import NO_SUBSCRIBER, STAMP_IN_FUTURE, STAMP_TOO_OLD, output_refusal, stamp_refusal

    now = 100 * 10**9
    assert stamp_refusal(now - 3 * 10**9, now, max_age_s=2.0, max_future_s=0.5) == STAMP_TOO_OLD
    assert stamp_refusal(now + 10**9, now, max_age_s=2.0, max_future_s=0.5) == STAMP_IN_FUTURE
    assert stamp_refusal(now - 1 * 10**9, now, max_age_s=2.0, max_future_s=0.5) == ""
    assert stamp_refusal(0, now, max_age_s=0.0, max_future_s=0.0) == ""  # limits of 0 are off
    per_scan, online = SimpleNamespace(name="ttt_kd", episodic=True), SimpleNamespace(name="ttt_kd_online",
                                                                                        episodic=False)
    assert output_refusal(True, 0, per_scan) == NO_SUBSCRIBER
    assert output_refusal(True, 0, online) == ""  # an online strategy would miss an update
    assert output_refusal(True, 1, per_scan) == "" and output_refusal(False, 0, per_scan) == ""
