"""Running scenarios in process against an in-memory transport, on an injected clock."""

from __future__ import annotations

import asyncio
import heapq

import pytest

from alwayson.loadgen.arrivals import ArrivalSchedule, PacingLimits
from alwayson.loadgen.clients import ConnectFailed, FakeTransport, Response, SentRequest
from alwayson.loadgen.recording import SecondRow
from alwayson.loadgen.results import RunResult
from alwayson.loadgen.running import ClosedModel, LoadTest, OpenModel, run_load
from alwayson.loadgen.scenarios import Request, Session, UrlList
from alwayson.util.clocks import ManualClock

WALL = 1_800_000_000
SERVICE = 0.002  # seconds of clock time every request takes


class Target:
    """An in-memory server: answers by path, each request takes SERVICE on the clock."""

    def __init__(self, clock: ManualClock, hogs: dict[int, float] | None = None) -> None:
        self.clock = clock
        self.seen: list[str] = []
        self.hogs = hogs or {}  # request number: seconds the event loop is held up

    def __call__(self, request: SentRequest) -> Response:
        self.clock.advance(SERVICE + self.hogs.get(len(self.seen), 0.0))
        self.seen.append(f"{request.method} {request.path}")
        if request.path == "/down":
            raise ConnectFailed("127.0.0.1:9", kind="connect refused")
        status = 503 if request.path == "/fail" else 200
        return Response.with_json(status, {"id": len(self.seen)})


async def run(
    scenario: object, schedule: ArrivalSchedule, stalls: dict[int, float] | None = None
) -> tuple[RunResult, Target]:
    clock = ManualClock(start=1000.0, wall_start=WALL)
    target = Target(clock)
    calls = [0]

    async def sleep(seconds: float) -> None:
        wake = clock.monotonic() + seconds + (stalls or {}).get(calls[0], 0.0)
        calls[0] += 1
        for _ in range(50):  # let the iterations started so far run (and take their time)
            await asyncio.sleep(0)
        clock.advance(max(wake - clock.monotonic(), 0.0))

    test = LoadTest("http://target", scenario, OpenModel(schedule, PacingLimits()))  # type: ignore[arg-type]
    client = FakeTransport(target)
    result = await run_load(test, clock=clock, sleep=sleep, client=client)
    return result, target


async def test_a_url_list_takes_its_requests_in_turn_and_counts_failures_per_step() -> None:
    urls = UrlList([Request("/ok"), Request("/fail"), Request("/down")])

    result, target = await run(urls, ArrivalSchedule.constant(rate=6, duration=1))

    assert target.seen == ["GET /ok", "GET /fail", "GET /down"] * 2
    assert (result.sent, result.ok, result.failed, result.dropped) == (6, 2, 4, 0)
    steps = {n: (s.ok, s.failed, s.errors) for n, s in result.steps.items()}
    assert steps == {
        "GET /ok": (2, 0, {}),
        "GET /fail": (0, 2, {"http 503": 2}),
        "GET /down": (0, 2, {"connect refused": 2}),
    }
    assert result.latency.max_us() == 2000  # every iteration took exactly SERVICE
    assert [(r.sent, r.ok, r.failed, r.requests) for r in result.series()] == [(6, 2, 4, 6)]


async def test_an_iteration_started_late_counts_its_latency_from_the_intended_start() -> None:
    # Arrivals at 0 s and 0.5 s; the loop stalls 0.3 s before the second (its first sleep:
    # the first arrival is due at once).
    result, _ = await run(
        UrlList([Request("/ok")]), ArrivalSchedule.constant(rate=2, duration=1), stalls={0: 0.3}
    )

    assert result.latency.min_us() == 2000  # on time: the request alone
    assert result.latency.max_us() == 302_079  # late by 0.3 s + the request, to 3 digits
    assert result.steps["GET /ok"].latency.max_us() == 302_079  # first step: same origin
    assert result.dropped == 0


async def registration(session: Session) -> None:
    created = await session.post("/customers", json={"name": "Ani"}, name="create customer")
    customer = created.json()["id"]
    await session.get(f"/customers/{customer}", name="read customer")
    if customer > 4:
        await session.get("/fail", name="open account")
    if customer > 8:
        raise ValueError("journey logic broke")


async def test_a_journey_records_each_named_step_and_stops_at_the_first_failure() -> None:
    result, target = await run(registration, ArrivalSchedule.constant(rate=4, duration=1))

    # Iterations 1-2 (ids 1, 3) pass; 3 (id 5) and 4 (id 8) fail at "open account".
    assert target.seen.count("POST /customers") == 4
    assert (result.sent, result.ok, result.failed) == (4, 2, 2)
    steps = {n: (s.ok, s.failed, s.errors) for n, s in result.steps.items()}
    assert steps == {
        "create customer": (4, 0, {}),
        "read customer": (4, 0, {}),
        "open account": (0, 2, {"http 503": 2}),
    }
    assert result.journey_errors == {}
    assert result.requests == 10
    # A two-step iteration takes two requests of clock time, from its intended start.
    assert result.latency.min_us() == 4000
    # Later steps count from their own start: one request each.
    assert result.steps["read customer"].latency.max_us() == 2000


async def test_an_exception_of_the_journey_itself_fails_the_iteration_by_type() -> None:
    async def broken(session: Session) -> None:
        await session.get("/ok")
        raise KeyError("missing")

    result, _ = await run(broken, ArrivalSchedule.constant(rate=3, duration=1))

    assert (result.ok, result.failed) == (0, 3)
    assert result.journey_errors == {"KeyError": 3}
    assert result.steps["GET /ok"].ok == 3


async def test_an_expected_status_other_than_2xx_counts_as_ok() -> None:
    async def tolerant(session: Session) -> None:
        await session.get("/fail", expect={200, 503})

    result, _ = await run(tolerant, ArrivalSchedule.constant(rate=2, duration=1))

    assert (result.ok, result.failed) == (2, 0)


def test_a_url_list_needs_a_request() -> None:
    with pytest.raises(ValueError, match="at least one request"):
        UrlList([])


# -- live hooks: each completed second handed out once, and stopping early ----------------


class VirtualTime:
    """Sleeps on the manual clock: once every task has had its turn, the earliest sleeper
    wakes and the clock moves to its time (requests move it too, by SERVICE)."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self.order = 0

    async def sleep(self, seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        wake = self.clock.monotonic() + max(seconds, 0.0)
        heapq.heappush(self.sleepers, (wake, self.order, woken))
        self.order += 1
        await woken

    async def drive(self) -> None:
        while True:
            for _ in range(40):
                await asyncio.sleep(0)
            while self.sleepers:
                wake, _, woken = heapq.heappop(self.sleepers)
                if not woken.cancelled():
                    self.clock.advance(max(wake - self.clock.monotonic(), 0.0))
                    woken.set_result(None)
                    break


async def run_live(
    scenario: object,
    model: OpenModel | ClosedModel,
    stop: asyncio.Event | None = None,
    snapshot_every: float = 600.0,
    hogs: dict[int, float] | None = None,
) -> tuple[RunResult, list[tuple[float, SecondRow]], list[tuple[float, RunResult]]]:
    """Run with ``on_second`` and ``on_snapshot``; the rows and snapshots with the clock's
    wall time when each was handed out."""
    clock = ManualClock(start=1000.0, wall_start=WALL + 0.3)
    time = VirtualTime(clock)
    rows: list[tuple[float, SecondRow]] = []
    snapshots: list[tuple[float, RunResult]] = []
    test = LoadTest("http://target", scenario, model)  # type: ignore[arg-type]
    driver = asyncio.create_task(time.drive())
    try:
        result = await run_load(
            test,
            clock=clock,
            sleep=time.sleep,
            client=FakeTransport(Target(clock, hogs)),
            on_second=lambda row: rows.append((clock.wall(), row)),
            stop=stop,
            on_snapshot=lambda snap: snapshots.append((clock.wall(), snap)),
            snapshot_every=snapshot_every,
        )
    finally:
        driver.cancel()
    return result, rows, snapshots


async def test_each_completed_second_is_handed_out_once_in_order_and_adds_up() -> None:
    model = OpenModel(ArrivalSchedule.constant(rate=10, duration=5), PacingLimits())

    result, rows, _ = await run_live(UrlList([Request("/ok"), Request("/fail")]), model)

    seconds = [row.second for _, row in rows]
    assert seconds == list(range(WALL, WALL + 6))  # 0.3 s into a second: six seconds touched
    assert [row.second for row in result.series()] == seconds
    for at, row in rows[:-1]:
        assert row.second + 1 <= at < row.second + 1.1  # as soon as the second is over
        assert row.live is None and (row.histogram is not None) == bool(row.ok + row.failed)
    assert sum(r.sent for _, r in rows) == result.sent == 50
    assert sum(r.ok for _, r in rows) == result.ok == 25
    assert sum(r.failed for _, r in rows) == result.failed == 25
    assert sum(r.requests for _, r in rows) == result.requests
    assert [(r.sent, r.p99_us) for _, r in rows] == [(r.sent, r.p99_us) for r in result.series()]
    assert result.interrupted is False


async def test_a_second_is_handed_out_only_once_every_arrival_due_in_it_was_handled() -> None:
    # The 6th request holds the event loop for 1.6 s: the arrivals due meanwhile are
    # started late or dropped afterwards, and their seconds wait for that.
    model = OpenModel(ArrivalSchedule.constant(rate=10, duration=5), PacingLimits())

    result, rows, _ = await run_live(UrlList([Request("/ok")]), model, hogs={5: 1.6})

    assert result.dropped > 0
    for _, row in rows:
        final = result.rows[row.second]
        assert (row.sent, row.dropped, row.ok) == (final.sent, final.dropped, final.ok)
    assert sum(r.sent + r.dropped for _, r in rows) == 50


async def test_stop_ends_the_arrivals_drains_and_marks_the_result_interrupted() -> None:
    stop = asyncio.Event()
    begun = [0]

    async def stop_at_25(session: Session) -> None:
        begun[0] += 1
        if begun[0] == 25:
            stop.set()
        await session.get("/ok")

    model = OpenModel(ArrivalSchedule.constant(rate=10, duration=10), PacingLimits())
    result, rows, _ = await run_live(stop_at_25, model, stop=stop)

    assert result.interrupted is True
    assert (result.sent, result.ok, result.failed, result.dropped) == (25, 25, 0, 0)
    assert result.duration < 3.0
    assert sum(r.sent for _, r in rows) == 25  # the last seconds are handed out too
    assert RunResult.from_json(result.to_json()).interrupted is True


async def test_stop_ends_a_closed_models_users_after_their_iteration() -> None:
    stop = asyncio.Event()
    begun = [0]

    async def stop_at_10(session: Session) -> None:
        begun[0] += 1
        if begun[0] == 10:
            stop.set()
        await session.get("/ok")

    result, _, _ = await run_live(stop_at_10, ClosedModel(users=2, duration=60), stop=stop)

    assert result.interrupted is True
    assert 10 <= result.sent <= 11 and result.ok == result.sent
    assert result.duration < 1.0


async def test_a_stop_after_the_last_arrival_is_not_an_interruption() -> None:
    stop = asyncio.Event()
    begun = [0]

    async def stop_at_last(session: Session) -> None:
        begun[0] += 1
        if begun[0] == 5:
            stop.set()
        await session.get("/ok")

    model = OpenModel(ArrivalSchedule.constant(rate=5, duration=1), PacingLimits())
    result, _, _ = await run_live(stop_at_last, model, stop=stop)

    assert (result.sent, result.ok, result.interrupted) == (5, 5, False)


async def test_snapshots_come_every_period_with_the_figures_so_far_as_a_copy() -> None:
    model = OpenModel(ArrivalSchedule.constant(rate=10, duration=7), PacingLimits())

    result, _, snapshots = await run_live(UrlList([Request("/ok")]), model, snapshot_every=2)

    assert len(snapshots) == 3  # at 2, 4 and 6 s (the end is the result itself)
    sent = [snap.sent for _, snap in snapshots]
    assert sent == sorted(sent) and 20 <= sent[0] <= 30 and sent[-1] < result.sent == 70
    first = snapshots[0][1]
    assert first.latency.count == first.ok + first.failed  # unchanged by the rest of the run
    assert sum(r.sent for r in first.rows.values()) == first.sent
    assert result.latency.count == 70
