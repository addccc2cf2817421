"""Running a load test in this process: the open and closed models on asyncio.

Open model (``OpenModel``): iterations arrive on the schedule of ``arrivals`` whatever
the server does; each is started at its intended time or counted dropped (see
``arrivals.pace``). Closed model (``ClosedModel``): ``users`` virtual users each loop
``iteration, think`` until the duration ends; a slow server slows them down, so its
latency counts from each iteration's actual start (closed-model tools all share this
coordinated omission; use the open model to judge latency).

One ``clients.HttpClient`` serves the run: keep-alive, a pool as large as the concurrency
(``max_in_flight`` or ``users`` unless ``connections`` says otherwise). When the pool is
smaller, requests wait in it and that wait is part of their latency.

At the end the run waits up to ``drain`` seconds for iterations in flight, then cancels
the rest and counts them failed (``unfinished``), so ``sent == ok + failed`` always.

While it runs: ``on_second(row)`` gets each completed wall-clock second's row once, in
order, frozen (exact live progress; the rows handed out add up to the result's totals);
``on_snapshot(result)`` gets a copy of the figures so far every ``snapshot_every`` seconds
(a soak's snapshots); setting ``stop`` ends the arrivals (open model) or the users' loops
(closed model) early, then the run drains as usual and returns what it has, marked
``interrupted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from alwayson.loadgen.arrivals import Admission, ArrivalSchedule, PacingLimits, pace
from alwayson.loadgen.clients import HttpClient, Transport
from alwayson.loadgen.recording import Recorder, SecondRow
from alwayson.loadgen.results import RunResult
from alwayson.loadgen.scenarios import Scenario, Session, StepFailed
from alwayson.util.clocks import Clock, SystemClock

Sleep = Callable[[float], Awaitable[None]]
OnSecond = Callable[[SecondRow], None]
OnSnapshot = Callable[[RunResult], None]
UNFINISHED = "unfinished"
SETTLE_MARGIN = 0.02  # seconds after a wall-clock second ends before its row is handed out


@dataclass(frozen=True)
class OpenModel:
    arrivals: ArrivalSchedule
    limits: PacingLimits = field(default_factory=PacingLimits)

    @classmethod
    def constant(
        cls, rate: float, duration: float, max_in_flight: int = 1000, max_lag: float = 1.0
    ) -> OpenModel:
        return cls(ArrivalSchedule.constant(rate, duration), PacingLimits(max_in_flight, max_lag))

    @property
    def duration(self) -> float:
        return self.arrivals.duration

    @property
    def concurrency(self) -> int:
        return self.limits.max_in_flight


@dataclass(frozen=True)
class ClosedModel:
    users: int
    duration: float
    think: float = 0.0

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"a closed model needs at least 1 user, not {self.users}")
        if not self.duration > 0:
            raise ValueError(f"a test lasts more than 0 seconds, not {self.duration}")
        if not self.think >= 0:
            raise ValueError(f"think time is 0 or more seconds, not {self.think}")

    @property
    def concurrency(self) -> int:
        return self.users


Model = OpenModel | ClosedModel


@dataclass(frozen=True)
class LoadTest:
    base_url: str
    scenario: Scenario
    model: Model
    timeout: float = 10.0  # per request: connect, pool wait, read, write
    connections: int | None = None  # None: as many as the model's concurrency
    headers: Mapping[str, str] = field(default_factory=dict)
    drain: float | None = None  # None: the request timeout

    def pool_size(self) -> int:
        return self.connections or self.model.concurrency

    def shard(self, shard: int, shards: int) -> LoadTest:
        """This test's share for process ``shard`` of ``shards``: the same arrival schedule
        taken every ``shards``-th arrival, users, in-flight bound and pool split."""
        if shards == 1:
            return self
        model: Model
        if isinstance(self.model, OpenModel):
            limits = self.model.limits
            model = replace(
                self.model,
                limits=replace(limits, max_in_flight=_share(limits.max_in_flight, shards)),
            )
        else:
            users = self.model.users // shards + (shard < self.model.users % shards)
            if users < 1:
                raise ValueError(f"{self.model.users} users cannot be split over {shards}")
            model = replace(self.model, users=users)
        connections = None if self.connections is None else _share(self.connections, shards)
        return replace(self, model=model, connections=connections)


def _share(total: int, shards: int) -> int:
    return max(1, -(-total // shards))


def make_client(test: LoadTest) -> HttpClient:
    return HttpClient(
        test.base_url,
        headers=dict(test.headers),
        timeout=test.timeout,
        max_connections=test.pool_size(),
    )


async def run_load(
    test: LoadTest,
    *,
    clock: Clock | None = None,
    sleep: Sleep = asyncio.sleep,
    client: Transport | None = None,
    shard: int = 0,
    shards: int = 1,
    start_at: float | None = None,
    on_second: OnSecond | None = None,
    stop: asyncio.Event | None = None,
    on_snapshot: OnSnapshot | None = None,
    snapshot_every: float = 600.0,
) -> RunResult:
    """Run ``test`` (already this process's share when sharded) and return its results.

    ``shard``/``shards`` pick this process's arrivals of the open model's schedule;
    ``start_at`` (the clock's monotonic time) lets several processes start together.
    ``on_second``, ``on_snapshot`` and ``stop``: see the module.
    """
    clock = clock or SystemClock()
    if not snapshot_every > 0:
        raise ValueError(f"snapshots are more than 0 seconds apart, not {snapshot_every}")
    owned = client is None
    http = client or make_client(test)
    try:
        if start_at is not None and not (stop and stop.is_set()):
            await _sleep_unless_stopped(sleep, max(start_at - clock.monotonic(), 0.0), stop)
        recorder = Recorder(clock)
        runner = _Runner(test, http, recorder, clock, sleep)
        live = _Live(recorder, clock, sleep, runner, on_second, on_snapshot, snapshot_every)
        ticker = (
            asyncio.create_task(live.tick())
            if on_second is not None or on_snapshot is not None
            else None
        )
        try:
            if isinstance(test.model, OpenModel):
                interrupted = await runner.open(test.model, shard, shards, stop)
            else:
                interrupted = await runner.closed(test.model, stop)
            await runner.drain(test.timeout if test.drain is None else test.drain)
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
        result = RunResult.from_recorder(recorder, clock.monotonic(), interrupted)
        live.flush()
        return result
    finally:
        if owned:
            await http.aclose()


async def _sleep_unless_stopped(sleep: Sleep, seconds: float, stop: asyncio.Event | None) -> None:
    if stop is None:
        await sleep(seconds)
        return
    napping = asyncio.ensure_future(sleep(seconds))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({napping, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for task in (napping, stopped):
        task.cancel()


class _Live:
    """Hands out each completed second (``on_second``) and the snapshots (``on_snapshot``)."""

    def __init__(
        self,
        recorder: Recorder,
        clock: Clock,
        sleep: Sleep,
        runner: _Runner,
        on_second: OnSecond | None,
        on_snapshot: OnSnapshot | None,
        snapshot_every: float,
    ) -> None:
        self.recorder = recorder
        self.clock = clock
        self.sleep = sleep
        self.runner = runner
        self.on_second = on_second
        self.on_snapshot = on_snapshot
        self.snapshot_every = snapshot_every
        self.next_snapshot = recorder.origin_monotonic + snapshot_every

    async def tick(self) -> None:
        while True:
            wall = self.clock.wall()
            await self.sleep(math.floor(wall) + 1 - wall + SETTLE_MARGIN)
            self.settle()
            now = self.clock.monotonic()
            if self.on_snapshot is not None and now >= self.next_snapshot:
                while self.next_snapshot <= now:
                    self.next_snapshot += self.snapshot_every
                self.on_snapshot(RunResult.snapshot(self.recorder, now))

    def settle(self) -> None:
        """Hand out the seconds that are over: before the clock's second and, while the
        open model paces, before the next arrival still to be started or dropped."""
        upto = self.recorder.second_of(self.clock.monotonic())
        pending = self.runner.next_arrival
        if pending is not None:
            upto = min(upto, self.recorder.second_of(pending))
        self._hand_out(self.recorder.settle(upto))

    def flush(self) -> None:
        self._hand_out(self.recorder.settle_all())

    def _hand_out(self, rows: list[SecondRow]) -> None:
        if self.on_second is not None:
            for row in rows:
                self.on_second(row)


def run_load_sync(
    test: LoadTest, *, shard: int = 0, shards: int = 1, start_at: float | None = None
) -> RunResult:
    """``run_load`` on a fresh event loop (uvloop when installed)."""
    return run_in_loop(lambda: run_load(test, shard=shard, shards=shards, start_at=start_at))


T = TypeVar("T")


def run_in_loop(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``main()`` on a fresh event loop (uvloop when installed), from synchronous code."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class _Runner:
    def __init__(
        self,
        test: LoadTest,
        client: Transport,
        recorder: Recorder,
        clock: Clock,
        sleep: Sleep,
    ) -> None:
        self.test = test
        self.client = client
        self.recorder = recorder
        self.clock = clock
        self.sleep = sleep
        self.tasks: set[asyncio.Task[None]] = set()
        # While pacing: the intended start of the next arrival not yet started or dropped.
        self.next_arrival: float | None = None

    async def iteration(self, intended: float) -> None:
        """One pass of the scenario; never raises (outcomes are recorded)."""
        session = Session(self.client, self.recorder, self.clock, intended)
        ok = False
        try:
            await self.test.scenario(session)
            ok = True
        except StepFailed:
            pass  # recorded under its step
        except asyncio.CancelledError:
            self.recorder.journey_error(UNFINISHED)
            self.recorder.finished(intended, self.clock.monotonic(), False)
            raise
        except Exception as exc:
            self.recorder.journey_error(type(exc).__name__)
        self.recorder.finished(intended, self.clock.monotonic(), ok)

    def launch(self, intended: float) -> None:
        self.recorder.started(intended)
        # Timers may wake a little early (uvloop rounds to the millisecond): latency then
        # runs from the actual start, never from a future instant.
        origin = min(intended, self.clock.monotonic())
        task = asyncio.create_task(self.iteration(origin))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def drop(self, intended: float, _why: Admission) -> None:
        self.recorder.dropped_one(intended)

    async def open(
        self, model: OpenModel, shard: int, shards: int, stop: asyncio.Event | None
    ) -> bool:
        """Pace the arrivals; True when ``stop`` ended them early."""
        self.next_arrival = self.recorder.origin_monotonic

        def upcoming(intended: float) -> None:
            self.next_arrival = intended

        pacing = pace(
            model.arrivals.offsets(shard, shards),
            self.recorder.origin_monotonic,
            model.limits,
            self.clock,
            self.sleep,
            lambda: len(self.tasks),
            self.launch,
            self.drop,
            upcoming,
        )
        try:
            if stop is None:
                await pacing
                return False
            return await _unless_stopped(pacing, stop)
        finally:
            self.next_arrival = None

    async def closed(self, model: ClosedModel, stop: asyncio.Event | None) -> bool:
        """Run the users until the duration ends; True when ``stop`` ended them early."""
        deadline = self.recorder.origin_monotonic + model.duration

        def going() -> bool:
            return self.clock.monotonic() < deadline and not (stop and stop.is_set())

        async def user() -> None:
            while going():
                intended = self.clock.monotonic()
                self.recorder.started(intended)
                await self.iteration(intended)
                if model.think and going():
                    await self.sleep(min(model.think, max(deadline - self.clock.monotonic(), 0)))

        users = {asyncio.create_task(user()) for _ in range(model.users)}
        self.tasks.update(users)
        for task in users:
            task.add_done_callback(self.tasks.discard)
        # The users end themselves at the deadline; drain() bounds the last iterations.
        waiting: set[asyncio.Future[Any]] = set(users)
        stopped = asyncio.ensure_future(stop.wait()) if stop is not None else None
        try:
            while waiting and not (stop and stop.is_set()):
                remaining = deadline - self.clock.monotonic()
                if remaining <= 0:
                    break
                done, _ = await asyncio.wait(
                    waiting | ({stopped} if stopped else set()),
                    timeout=remaining,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waiting -= done
        finally:
            if stopped is not None:
                stopped.cancel()
        return bool(stop and stop.is_set() and self.clock.monotonic() < deadline)

    async def drain(self, bound: float) -> None:
        pending = set(self.tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=bound)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``work`` until it ends or ``stop`` is set (then cancel it); True when stopped."""
    if stop.is_set():
        work.close()
        return True
    doing = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({doing, stopped}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        stopped.cancel()
        doing.cancel()
        raise
    stopped.cancel()
    if doing.done():
        doing.result()  # the work's own exception, if any
        return False
    doing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await doing
    return True
