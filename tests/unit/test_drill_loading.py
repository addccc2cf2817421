"""The drill's load port (``drills.loading``) and ``alwayson.loadgen`` behind it
(``entrypoints.drill_load``): what a drill is promised, on a manual clock against an
in-memory target."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from alwayson.drills.loading import (
    BankRegistrations,
    GetPath,
    JourneyChoice,
    Load,
    LoadGenerator,
    UserJourney,
    Writes,
    journey_for,
)
from alwayson.drills.measuring import Outcome
from alwayson.entrypoints.drill_load import LoadgenForDrills
from alwayson.loadgen.clients import FakeTransport, Response, SentRequest
from alwayson.loadgen.journeys import REGISTER_PATH
from alwayson.util.clocks import ManualClock
from alwayson.util.errors import AlwaysonError

WALL = 1_800_000_000.0
Handler = Callable[[SentRequest], Response | Awaitable[Response]]


async def run(
    journey: JourneyChoice,
    handler: Handler,
    *,
    rate: float = 10,
    duration: float = 1,
    drain: float = 10.0,
    stop: asyncio.Event | None = None,
    clock: ManualClock | None = None,
) -> list[Outcome]:
    clock = clock or ManualClock(start=1000.0, wall_start=WALL, autojump=True)
    generator: LoadGenerator = LoadgenForDrills(
        clock=clock, sleep=clock.sleep, client=FakeTransport(handler)
    )
    outcomes: list[Outcome] = []
    load = Load("http://front-door", journey, rate=rate, duration=duration, drain=drain)
    await generator.run(load, outcomes.append, stop or asyncio.Event())
    return outcomes


def test_the_drill_reads_its_journey_by_its_three_forms() -> None:
    writes = Writes()

    assert journey_for("bank-registration", writes) == BankRegistrations(writes)
    assert journey_for("/healthz", writes) == GetPath("/healthz")
    assert journey_for("journeys.py:browse", writes) == UserJourney("journeys.py:browse")


async def test_bank_registrations_note_every_id_sent_and_every_customer_acknowledged() -> None:
    posted: list[str] = []

    def bank(request: SentRequest) -> Response:
        assert (request.method, request.path) == ("POST", REGISTER_PATH)
        nik = request.json()["id_number"]
        posted.append(nik)
        if len(posted) % 3 == 0:  # every third answer is lost in a fault
            return Response.with_json(503, {"detail": "unavailable"})
        body = {"customer_id": f"c{len(posted)}", "account_id": "a", "id_number": nik}
        return Response.with_json(201, body)

    writes = Writes()
    outcomes = await run(BankRegistrations(writes), bank)

    assert len(outcomes) == len(posted) == 10
    assert writes.sent == set(posted)
    assert writes.acknowledged == {
        f"c{n}": nik for n, nik in enumerate(posted, start=1) if n % 3 != 0
    }
    assert [o.ok for o in outcomes] == [n % 3 != 0 for n in range(1, 11)]
    assert {o.error for o in outcomes if not o.ok} == {"http 503"}
    assert all(o.error == "" for o in outcomes if o.ok)


async def test_outcomes_start_when_the_schedule_meant_them_to_even_from_a_late_generator() -> None:
    clock = ManualClock(start=1000.0, wall_start=WALL, autojump=True)
    seen: list[float] = []

    def slow_first(request: SentRequest) -> Response:
        seen.append(clock.wall())
        if len(seen) == 1:
            clock.advance(0.35)  # holds the event loop: the next arrivals start late
        return Response.with_json(200, {})

    outcomes = await run(GetPath("/healthz"), slow_first, clock=clock)

    starts = sorted(o.start for o in outcomes)
    assert starts == pytest.approx([WALL + n / 10 for n in range(10)])
    assert seen[1] == pytest.approx(WALL + 0.35)  # sent late, yet counted from 0.1 s
    late = next(o for o in outcomes if o.start == pytest.approx(WALL + 0.1))
    assert late.done >= seen[1]  # its latency includes the 0.25 s it waited to be sent
    assert all(o.ok for o in outcomes)


async def test_a_path_expects_200_and_a_user_journey_fails_by_its_exception(
    tmp_path: Path,
) -> None:
    no_content = await run(GetPath("/healthz"), lambda _: Response.with_json(204, {}))

    assert [(o.ok, o.error) for o in no_content] == [(False, "http 204")] * 10

    user = tmp_path / "journeys.py"
    user.write_text(
        "async def picky(session):\n"
        "    await session.get('/healthz')\n"
        "    raise LookupError('not what I wanted')\n"
    )
    picky = await run(UserJourney(f"{user}:picky"), lambda _: Response.with_json(200, {}))

    assert [(o.ok, o.error) for o in picky] == [(False, "LookupError")] * 10


async def test_stop_ends_the_load_and_journeys_cut_off_by_the_drain_fail_once() -> None:
    stop = asyncio.Event()
    never = asyncio.Event()
    sent: list[str] = []

    async def hangs_from_the_fourth(request: SentRequest) -> Response:
        sent.append(request.path)
        if len(sent) == 6:
            stop.set()
        if len(sent) > 3:
            await never.wait()
        return Response.with_json(200, {})

    outcomes = await run(
        GetPath("/healthz"), hangs_from_the_fourth, duration=3600, drain=0.0, stop=stop
    )

    assert len(sent) == 6  # nothing more was sent once stopped
    assert [(o.ok, o.error) for o in sorted(outcomes, key=lambda o: o.start)] == [
        (True, ""),
        (True, ""),
        (True, ""),
        *[(False, "")] * 3,  # still in flight when the drain ended: cancelled, failed
    ]


async def test_a_journey_that_does_not_load_is_an_alwayson_error(tmp_path: Path) -> None:
    with pytest.raises(AlwaysonError, match="no such file"):
        await run(UserJourney(f"{tmp_path}/missing.py:journey"), lambda _: Response(200))
