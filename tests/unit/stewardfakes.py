"""In-memory stand-ins for a steward's keeper, postmaster and engine, and a database
configuration for one site: shared by the steward's unit and lifecycle tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alwayson.data import leases
from alwayson.data.layout import DatabaseConfig
from alwayson.data.leases import Lease
from alwayson.util.clocks import Clock
from alwayson.util.errors import TemporaryError

TTL, MARGIN = 6.0, 2.0
HERE, THERE = "jakarta", "surabaya"


class FakeKeeper:
    """The keeper's lease rules over one in-memory lease, on the test's clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.current: Lease | None = None
        self.reachable = True
        self.latency = 0.0
        self.calls: list[tuple[str, float]] = []
        """(op, deadline) of every lease call."""
        self.events: list[tuple[str, str]] = []
        self.reports: list[dict[str, Any]] = []
        self.sites: dict[str, dict[str, Any]] = {}
        """Each site's last report, as the keeper's view shows them."""

    async def view(self, db: str, sites: list[str], timeout: float = 1.5) -> dict[str, Any]:
        self._check()
        return {
            "now": self.clock.wall(),
            "lease": self.current.to_json() if self.current else None,
            "sites": dict(self.sites),
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
        self.sites[site] = status

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
