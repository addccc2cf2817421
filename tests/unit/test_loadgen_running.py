"""Running scenarios in process against an in-memory transport, on an injected clock."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from alwayson.loadgen.arrivals import ArrivalSchedule, PacingLimits
from alwayson.loadgen.results import RunResult
from alwayson.loadgen.running import LoadTest, OpenModel, run_load
from alwayson.loadgen.scenarios import Request, Session, UrlList
from alwayson.util.clocks import ManualClock

WALL = 1_800_000_000
SERVICE = 0.002  # seconds of clock time every request takes


class Target:
    """An in-memory server: answers by path, each request takes SERVICE on the clock."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.clock.advance(SERVICE)
        self.seen.append(f"{request.method} {request.url.path}")
        if request.url.path == "/down":
            raise httpx.ConnectError("refused", request=request)
        status = 503 if request.url.path == "/fail" else 200
        return httpx.Response(status, json={"id": len(self.seen)})


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
    async with httpx.AsyncClient(
        base_url="http://target", transport=httpx.MockTransport(target)
    ) as client:
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
        "GET /down": (0, 2, {"ConnectError": 2}),
    }
    assert result.latency.max_us() == 2000  # every iteration took exactly SERVICE
    assert [(r.sent, r.ok, r.failed, r.requests) for r in result.series()] == [(6, 2, 4, 6)]


async def test_an_iteration_started_late_counts_its_latency_from_the_intended_start() -> None:
    # Arrivals at 0 s and 0.5 s; the loop stalls 0.3 s before the second.
    result, _ = await run(
        UrlList([Request("/ok")]), ArrivalSchedule.constant(rate=2, duration=1), stalls={1: 0.3}
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
