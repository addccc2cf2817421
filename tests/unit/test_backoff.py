"""Restart backoff: exponential from 0.5 s, capped at 30 s, reset after a stable run."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alwayson.control.backoff import (
    BASE_DELAY,
    MAX_DELAY,
    STABLE_AFTER,
    CrashRecord,
    backoff_delay,
)
from alwayson.util.clocks import ManualClock


def test_delays_double_from_half_a_second_up_to_the_cap() -> None:
    assert [backoff_delay(n) for n in range(1, 10)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
        30.0,
    ]
    assert (BASE_DELAY, MAX_DELAY, STABLE_AFTER) == (0.5, 30.0, 10.0)


@pytest.mark.parametrize("failures", [0, -1])
def test_no_failure_no_delay(failures: int) -> None:
    assert backoff_delay(failures) == 0.0


def test_base_and_cap_are_parameters() -> None:
    assert [backoff_delay(n, base=1.0, cap=5.0) for n in range(1, 5)] == [1.0, 2.0, 4.0, 5.0]


@given(st.integers(min_value=1, max_value=1000))
def test_delay_is_monotonic_and_bounded(failures: int) -> None:
    delay = backoff_delay(failures)

    assert BASE_DELAY <= delay <= MAX_DELAY
    assert backoff_delay(failures + 1) >= delay


@pytest.mark.parametrize("failures", [1025, 10_000])
def test_a_very_long_crash_loop_stays_at_the_cap(failures: int) -> None:
    assert backoff_delay(failures) == MAX_DELAY


def test_crashes_count_up_and_schedule_the_next_start() -> None:
    clock = ManualClock()
    record = CrashRecord()

    delays = []
    for _ in range(4):
        delays.append(record.crashed(clock.monotonic(), "exit 1", 1, ran_for=0.2))
        clock.advance(record.delay)

    assert delays == [0.5, 1.0, 2.0, 4.0]
    assert record.failures == 4
    assert record.total_restarts == 4
    assert record.delay == 4.0
    assert record.next_start_at == clock.monotonic()
    assert (record.last_reason, record.last_exit_code) == ("exit 1", 1)


def test_next_start_is_now_plus_the_delay() -> None:
    clock = ManualClock(start=500.0)
    record = CrashRecord()

    delay = record.crashed(clock.monotonic(), "killed by SIGKILL", None, ran_for=1.0)

    assert delay == 0.5
    assert record.next_start_at == 500.5
    assert record.last_exit_code is None


def test_a_stable_run_resets_the_backoff_but_not_the_restart_count() -> None:
    clock = ManualClock()
    record = CrashRecord()
    for _ in range(5):
        record.crashed(clock.monotonic(), "exit 1", 1, ran_for=0.1)
    assert record.delay == 8.0

    clock.advance(60)
    delay = record.crashed(clock.monotonic(), "exit 2", 2, ran_for=STABLE_AFTER)

    assert delay == BASE_DELAY
    assert record.failures == 1
    assert record.total_restarts == 6
    assert record.last_reason == "exit 2"
    assert record.next_start_at == clock.monotonic() + BASE_DELAY


def test_a_run_just_short_of_stable_keeps_counting() -> None:
    record = CrashRecord()
    record.crashed(0.0, "exit 1", 1, ran_for=0.0)

    delay = record.crashed(5.0, "exit 1", 1, ran_for=STABLE_AFTER - 0.001)

    assert delay == 1.0
    assert record.failures == 2


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=60))
def test_failures_count_crashes_since_the_last_stable_run(runs: list[float]) -> None:
    record = CrashRecord()
    now = 0.0
    for ran_for in runs:
        record.crashed(now, "exit 1", 1, ran_for)
        now += 1.0

    since_stable = 0
    for ran_for in runs:
        since_stable = 1 if ran_for >= STABLE_AFTER else since_stable + 1
    assert record.failures == since_stable
    assert record.total_restarts == len(runs)
    assert record.delay == backoff_delay(since_stable)
