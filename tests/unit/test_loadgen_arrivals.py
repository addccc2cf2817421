"""The open model's schedule of intended starts, and pacing on an injected clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alwayson.loadgen.arrivals import (
    BURST,
    Admission,
    ArrivalSchedule,
    PacingLimits,
    Stage,
    pace,
)
from alwayson.util.clocks import ManualClock


def test_a_constant_rate_starts_iterations_at_exact_intervals_from_zero() -> None:
    schedule = ArrivalSchedule.constant(rate=4, duration=2)

    assert list(schedule.offsets()) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def test_a_ramp_places_the_nth_arrival_where_the_integral_of_the_rate_reaches_n() -> None:
    # 0 -> 4/s over 2 s (N(t) = t^2), hold 4/s for 1 s, 4 -> 0/s over 2 s.
    schedule = ArrivalSchedule.ramping([(2, 4), (1, 4), (2, 0)])

    offsets = list(schedule.offsets())

    ramp_down = [3 + (4 - math.sqrt(16 - 4 * k)) / 2 for k in range(4)]  # 4t - t^2 = k
    expected = [math.sqrt(n) for n in range(4)] + [2.0, 2.25, 2.5, 2.75] + ramp_down
    assert offsets == pytest.approx(expected, abs=1e-12)
    assert schedule.expected_arrivals() == 12.0
    assert schedule.duration == 5.0


def test_a_stage_at_zero_rate_sends_nothing_and_later_stages_start_after_it() -> None:
    schedule = ArrivalSchedule((Stage(1, 0), Stage(1, 2)), start_rate=0)

    # N(t) over the second stage is t^2 (0 -> 2/s over 1 s): one arrival at its start.
    assert list(schedule.offsets()) == [1.0]


def test_shards_together_are_exactly_the_whole_schedule_interleaved() -> None:
    schedule = ArrivalSchedule.ramping([(3, 10), (2, 5)], start_rate=2)
    whole = list(schedule.offsets())

    parts = [list(schedule.offsets(k, 3)) for k in range(3)]

    assert parts[0] == whole[0::3]
    assert parts[1] == whole[1::3]
    assert parts[2] == whole[2::3]


@given(
    start=st.floats(0, 500),
    stages=st.lists(st.tuples(st.floats(0.1, 20), st.floats(0, 500)), min_size=1, max_size=4),
)
def test_any_schedule_sends_its_integral_in_order_within_its_duration(
    start: float, stages: list[tuple[float, float]]
) -> None:
    schedule = ArrivalSchedule.ramping(stages, start_rate=start)

    offsets = list(schedule.offsets())

    assert offsets == sorted(offsets)
    assert all(0 <= t < schedule.duration for t in offsets)
    # n = 0, 1, … while n < integral: ceil(integral) arrivals, up to float rounding at the end
    assert abs(len(offsets) - math.ceil(schedule.expected_arrivals())) <= 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Stage(0, 5), "lasts more than 0 seconds"),
        (lambda: Stage(1, -1), "0 or more per second"),
        (lambda: Stage(1, math.nan), "0 or more per second"),
        (lambda: ArrivalSchedule(()), "at least one stage"),
        (lambda: ArrivalSchedule((Stage(1, 1),), start_rate=-2), "0 or more per second"),
        (lambda: PacingLimits(max_in_flight=0), "at least 1"),
        (lambda: list(ArrivalSchedule.constant(1, 1).offsets(3, 3)), "shard 3 is not one of"),
    ],
)
def test_bad_schedules_are_refused_saying_why(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


class Driver:
    """What ``pace`` drives, on a manual clock: sleeps advance it, iterations take
    ``service`` seconds of clock time, and ``stalls`` add time to given sleeps (a busy loop)."""

    def __init__(self, service: float = 0.0, stalls: dict[int, float] | None = None) -> None:
        self.clock = ManualClock(start=1000.0)
        self.service = service
        self.stalls = stalls or {}
        self.sleeps = 0
        self.started: list[tuple[float, float]] = []  # (intended, clock at start)
        self.dropped: list[tuple[float, Admission]] = []
        self.ends: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.clock.advance(seconds + self.stalls.get(self.sleeps, 0.0))
        self.sleeps += 1

    def in_flight(self) -> int:
        return sum(1 for end in self.ends if end > self.clock.monotonic())

    def launch(self, intended: float) -> None:
        self.started.append((intended, self.clock.monotonic()))
        self.ends.append(self.clock.monotonic() + self.service)

    def drop(self, intended: float, why: Admission) -> None:
        self.dropped.append((intended, why))

    async def run(self, schedule: ArrivalSchedule, limits: PacingLimits) -> None:
        await pace(
            schedule.offsets(),
            1000.0,
            limits,
            self.clock,
            self.sleep,
            self.in_flight,
            self.launch,
            self.drop,
        )


async def test_pacing_starts_every_iteration_at_its_intended_time() -> None:
    driver = Driver()

    await driver.run(ArrivalSchedule.ramping([(1, 4)], start_rate=2), PacingLimits())

    # 2 -> 4/s over 1 s: N(t) = 2t + t^2; arrivals where that is 0, 1 and 2.
    intended = [1000.0, 1000 + math.sqrt(2) - 1, 1000 + math.sqrt(3) - 1]
    assert [i for i, _ in driver.started] == pytest.approx(intended, abs=1e-9)
    assert all(at == intended for intended, at in driver.started)
    assert driver.dropped == []


async def test_a_generator_that_falls_behind_drops_what_is_later_than_max_lag() -> None:
    # The sleep before the 3rd arrival (at 0.2 s; the 1st, due at once, needs none) overruns
    # by 1.45 s: the loop wakes at
    # 1.65 s. Arrivals 0.2 .. 0.6 are then more than 1 s late and dropped; 0.7 .. 1.6 are
    # started late (within the bound) and the schedule does not shift.
    driver = Driver(stalls={1: 1.45})

    await driver.run(ArrivalSchedule.constant(10, 2), PacingLimits(max_lag=1.0))

    assert [round(i - 1000, 6) for i, _ in driver.dropped] == [0.2, 0.3, 0.4, 0.5, 0.6]
    assert {why for _, why in driver.dropped} == {Admission.DROP_LATE}
    started = [round(i - 1000, 6) for i, _ in driver.started]
    assert started == [0.0, 0.1, *[round(0.7 + k / 10, 6) for k in range(13)]]
    late = [(round(i - 1000, 6), round(at - 1000, 6)) for i, at in driver.started]
    assert late[2] == (0.7, 1.65)  # started late, and its latency will count from 0.7
    assert len(driver.started) + len(driver.dropped) == 20


async def test_arrivals_due_while_max_in_flight_are_busy_are_dropped_not_queued() -> None:
    # 10/s, each iteration takes 0.35 s, at most 3 in flight.
    driver = Driver(service=0.35)

    await driver.run(ArrivalSchedule.constant(10, 1), PacingLimits(max_in_flight=3))

    assert [round(i - 1000, 6) for i, _ in driver.started] == [
        0.0, 0.1, 0.2, 0.4, 0.5, 0.6, 0.8, 0.9,
    ]  # fmt: skip
    assert [(round(i - 1000, 6), why) for i, why in driver.dropped] == [
        (0.3, Admission.DROP_IN_FLIGHT),
        (0.7, Admission.DROP_IN_FLIGHT),
    ]


async def test_arrivals_due_together_start_in_bursts_with_a_yield_between() -> None:
    # 1,000 arrivals due at once (a generator far behind): started without a sleep each,
    # but the loop yields every BURST of them so the iterations get to run.
    driver = Driver()

    await driver.run(ArrivalSchedule.constant(100_000, 0.01), PacingLimits(max_in_flight=10**6))

    assert len(driver.started) == 1000 and driver.dropped == []
    assert 1000 // (BURST + 1) <= driver.sleeps <= 1000 // BURST + 1
