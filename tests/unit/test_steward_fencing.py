"""The fencing side of a site agent, acted out on fakes: no process, a manual clock.

An in-memory lease keeper applies the real lease rules (``alwayson.data.leases``) on the
same manual clock; it can be unreachable or slow. A fake postmaster records how it was
stopped. These tests drive the steward's own renewal and its cycle (observe → decide →
act) and assert what a primary does when the store cannot be reached or refuses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from alwayson.data import leases
from alwayson.data.client import KeeperClient
from alwayson.data.deciding import Action, Role, decide
from alwayson.data.engines import Engine, Postmaster
from alwayson.data.layout import DatabaseConfig
from alwayson.data.leases import Lease, Tenure
from alwayson.data.stewarding import Steward
from alwayson.util.clocks import ManualClock
from alwayson.util.errors import TemporaryError
from alwayson.util.sitelinks import Partitions

TTL, MARGIN = 6.0, 2.0
HERE, THERE = "jakarta", "surabaya"


class FakeKeeper:
    """The keeper's lease rules over one in-memory lease, on the test's clock."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.current: Lease | None = None
        self.reachable = True
        self.latency = 0.0
        self.calls: list[tuple[str, float]] = []
        """(op, deadline) of every lease call."""
        self.events: list[tuple[str, str]] = []
        self.reports: list[dict[str, Any]] = []

    async def view(self, db: str, sites: list[str], timeout: float = 1.5) -> dict[str, Any]:
        self._check()
        return {
            "now": self.clock.wall(),
            "lease": self.current.to_json() if self.current else None,
            "sites": {},
            "request": None,
        }

    async def lease(
        self,
        db: str,
        op: str,
        site: str,
        epoch: int,
        ttl: float,
        timeout: float,
        to: str | None = None,
        sync: str | None = None,
        synchronous: bool = False,
        why: str = "",
        fault_at: float | None = None,
    ) -> Lease:
        self.calls.append((op, timeout))
        self._check()
        await self.clock.sleep(self.latency)
        now = self.clock.wall()
        if op == "renew":
            self.current = leases.renew(self.current, site, epoch, ttl, now, synchronous, sync)
        elif op == "acquire":
            self.current = leases.acquire(self.current, site, ttl, now, synchronous)
        elif op == "handover":
            self.current = leases.hand_over(self.current, site, epoch, to or "", ttl, now, fault_at)
        elif op == "release":
            self.current = leases.release(self.current, site, epoch, now, why, fault_at)
        else:
            raise AssertionError(f"unexpected lease op {op}")
        return self.current

    async def report(self, db: str, site: str, status: dict[str, Any]) -> None:
        self._check()
        self.reports.append(status)

    async def record(self, db: str, kind: str, ident: str, body: dict[str, Any]) -> None:
        self._check()

    async def finish(self, db: str, ident: str) -> None:
        self._check()

    async def event(self, kind: str, subject: str, message: str, data: dict[str, Any]) -> None:
        self._check()
        self.events.append((kind, message))

    def _check(self) -> None:
        if not self.reachable:
            raise TemporaryError("lease keeper: connection refused")


class FakePostmaster:
    def __init__(self) -> None:
        self.running = True
        self.stops: list[str] = []
        self.pid = 4242

    def alive(self) -> bool:
        return self.running

    async def stop(self, mode: str, timeout: float = 30.0) -> None:
        self.stops.append(mode)
        self.running = False


class FakeEngine:
    """Only what fencing touches: the end-of-WAL search finds no data directory."""

    async def controldata(self, data: Path) -> dict[str, str]:
        raise OSError(f"no data directory {data}")


def config(tmp_path: Path) -> DatabaseConfig:
    return DatabaseConfig(
        name="bank",
        index=0,
        site=HERE,
        primary_site=HERE,
        sites=[HERE, THERE],
        replication="asynchronous",
        on_standby_loss="continue",
        standby_timeout=5.0,
        ttl=TTL,
        margin=MARGIN,
        switchover_max_lag=1 << 20,
        bin_dir=None,
        settings={},
        listen="127.1.0.10:5432",
        endpoint="127.1.0.11:5432",
        peers={THERE: "127.1.0.12:5432"},
        data_dir=str(tmp_path / "bank" / "pgdata"),
        repo_dir=str(tmp_path / "bank" / "repo"),
        peer_repos={},
        backup_schedule=None,
        retention_count=3,
        retention_age=86400.0,
        verify_backups=False,
        keep_free=0,
        superuser_password="secret",
        app_password="secret",
    )


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
        cast(KeeperClient, keeper),
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
        "fenced (the PostgreSQL process exited); `alwayson db failback` rejoins it as a standby"
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
