"""When iterations are meant to start: the open model's arrival schedule, and pacing.

An open-model test is a list of stages; each stage moves the arrival rate linearly from
where the previous one ended to its ``target`` over its ``duration`` (a constant rate is
one stage whose start and target are equal). The n-th arrival (n = 0, 1, …) is meant to
start at the instant t where the expected number of arrivals so far, the integral of the
rate from 0 to t, equals n. The schedule is computed, never accumulated from sleeps, so a
generator that falls behind does not shift later arrivals: it starts each on time, or
counts it dropped when it cannot (too many in flight, or later than ``max_lag``). Latency
is then measured from the intended start, so a slow server cannot hide its queueing
(no coordinated omission).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum

from alwayson.util.clocks import Clock


@dataclass(frozen=True)
class Stage:
    """Move the arrival rate linearly to ``target`` (per second) over ``duration`` seconds."""

    duration: float
    target: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.duration) and self.duration > 0):
            raise ValueError(f"a stage lasts more than 0 seconds, not {self.duration}")
        if not (math.isfinite(self.target) and self.target >= 0):
            raise ValueError(f"an arrival rate is 0 or more per second, not {self.target}")


@dataclass(frozen=True)
class ArrivalSchedule:
    """Stages of arrival rate, starting from ``start_rate`` (per second)."""

    stages: tuple[Stage, ...]
    start_rate: float = 0.0

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("an arrival schedule needs at least one stage")
        if not (math.isfinite(self.start_rate) and self.start_rate >= 0):
            raise ValueError(f"an arrival rate is 0 or more per second, not {self.start_rate}")

    @classmethod
    def constant(cls, rate: float, duration: float) -> ArrivalSchedule:
        return cls((Stage(duration, rate),), start_rate=rate)

    @classmethod
    def ramping(
        cls, stages: Sequence[tuple[float, float]], start_rate: float = 0.0
    ) -> ArrivalSchedule:
        """``stages`` as ``[(duration, target_rate), …]``."""
        return cls(tuple(Stage(float(d), float(t)) for d, t in stages), start_rate=start_rate)

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.stages)

    def expected_arrivals(self) -> float:
        """The integral of the rate over the whole schedule."""
        total, rate = 0.0, self.start_rate
        for stage in self.stages:
            total += (rate + stage.target) / 2 * stage.duration
            rate = stage.target
        return total

    def offsets(self, shard: int = 0, shards: int = 1) -> Iterator[float]:
        """Intended start of each arrival, in seconds from the start, in order.

        With ``shards`` > 1 only arrivals n where n % shards == shard are given, so N
        processes each taking one shard together send exactly the single schedule.
        """
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} is not one of 0..{shards - 1}")
        n = shard
        begin, base, rate = 0.0, 0.0, self.start_rate  # stage start time and count there
        for stage in self.stages:
            in_stage = (rate + stage.target) / 2 * stage.duration
            slope = (stage.target - rate) / stage.duration
            while n < base + in_stage:
                at = _time_to_reach(n - base, rate, slope)
                if at >= stage.duration:  # rounding at the boundary: belongs to the next
                    break
                yield begin + at
                n += shards
            begin += stage.duration
            base += in_stage
            rate = stage.target


def _time_to_reach(count: float, rate: float, slope: float) -> float:
    """Smallest t ≥ 0 with rate·t + slope·t²/2 = count (count within the stage)."""
    if count <= 0:
        return 0.0
    root = math.sqrt(max(rate * rate + 2 * slope * count, 0.0))
    # 2c / (r + √(r² + 2ac)) is the quadratic's root without cancellation, and holds for
    # slope = 0 (t = c / r) and for a falling rate alike.
    return 2 * count / (rate + root)


class Admission(Enum):
    START = "start"
    DROP_IN_FLIGHT = "dropped: max in flight"
    DROP_LATE = "dropped: too late"


@dataclass(frozen=True)
class PacingLimits:
    """Bounds past which an arrival is dropped (and counted) rather than started late."""

    max_in_flight: int = 1000
    max_lag: float = 1.0

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"max in flight is at least 1, not {self.max_in_flight}")
        if not self.max_lag >= 0:
            raise ValueError(f"max lag is 0 or more seconds, not {self.max_lag}")

    def admit(self, intended: float, now: float, in_flight: int) -> Admission:
        if in_flight >= self.max_in_flight:
            return Admission.DROP_IN_FLIGHT
        if now - intended > self.max_lag:
            return Admission.DROP_LATE
        return Admission.START


# An arrival due this soon is started now rather than after a timer of its own (timers
# have a millisecond's grain anyway); while the pacer is behind or starting such arrivals,
# it yields to the event loop once every BURST of them rather than at each.
EARLY = 0.0005
BURST = 32


async def pace(
    offsets: Iterator[float],
    start: float,
    limits: PacingLimits,
    clock: Clock,
    sleep: Callable[[float], Awaitable[None]],
    in_flight: Callable[[], int],
    launch: Callable[[float], None],
    drop: Callable[[float, Admission], None],
    upcoming: Callable[[float], None] | None = None,
) -> None:
    """Start (``launch(intended)``) or ``drop`` every arrival of ``offsets`` after ``start``.

    Times are the clock's monotonic seconds. The loop sleeps until each arrival is due
    (within ``EARLY``) and yields to the event loop at least every ``BURST`` arrivals, so
    the iterations it starts get to run. ``upcoming(intended)`` is told each arrival
    before it is waited for: every arrival before that instant was started or dropped.
    """
    unyielded = 0
    for offset in offsets:
        intended = start + offset
        if upcoming is not None:
            upcoming(intended)
        wait = intended - clock.monotonic()
        if wait > EARLY or unyielded >= BURST:
            await sleep(max(wait, 0.0))
            unyielded = 0
        else:
            unyielded += 1
        verdict = limits.admit(intended, clock.monotonic(), in_flight())
        if verdict is Admission.START:
            launch(intended)
        else:
            drop(intended, verdict)
