"""ReasonLog: the first of each (reason, camera) is logged whatever came before; repeats go to a summary."""

from __future__ import annotations

import pytest

from ttt_kd_ros.ros.reason_log import OTHER_REASONS, ReasonLog


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def _log(period_s: float = 30.0, max_keys: int = 256) -> tuple[ReasonLog, list[str], FakeClock]:
    lines: list[str] = []
    clock = FakeClock()
    return ReasonLog(lines.append, period_s, clock, max_keys), lines, clock


def test_reason_log_second_reason_is_not_hidden_by_the_first() -> None:
    log, lines, clock = _log()
    assert log.report("bad_camera: encoding 32FC1", "front: 32FC1", camera="front")
    for _ in range(50):
        log.report("bad_camera: encoding 32FC1", "front: 32FC1", camera="front")
    clock.now_s = 0.1  # well inside any throttle window
    assert log.report("bad_camera: size mismatch", "front: size mismatch", camera="front")
    assert lines == ["front: 32FC1", "front: size mismatch"]


def test_reason_log_same_reason_on_another_camera_is_logged() -> None:
    log, lines, _ = _log()
    log.report("no_transform", "front has no tf", camera="front")
    log.report("no_transform", "side has no tf", camera="side")
    assert lines == ["front has no tf", "side has no tf"]
    assert log.counts() == {("no_transform", "front"): 1, ("no_transform", "side"): 1}


def test_reason_log_repeats_are_summarised_once_per_period() -> None:
    log, lines, clock = _log(period_s=10.0)
    log.report("bad_cloud", "cloud skipped")
    for t in (1.0, 2.0, 3.0):
        clock.now_s = t
        assert not log.report("bad_cloud", "cloud skipped")
        log.report("no_transform", "side has no tf", camera="side")
    assert lines == ["cloud skipped", "side has no tf"]  # no summary before the period has passed
    clock.now_s = 10.5
    log.report("bad_cloud", "cloud skipped")
    assert len(lines) == 3
    assert "bad_cloud x4" in lines[2] and "no_transform[side] x2" in lines[2]
    clock.now_s = 11.0
    log.report("bad_cloud", "cloud skipped")
    assert len(lines) == 3  # the next summary waits for the next period
    assert log.counts()[("bad_cloud", "")] == 6


def test_reason_log_bounds_distinct_keys() -> None:
    log, lines, _ = _log(max_keys=2)
    for i in range(5):
        log.report(f"reason {i}", f"line {i}")
    assert lines == ["line 0", "line 1", "line 2"]  # the third key is the first "other" one
    assert log.counts()[(OTHER_REASONS, "")] == 3


def test_reason_log_rejects_non_positive_period() -> None:
    with pytest.raises(ValueError, match="summary_period_s"):
        ReasonLog(print, 0.0)
