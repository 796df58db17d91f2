"""Approximate-time synchroniser with mock stamped messages (no ROS needed)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from ttt_kd_ros.ros import compat
from ttt_kd_ros.ros.sync import ApproximateTimeSynchronizer, SyncInput, message_stamp_ns

NS = 1_000_000_000


@dataclass
class Stamped:
    """A message with a ROS 2 header; ``name`` tells tests which input it belongs to."""

    name: str
    stamp_ns: int
    header: SimpleNamespace = field(init=False)

    def __post_init__(self) -> None:
        stamp = SimpleNamespace(sec=self.stamp_ns // NS, nanosec=self.stamp_ns % NS)
        self.header = SimpleNamespace(stamp=stamp, frame_id=self.name)


def _make(num_inputs: int, queue_size: int = 5, slop_s: float = 0.05):
    inputs = [SyncInput(f"in{i}") for i in range(num_inputs)]
    sync = ApproximateTimeSynchronizer(inputs, queue_size=queue_size, slop=slop_s)
    got: list[tuple[Stamped, ...]] = []
    sync.registerCallback(lambda *msgs: got.append(msgs))
    return inputs, sync, got


def _ms(value: float) -> int:
    return round(value * 1_000_000)


def test_message_stamp_ns_reads_ros2_and_ros1_stamps() -> None:
    assert message_stamp_ns(Stamped("a", 3 * NS + 7)) == 3 * NS + 7
    ros1 = SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(secs=2, nsecs=5)))
    assert message_stamp_ns(ros1) == 2 * NS + 5
    assert message_stamp_ns(object()) is None


def test_add_exact_match_emits_in_input_order() -> None:
    inputs, sync, got = _make(3)
    inputs[2].add(Stamped("info", NS))
    inputs[0].add(Stamped("cloud", NS))
    assert got == []
    inputs[1].add(Stamped("image", NS))
    assert [[m.name for m in msgs] for msgs in got] == [["cloud", "image", "info"]]
    assert sync.queue_lengths() == [0, 0, 0]


def test_add_within_slop_matches() -> None:
    inputs, _, got = _make(2, slop_s=0.05)
    inputs[0].add(Stamped("cloud", NS))
    inputs[1].add(Stamped("image", NS + _ms(40)))
    assert len(got) == 1
    assert got[0][1].stamp_ns == NS + _ms(40)


def test_add_outside_slop_does_not_match() -> None:
    inputs, sync, got = _make(2, slop_s=0.05)
    inputs[0].add(Stamped("cloud", NS))
    inputs[1].add(Stamped("image", NS + _ms(60)))
    assert got == []
    assert sync.queue_lengths() == [1, 1]


def test_add_out_of_order_arrival_picks_nearest() -> None:
    inputs, _, got = _make(2, slop_s=0.05)
    inputs[1].add(Stamped("image", NS + _ms(200)))  # a later image arrives first
    inputs[1].add(Stamped("image", NS + _ms(30)))
    inputs[1].add(Stamped("image", NS + _ms(10)))
    inputs[0].add(Stamped("cloud", NS))
    assert len(got) == 1
    assert got[0][1].stamp_ns == NS + _ms(10)


def test_add_picks_tightest_set_across_inputs() -> None:
    inputs, _, got = _make(3, slop_s=0.05)
    inputs[1].add(Stamped("image", NS - _ms(40)))
    inputs[1].add(Stamped("image", NS + _ms(20)))
    inputs[2].add(Stamped("info", NS + _ms(25)))
    inputs[0].add(Stamped("cloud", NS))
    assert len(got) == 1
    assert [m.stamp_ns for m in got[0]] == [NS, NS + _ms(20), NS + _ms(25)]


def test_add_queue_overflow_drops_oldest() -> None:
    inputs, sync, got = _make(2, queue_size=3, slop_s=0.01)
    for k in range(5):
        inputs[1].add(Stamped("image", NS + k * _ms(100)))
    assert sync.queue_lengths() == [0, 3]
    assert sync.dropped_overflow == 2
    inputs[0].add(Stamped("cloud", NS))  # its partner was dropped
    assert got == []
    inputs[0].add(Stamped("cloud", NS + _ms(400)))
    assert len(got) == 1 and got[0][1].stamp_ns == NS + _ms(400)


def test_add_camera_never_arrives_emits_nothing_and_stays_bounded() -> None:
    inputs, sync, got = _make(3, queue_size=4)
    for k in range(50):
        inputs[0].add(Stamped("cloud", NS + k * _ms(100)))
        inputs[1].add(Stamped("image", NS + k * _ms(100)))
    assert got == []
    assert sync.queue_lengths() == [4, 4, 0]


def test_add_cloud_from_future_or_past_does_not_match() -> None:
    inputs, _, got = _make(2, slop_s=0.05)
    inputs[1].add(Stamped("image", 10 * NS))
    inputs[0].add(Stamped("cloud", 20 * NS))  # future
    inputs[0].add(Stamped("cloud", 1 * NS))  # past
    assert got == []
    inputs[0].add(Stamped("cloud", 10 * NS + _ms(1)))
    assert len(got) == 1 and got[0][0].stamp_ns == 10 * NS + _ms(1)


def test_add_single_input_emits_every_message() -> None:
    inputs, _, got = _make(1)
    inputs[0].add(Stamped("cloud", NS))
    inputs[0].add(Stamped("cloud", 2 * NS))
    assert [msgs[0].stamp_ns for msgs in got] == [NS, 2 * NS]


def test_add_headerless_is_dropped_and_counted() -> None:
    inputs, sync, got = _make(2)
    inputs[0].add(object())
    assert got == [] and sync.dropped_headerless == 1 and sync.queue_lengths() == [0, 0]


def test_add_headerless_allowed_uses_clock() -> None:
    inputs = [SyncInput(), SyncInput()]
    sync = ApproximateTimeSynchronizer(inputs, 5, 0.05, allow_headerless=True, clock_ns=lambda: 5 * NS)
    got: list[tuple] = []
    sync.registerCallback(lambda *m: got.append(m))
    inputs[0].add(object())
    inputs[1].add(Stamped("image", 5 * NS))
    assert len(got) == 1


def test_callback_runs_without_holding_lock() -> None:
    inputs = [SyncInput(), SyncInput()]
    sync = ApproximateTimeSynchronizer(inputs, 5, 0.05)
    seen: list[bool] = []

    def callback(*msgs: Stamped) -> None:
        seen.append(sync._lock.locked())
        inputs[0].add(Stamped("cloud", 9 * NS))  # re-entrant feeding must not dead-lock

    sync.registerCallback(callback)
    worker = threading.Thread(target=lambda: (inputs[0].add(Stamped("c", NS)), inputs[1].add(Stamped("i", NS))))
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert seen == [False]


def test_init_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        ApproximateTimeSynchronizer([SyncInput()], 0, 0.1)
    with pytest.raises(ValueError, match="slop"):
        ApproximateTimeSynchronizer([SyncInput()], 1, -0.1)


def test_make_synchronizer_builtin_feeds_callback() -> None:
    got: list[tuple] = []
    pipeline = compat.make_synchronizer(["cloud", "image", "info"], 5, 0.05, lambda *m: got.append(m),
                                        use_message_filters=False)
    assert pipeline.backend == "builtin"
    for index, name in enumerate(["cloud", "image", "info"]):
        pipeline.add(index, Stamped(name, NS))
    assert [m.name for m in got[0]] == ["cloud", "image", "info"]


def test_make_synchronizer_default_matches_availability() -> None:
    pipeline = compat.make_synchronizer(["a", "b"], 5, 0.05, lambda *m: None)
    expected = "message_filters" if compat.have("message_filters") else "builtin"
    assert pipeline.backend == expected


def test_make_synchronizer_message_filters_when_importable() -> None:
    if not compat.have("message_filters"):
        pytest.skip("message_filters is not installed (ROS 2 install only)")
    got: list[tuple] = []
    pipeline = compat.make_synchronizer(["cloud", "image"], 5, 0.05, lambda *m: got.append(m),
                                        use_message_filters=True)
    pipeline.add(0, Stamped("cloud", NS))
    pipeline.add(1, Stamped("image", NS + _ms(10)))
    assert [m.name for m in got[0]] == ["cloud", "image"]


def test_make_synchronizer_requires_message_filters_when_asked() -> None:
    if compat.have("message_filters"):
        pytest.skip("message_filters is installed")
    with pytest.raises(ImportError, match="message_filters"):
        compat.make_synchronizer(["a"], 5, 0.05, lambda *m: None, use_message_filters=True)
