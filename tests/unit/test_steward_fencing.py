"""The fencing side of a site agent, acted out on fakes: no process, a manual clock.

An in-memory lease keeper applies the real lease rules (``alwayson.data.leases``) on the
same manual clock; it can be unreachable or slow. A fake postmaster records how it was
stopped. These tests drive the steward's own renewal and its cycle (observe → decide →
act) and assert what a primary does when the store cannot be reached or refuses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
from tests.unit.stewardfakes import (
    HERE,
    MARGIN,
    THERE,
    TTL,
    FakeEngine,
    FakeKeeper,
    FakePostmaster,
    config,
)

from alwayson.data import leases
from alwayson.data.board import Board
from alwayson.data.deciding import Action, Role, decide, report_due
from alwayson.data.engines import Engine, Postmaster
from alwayson.data.leases import Tenure
from alwayson.data.stewarding import CYCLE, Steward
from alwayson.util.clocks import ManualClock
from alwayson.util.sitelinks import Partitions


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(autojump=True)


@pytest.fixture
def keeper(clock: ManualClock) -> FakeKeeper:
    return FakeKeeper(clock)


async def primary(tmp_path: Path, clock: ManualClock, keeper: FakeKeeper) -> Steward:
    """A steward running a primary that holds the lease at epoch 1 since now."""
    (tmp_path / "bank" / "pgdata").mkdir(parents=True)
    steward = Steward(
        config(tmp_path),
        cast(Board, keeper),
        cast(Engine, FakeEngine()),
        Partitions(tmp_path / "partitions.json"),
        tmp_path,
        clock,
    )
    sent = clock.monotonic()
    lease = await keeper.lease("bank", "acquire", HERE, 0, TTL, 2.0)
    steward.hold(lease, sent)
    steward.postmaster = cast(Postmaster, FakePostmaster())
    steward.role = Role.PRIMARY
    steward.writable = True
    return steward


async def test_a_renewal_waits_no_longer_than_the_lease_it_protects(
    tmp_path: Path, clock: ManualClock, keeper: FakeKeeper
) -> None:
    steward = await primary(tmp_path, clock, keeper)
    tenure = steward.tenure
    assert tenure is not None
    clock.advance(TTL - MARGIN - 1.0)  # one second left of the agent's own view

    assert await steward.renew_now()

    op, deadline = keeper.calls[-1]
    assert op == "renew" and deadline == pytest.approx(0.95)
    assert tenure.renewed_at == clock.monotonic()


async def test_a_renewal_is_dated_when_it_was_sent_not_when_it_was_answered(
    tmp_path: Path, clock: ManualClock, keeper: FakeKeeper
) -> None:
    steward = await primary(tmp_path, clock, keeper)
    clock.advance(2.0)
    sent = clock.monotonic()
    keeper.latency = 0.8

    assert await steward.renew_now()

    assert clock.monotonic() == pytest.approx(sent + 0.8)
    assert steward.tenure is not None and steward.tenure.renewed_at == sent


async def test_an_unreachable_keeper_leaves_the_lease_to_run_out(
    tmp_path: Path, clock: ManualClock, keeper: FakeKeeper
) -> None:
    steward = await primary(tmp_path, clock, keeper)
    keeper.reachable = False
    clock.advance(2.0)

    assert not await steward.renew_now()

    assert steward.role is Role.PRIMARY  # the watchdog fences at fence_at, not before
    assert steward.last_error == "lease keeper: connection refused"
    assert steward.endpoint_target() is not None
    clock.advance(TTL - MARGIN - 2.0)
    assert steward.endpoint_target() is None  # clients are held from the fence time on


async def test_no_renewal_is_sent_once_the_lease_view_ran_out(
    tmp_path: Path, clock: ManualClock, keeper: FakeKeeper
) -> None:
    steward = await primary(tmp_path, clock, keeper)
    calls = len(keeper.calls)
    clock.advance(TTL - MARGIN)

    assert not await steward.renew_now()

    assert len(keeper.calls) == calls


async def test_a_refused_renewal_fences_at_once_and_gives_the_lease_up(
    tmp_path: Path, clock: ManualClock, keeper: FakeKeeper
) -> None:
    steward = await primary(tmp_path, clock, keeper)
    pm = cast(FakePostmaster, steward.postmaster)
    keeper.current = leases.revoke(keeper.current, THERE, clock.wall())

    assert not await steward.renew_now()

    assert steward.role is Role.FENCED
    assert steward.fence_reason == f"renewal refused: lease revoked for a failover to {THERE}"
    assert pm.stops == ["immediate"]
    assert not steward.writable and steward.tenure is None
    assert keeper.current is not None and keeper.current.holder is None  # released
    assert keeper.events[-1] == (
        "db-fenced",
        f"{HERE} stopped its primary: renewal refused: lease revoked for a failover to {THERE}",
    )
    await steward.settle(wait=1.0)


async def test_a_cycle_fences_a_primary_whose_lease_was_revoked(
    tmp_path: Path, clock: ManualClock, keeper: FakeKeeper
) -> None:
    steward = await primary(tmp_path, clock, keeper)
    pm = cast(FakePostmaster, steward.postmaster)
    keeper.current = leases.revoke(keeper.current, THERE, clock.wall())

    verdict = await steward.cycle()

    assert verdict == f"fenced: the operator revoked the lease for a failover to {THERE}"
    assert steward.role is Role.FENCED
    assert pm.stops == ["immediate"]
    assert keeper.reports[-1]["role"] == "fenced"
    await steward.settle(wait=1.0)


async def test_a_cycle_records_a_dead_primary_and_releases_its_lease(
    tmp_path: Path, clock: ManualClock, keeper: FakeKeeper
) -> None:
    steward = await primary(tmp_path, clock, keeper)
    cast(FakePostmaster, steward.postmaster).running = False

    verdict = await steward.cycle()

    assert verdict.startswith("primary exited (seen by the cycle ")
    assert verdict.endswith(", lease released for the standby")
    assert steward.role is Role.FENCED
    assert steward.fence_reason == "the PostgreSQL process exited"
    assert keeper.current is not None and keeper.current.holder is None
    assert keeper.current.released_why.startswith("primary process exited at ")
    assert steward.retake_after == clock.monotonic() + 2 * TTL
    await steward.settle(wait=1.0)


async def test_a_fenced_primary_takes_its_lease_back_only_after_twice_the_ttl(
    tmp_path: Path, clock: ManualClock, keeper: FakeKeeper
) -> None:
    steward = await primary(tmp_path, clock, keeper)
    cast(FakePostmaster, steward.postmaster).running = False
    await steward.cycle()
    await steward.settle(wait=1.0)
    (tmp_path / "bank" / "pgdata" / "PG_VERSION").write_text("16")

    assert await steward.cycle() == (
        "fenced (the PostgreSQL process exited); it rejoins as a standby once another site "
        "holds a live lease and can be reached"
    )
    clock.advance(2 * TTL)  # the view the last cycle read: the lease it released
    decision = decide(steward.observe())
    assert decision.action is Action.RETAKE_LEASE
    assert decision.verdict == "nobody took over: taking the lease back"


async def test_the_watchdog_rule_is_the_tenure_the_steward_holds(
    tmp_path: Path, clock: ManualClock, keeper: FakeKeeper
) -> None:
    steward = await primary(tmp_path, clock, keeper)
    tenure = steward.tenure
    assert isinstance(tenure, Tenure)
    assert tenure.fence_at() == clock.monotonic() + TTL - MARGIN
    assert tenure.epoch == 1 and steward.saved_epoch() == 1


def test_a_report_is_due_when_it_says_something_new_or_has_aged() -> None:
    last = {"role": "primary", "lsn": "0/3000060", "xact_total": 10, "promise_left": None}
    # Only the clockwork moved: not due until the last report is REPORT_EVERY old.
    moved = {**last, "xact_total": 14}
    assert not report_due(moved, last, now=10.5, last_at=10.0, every=1.0)
    assert report_due(moved, last, now=11.0, last_at=10.0, every=1.0)
    # Anything else new goes at once: a WAL position, a role, a field that appeared.
    assert report_due({**last, "lsn": "0/3000100"}, last, now=10.1, last_at=10.0, every=1.0)
    assert report_due({**last, "role": "fenced"}, last, now=10.1, last_at=10.0, every=1.0)
    assert report_due({**last, "alert": "RPO"}, last, now=10.1, last_at=10.0, every=1.0)
    assert report_due(last, None, now=0.0, last_at=0.0, every=1.0)  # the first one


async def test_an_idle_primary_reports_once_a_second_and_a_change_at_once(
    tmp_path: Path, clock: ManualClock, keeper: FakeKeeper
) -> None:
    steward = await primary(tmp_path, clock, keeper)
    steward.facts = {"lsn": "0/3000060", "xact_total": 1}
    for turn in range(8):  # two seconds of cycles with nothing new but the clockwork
        steward.facts["xact_total"] = turn
        await steward._report()
        clock.advance(CYCLE)
    assert len(keeper.reports) == 2
    steward.facts["lsn"] = "0/3000100"  # a write: its position goes out at once
    await steward._report()
    assert len(keeper.reports) == 3 and keeper.reports[-1]["lsn"] == "0/3000100"
