"""What a steward holds and the acts every role shares: the lease, PostgreSQL, events.

:class:`Tender` is the state of one database in one site (the lease as this agent holds
it, its own :class:`~alwayson.data.leases.Tenure`, the postmaster, the alert) plus the
small acts the role modules (``starting``, ``primaries``, ``promoting``, ``switching``)
are built from. Deciding what to do is :mod:`alwayson.data.deciding`'s job; running the
loops is :mod:`alwayson.data.stewarding`'s.

Every call to etcd has a deadline shorter than the lease it protects
(:func:`~alwayson.data.deciding.renewal_budget`); a refused renewal fences at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from alwayson.data.board import Board
from alwayson.data.deciding import Role, renewal_budget
from alwayson.data.engines import (
    Engine,
    EngineError,
    KeptConnection,
    Postmaster,
    conninfo,
    query,
)
from alwayson.data.layout import SUPERUSER, DatabaseConfig
from alwayson.data.leases import Lease, LeaseRefused, Tenure
from alwayson.data.settings import postgresql_conf
from alwayson.data.wal import end_of_wal
from alwayson.util.clocks import Clock
from alwayson.util.errors import TemporaryError
from alwayson.util.replication import slot_name
from alwayson.util.sitelinks import Partitions

log = logging.getLogger("alwayson.agent")

RELEASE_DEADLINE = 2.0
READY_POLL = 0.05


class Tender:
    def __init__(
        self,
        cfg: DatabaseConfig,
        board: Board,
        engine: Engine,
        partitions: Partitions,
        log_dir: Path,
        clock: Clock,
    ) -> None:
        self.cfg = cfg
        self.board = board
        self.engine = engine
        self.partitions = partitions
        self.log_dir = log_dir
        self.clock = clock
        self.data = Path(cfg.data_dir)
        self.role = Role.STARTING
        self.postmaster: Postmaster | None = None
        self.tenure: Tenure | None = None
        self.lease: Lease | None = None
        self.view: dict[str, Any] = {}
        self.board_offset = 0.0
        self.holding = False
        self.writable = False
        self.sync_names: list[str] = []
        self.sync_standby: str | None = None
        self.standby_missing_since: float | None = None
        self.alert: str | None = None
        self.alert_kind: str | None = None
        """``rpo`` (commits go on without the standby) or ``blocked`` (they wait for it)."""
        self.fence_reason = ""
        self.watchdog_fired = False  # set by the watchdog thread, cleared with a new tenure
        self.retake_after = 0.0
        self.last_verdict = "starting"
        self.last_error = ""
        self.replication: list[dict[str, Any]] = []
        self.facts: dict[str, Any] = {}
        self.detected_at: float | None = None
        self.exit_seen_at: float | None = None
        """Wall time the watchdog thread first saw the primary's postmaster gone."""
        self.final_wal: dict[str, Any] | None = None
        """After this site's primary exited: where its WAL ends on disk, for the record."""
        self.pending_record: tuple[str, dict[str, Any], float] | None = None
        """The last failover record, until the old primary's end of WAL completes it."""
        self._wal_end_job: asyncio.Task[None] | None = None
        self.observer = KeptConnection(self.admin_dsn)
        """The connection every cycle's reading of PostgreSQL's positions goes through."""

    @property
    def synchronous(self) -> bool:
        return self.cfg.replication == "synchronous"

    @property
    def name(self) -> str:
        return self.cfg.name

    def admin_dsn(self, address: str | None = None, dbname: str = "postgres") -> str:
        return conninfo(address or self.cfg.listen, SUPERUSER, self.cfg.superuser_password, dbname)

    def board_now(self) -> float:
        return self.clock.wall() + self.board_offset

    async def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        with contextlib.suppress(TemporaryError):
            await self.board.event(kind, self.name, message, data or {})

    # -- the epoch this site last held (survives an agent restart) -----------------------

    def saved_epoch(self) -> int:
        try:
            return int(json.loads((self.data.parent / "agent.json").read_text())["epoch"])
        except (OSError, ValueError, KeyError):
            return 0

    def save_epoch(self, epoch: int) -> None:
        (self.data.parent / "agent.json").write_text(json.dumps({"epoch": epoch}))

    # -- the lease -----------------------------------------------------------------------

    def hold(self, lease: Lease, sent: float) -> None:
        """Start a tenure dated ``sent``: when the request left, never from the answer."""
        self.lease = lease
        self.tenure = Tenure(lease.epoch, self.cfg.ttl, self.cfg.margin, sent)
        self.watchdog_fired = False
        self.exit_seen_at = None
        self.final_wal = None
        self.save_epoch(lease.epoch)

    async def acquire(self, deadline: float) -> tuple[Lease, float]:
        """Ask etcd for the lease (epoch + 1); returns it and when the ask was sent."""
        sent = self.clock.monotonic()  # before asking: our view must end before etcd's
        lease = await self.board.lease(
            self.name,
            "acquire",
            self.cfg.site,
            0,
            self.cfg.ttl,
            deadline,
            synchronous=self.synchronous,
        )
        return lease, sent

    async def renew_now(self) -> bool:
        tenure = self.tenure
        if tenure is None:
            return False
        sent = self.clock.monotonic()
        budget = renewal_budget(tenure, sent)
        if budget is None:
            return False
        try:
            lease = await self.board.lease(
                self.name,
                "renew",
                self.cfg.site,
                tenure.epoch,
                self.cfg.ttl,
                budget,
                sync=self.sync_standby,
                synchronous=self.synchronous,
            )
        except LeaseRefused as exc:
            self.lease = exc.lease
            await self.fence(f"renewal refused: {exc.reason}")
            return False
        except TemporaryError as exc:
            self.last_error = str(exc)
            return False
        if self.tenure is tenure and sent > tenure.renewed_at:
            tenure.renewed_at = sent
        self.lease = lease
        return True

    async def fence(self, why: str) -> None:
        """Stop the primary now: nothing commits after this returns."""
        self.writable = False
        if self.role is not Role.PRIMARY:
            return
        self.role = Role.FENCED
        self.fence_reason = why
        tenure, self.tenure = self.tenure, None
        stopped_at = self.clock.wall()
        pm = self.postmaster
        if pm is not None:
            await pm.stop("immediate", timeout=5)  # returns once no backend is left
        await self.observer.close()
        log.warning("%s: fenced the primary: %s", self.name, why)
        if tenure is not None:
            # Known stopped: give the lease up so the standby need not wait for the ttl (a
            # revoked lease stays reserved for the operator's choice).
            await self.release(tenure.epoch, f"fenced: {why}", stopped_at)
        await self.event("db-fenced", f"{self.cfg.site} stopped its primary: {why}")
        if tenure is not None:
            self.find_end_of_wal(tenure.epoch)

    async def release(self, epoch: int, why: str, fault_at: float) -> bool:
        try:
            await self.board.lease(
                self.name,
                "release",
                self.cfg.site,
                epoch,
                self.cfg.ttl,
                RELEASE_DEADLINE,
                why=why,
                fault_at=fault_at,
            )
        except (LeaseRefused, TemporaryError) as exc:
            self.last_error = f"release of epoch {epoch}: {exc}"
            return False
        return True

    # -- the end of a stopped primary's WAL ----------------------------------------------

    def find_end_of_wal(self, epoch: int) -> None:
        """In the background, after the release: it must delay neither the standby's
        promotion nor this site's reports; anything that touches the data directory
        again waits for it first (``settle``)."""

        async def find() -> None:
            self.final_wal = await end_of_wal(self.engine, self.data, epoch, self.clock)

        self._wal_end_job = asyncio.create_task(find())

    async def settle(self, wait: float = 0.0) -> None:
        """Let the end-of-WAL search finish (up to ``wait`` seconds), else stop it."""
        job, self._wal_end_job = self._wal_end_job, None
        if job is None:
            return
        with contextlib.suppress(TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(job), wait)
        if not job.done():
            job.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await job

    # -- PostgreSQL ----------------------------------------------------------------------

    def prepare_repo(self) -> None:
        repo = Path(self.cfg.repo_dir)
        for sub in (repo, repo / "wal", repo / "base"):
            self.engine.ident.own(sub)

    def write_conf(self, sync_names: list[str], follow: str | None) -> None:
        self.engine.write_file(
            self.data / "alwayson.conf",
            postgresql_conf(self.cfg, self.cfg.listen, sync_names, follow),
        )
        self.sync_names = list(sync_names)

    async def start(self, sync_names: list[str], follow: str | None = None) -> None:
        await self.settle()
        old = self.postmaster
        if old is not None and old.alive():
            await old.stop("fast", timeout=20)
        self.write_conf(sync_names, follow)
        signal_file = self.data / "standby.signal"
        if follow is not None:
            self.engine.write_file(signal_file, "")
        else:
            signal_file.unlink(missing_ok=True)
        self.postmaster = self.engine.spawn(
            self.data, self.log_dir / f"{self.name}@{self.cfg.site}.pg.log"
        )

    async def start_standby(self, holder: str) -> None:
        await self.start([], follow=self.cfg.peers[holder])
        self.writable = False

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = self.clock.monotonic() + timeout
        while True:
            pm = self.postmaster
            if pm is None or not pm.alive():
                raise EngineError(f"{self.name}: PostgreSQL exited while starting (see its log)")
            try:
                await query(self.admin_dsn(), "SELECT 1", timeout=2)
                return
            except TemporaryError:
                if self.clock.monotonic() > deadline:
                    raise
            await self.clock.sleep(READY_POLL)

    async def ensure_slots(self) -> None:
        for site in self.cfg.standby_sites:
            await query(
                self.admin_dsn(),
                "SELECT pg_create_physical_replication_slot(%s) WHERE NOT EXISTS "
                "(SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
                (slot_name(site), slot_name(site)),
            )

    async def reload_conf(self) -> None:
        await query(self.admin_dsn(), "SELECT pg_reload_conf()")
