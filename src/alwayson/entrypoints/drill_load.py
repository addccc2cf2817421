"""``alwayson.loadgen`` as a drill's load generator (``drills.loading.LoadGenerator``).

The drill's journeys become loadgen journeys: the bank's registration (``BankRegistration``)
with its applicants and acknowledgements noted in the drill's ``Writes``, ``GET /path``
expecting 200, or the user's journey loaded by ``load_journey``. Each is wrapped so that
its outcome reaches the drill as wall-clock times from the moment the open model meant it
to start (``Session.intended``, on the generator's monotonic clock).
"""

from __future__ import annotations

import asyncio
from typing import Any, assert_never

from alwayson.drills.loading import (
    BankRegistrations,
    GetPath,
    JourneyChoice,
    Load,
    OnOutcome,
    UserJourney,
    Writes,
)
from alwayson.drills.measuring import Outcome
from alwayson.loadgen.clients import Transport
from alwayson.loadgen.journeys import Applicants, BankRegistration, load_journey
from alwayson.loadgen.running import LoadTest, OpenModel, Sleep, run_load
from alwayson.loadgen.scenarios import Journey, Session, StepFailed
from alwayson.util.clocks import Clock, SystemClock


class LoadgenForDrills:
    """Runs a drill's ``Load`` with ``alwayson.loadgen.running.run_load``.

    ``clock``, ``sleep`` and ``client`` are the generator's own (a manual clock and an
    in-memory transport in tests; the system clock and one keep-alive HTTP client in a
    drill).
    """

    def __init__(
        self,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
        client: Transport | None = None,
    ) -> None:
        self.clock = clock or SystemClock()
        self.sleep = sleep
        self.client = client

    async def run(self, load: Load, on_outcome: OnOutcome, stop: asyncio.Event) -> None:
        test = LoadTest(
            base_url=load.base_url,
            scenario=self.measured(loadgen_journey(load.journey), on_outcome),
            model=OpenModel.constant(load.rate, load.duration, max_lag=load.max_lag),
            timeout=load.timeout,
            drain=load.drain,
        )
        await run_load(test, clock=self.clock, sleep=self.sleep, client=self.client, stop=stop)

    def measured(self, journey: Journey, on_outcome: OnOutcome) -> Journey:
        """``journey``, handing each outcome to ``on_outcome`` (see the port's contract)."""
        clock = self.clock
        offset = clock.wall() - clock.monotonic()

        async def run(session: Session) -> None:
            # From the moment it was meant to start: a generator running late must not
            # hide a stall (no coordinated omission).
            start = min(clock.wall(), offset + session.intended)
            ok, error = False, ""
            try:
                await journey(session)
                ok = True
            except StepFailed as exc:
                error = exc.kind
                raise
            except Exception as exc:
                error = type(exc).__name__
                raise
            finally:  # a journey cancelled at the end of the drain counts as failed
                on_outcome(Outcome(start, clock.wall(), ok, error))

        return run


def loadgen_journey(choice: JourneyChoice) -> Journey:
    """The loadgen journey that does what the drill chose."""
    if isinstance(choice, BankRegistrations):
        writes = choice.writes

        def acknowledged(body: dict[str, Any]) -> None:
            writes.acknowledged[str(body.get("customer_id"))] = str(body.get("id_number", ""))

        return BankRegistration(applicants=_NotedApplicants(writes), on_acknowledged=acknowledged)
    if isinstance(choice, GetPath):
        path = choice.path

        async def get(session: Session) -> None:
            await session.get(path, expect=(200,))

        return get
    if isinstance(choice, UserJourney):
        return load_journey(choice.reference)
    assert_never(choice)


class _NotedApplicants(Applicants):
    """The bank's applicants, each id number noted as sent before it is (the set check
    counts a registration stored without an answer as sent, not as a loss)."""

    def __init__(self, writes: Writes) -> None:
        super().__init__()
        self.writes = writes

    def next(self) -> dict[str, str]:
        applicant = super().next()
        self.writes.sent.add(applicant["id_number"])
        return applicant
