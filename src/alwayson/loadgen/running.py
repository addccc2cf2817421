"""Running a load test in this process: the open and closed models on asyncio + httpx.

Open model (``OpenModel``): iterations arrive on the schedule of ``arrivals`` whatever
the server does; each is started at its intended time or counted dropped (see
``arrivals.pace``). Closed model (``ClosedModel``): ``users`` virtual users each loop
``iteration, think`` until the duration ends; a slow server slows them down, so its
latency counts from each iteration's actual start (closed-model tools all share this
coordinated omission; use the open model to judge latency).

One ``httpx.AsyncClient`` serves the run: keep-alive, a pool as large as the concurrency
(``max_in_flight`` or ``users`` unless ``connections`` says otherwise). When the pool is
smaller, requests wait in it and that wait is part of their latency.

At the end the run waits up to ``drain`` seconds for iterations in flight, then cancels
the rest and counts them failed (``unfinished``), so ``sent == ok + failed`` always.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

import httpx

from alwayson.loadgen.arrivals import Admission, ArrivalSchedule, PacingLimits, pace
from alwayson.loadgen.recording import Recorder
from alwayson.loadgen.results import RunResult
from alwayson.loadgen.scenarios import Scenario, Session, StepFailed
from alwayson.util.clocks import Clock, SystemClock

Sleep = Callable[[float], Awaitable[None]]
UNFINISHED = "unfinished"


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


def make_client(test: LoadTest) -> httpx.AsyncClient:
    pool = test.pool_size()
    return httpx.AsyncClient(
        base_url=test.base_url,
        headers=dict(test.headers),
        timeout=test.timeout,
        limits=httpx.Limits(
            max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=30.0
        ),
    )


async def run_load(
    test: LoadTest,
    *,
    clock: Clock | None = None,
    sleep: Sleep = asyncio.sleep,
    client: httpx.AsyncClient | None = None,
    shard: int = 0,
    shards: int = 1,
    start_at: float | None = None,
) -> RunResult:
    """Run ``test`` (already this process's share when sharded) and return its results.

    ``shard``/``shards`` pick this process's arrivals of the open model's schedule;
    ``start_at`` (the clock's monotonic time) lets several processes start together.
    """
    clock = clock or SystemClock()
    owned = client is None
    http = client or make_client(test)
    try:
        if start_at is not None:
            await sleep(max(start_at - clock.monotonic(), 0.0))
        recorder = Recorder(clock)
        runner = _Runner(test, http, recorder, clock, sleep)
        if isinstance(test.model, OpenModel):
            await runner.open(test.model, shard, shards)
        else:
            await runner.closed(test.model)
        await runner.drain(test.timeout if test.drain is None else test.drain)
        return RunResult.from_recorder(recorder, clock.monotonic())
    finally:
        if owned:
            await http.aclose()


def run_load_sync(
    test: LoadTest, *, shard: int = 0, shards: int = 1, start_at: float | None = None
) -> RunResult:
    """``run_load`` on a fresh event loop (uvloop when installed)."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(run_load(test, shard=shard, shards=shards, start_at=start_at))


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
        client: httpx.AsyncClient,
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

    async def open(self, model: OpenModel, shard: int, shards: int) -> None:
        await pace(
            model.arrivals.offsets(shard, shards),
            self.recorder.origin_monotonic,
            model.limits,
            self.clock,
            self.sleep,
            lambda: len(self.tasks),
            self.launch,
            self.drop,
        )

    async def closed(self, model: ClosedModel) -> None:
        deadline = self.recorder.origin_monotonic + model.duration

        async def user() -> None:
            while self.clock.monotonic() < deadline:
                intended = self.clock.monotonic()
                self.recorder.started(intended)
                await self.iteration(intended)
                if model.think:
                    await self.sleep(min(model.think, max(deadline - self.clock.monotonic(), 0)))

        users = [asyncio.create_task(user()) for _ in range(model.users)]
        self.tasks.update(users)
        for task in users:
            task.add_done_callback(self.tasks.discard)
        # The users end themselves at the deadline; drain() bounds the last iterations.
        await asyncio.wait(users, timeout=max(deadline - self.clock.monotonic(), 0))

    async def drain(self, bound: float) -> None:
        pending = set(self.tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=bound)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
