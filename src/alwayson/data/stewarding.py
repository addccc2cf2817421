"""One database in one site, as its site agent keeps it (the Patroni-like part).

Three concurrent duties, each with its own bound:

- **renewing** (primary only): renew the lease every ttl/3 with a deadline shorter than
  what is left of it; a refusal fences at once.
- **watchdog** (a thread, so a blocked event loop cannot delay it): when the agent's own
  view of the lease runs out (``Tenure.must_fence``) the postmaster gets SIGQUIT.
- **cycle** (every ``CYCLE``): observe PostgreSQL and the keeper's view, decide, act, and
  report; promotion, switchover, failback and backups are requests the cycle carries out.

Every decision is logged as a sentence (``"promoted: lease epoch 4 acquired after
jakarta's expired"``) and kept in ``last_verdict``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import signal
import threading
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from psycopg import sql

from alwayson.data import backups
from alwayson.data.client import KeeperClient
from alwayson.data.engines import (
    Engine,
    EngineError,
    Postmaster,
    conninfo,
    query,
    wait_backends_gone,
)
from alwayson.data.layout import SUPERUSER, DatabaseConfig
from alwayson.data.leases import Lease, LeaseRefused, Tenure
from alwayson.data.links import Target
from alwayson.data.settings import HBA, INCLUDE_LINE, postgresql_conf, slot_name
from alwayson.util.errors import AlwaysonError, TemporaryError
from alwayson.util.sitelinks import Partitions

log = logging.getLogger("alwayson.agent")

CYCLE = 0.25
WATCHDOG = 0.02
CATCH_UP_BYTES = 1 << 20
SWITCHOVER_WAIT = 30.0
PENDING_RECORD = 120.0
LONG_REQUESTS = ("backup", "verify", "restore", "drop-restore")


class Role(StrEnum):
    STARTING = "starting"
    PRIMARY = "primary"
    STANDBY = "standby"
    FENCED = "fenced"
    """Was primary, stopped without the lease; its data may be ahead of the new primary."""
    SWITCHING = "switching"
    REJOINING = "rejoining"


def fault_of(before: Lease | None, detected: float) -> tuple[float, str]:
    """When the fault behind a takeover happened, as best known, and what that rests on."""
    if before is None:
        return detected, "unknown: no lease was seen before; from this site's detection"
    if before.revoked_for is not None and before.fault_at is not None:
        return before.fault_at, "the operator revoked the lease (db failover)"
    if before.fault_at is not None and before.released_at is not None:
        why = before.released_why or "released"
        return before.fault_at, f"the old primary's agent: {why}"
    if before.fault_at is not None:
        return before.fault_at, "the old primary stopped taking writes for the switchover"
    return (
        before.expires_at - before.ttl,
        "the old primary's last successful renewal (the lease then expired; the fault "
        "came after it, at most ttl/3 later)",
    )


def lease_free_at(before: Lease | None) -> float | None:
    """When the lease could be taken: released, handed over, or expired."""
    if before is None:
        return None
    if before.released_at is not None:
        return before.released_at
    if before.holder is not None and before.revoked_for is None and before.fault_at:
        return before.granted_at  # handed over
    return before.expires_at


def newest_timeline(pg_wal: Path, timeline: int, redo: str) -> tuple[int, str]:
    """The newest timeline a data directory's WAL reaches and where to start reading it:
    ``redo`` when the last checkpoint is on it, else where it branched off (the last line
    of its ``.history`` file: ``<parent>\t<switch LSN>\t<reason>``)."""
    newest, start = timeline, redo
    for history in pg_wal.glob("*.history"):
        number = int(history.name[:8], 16)
        if number <= newest:
            continue
        lines = [
            line.split()
            for line in history.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        if lines and len(lines[-1]) >= 2:
            newest, start = number, max(redo, lines[-1][1], key=lsn_int)
    return newest, start


def lsn_int(text: str | None) -> int:
    if not text:
        return 0
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


class Steward:
    def __init__(
        self,
        cfg: DatabaseConfig,
        keeper: KeeperClient,
        engine: Engine,
        partitions: Partitions,
        log_dir: Path,
    ) -> None:
        self.cfg = cfg
        self.keeper = keeper
        self.engine = engine
        self.partitions = partitions
        self.log_dir = log_dir
        self.data = Path(cfg.data_dir)
        self.role = Role.STARTING
        self.postmaster: Postmaster | None = None
        self.tenure: Tenure | None = None
        self.lease: Lease | None = None
        self.view: dict[str, Any] = {}
        self.keeper_offset = 0.0
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
        self.restores: dict[str, Postmaster] = {}
        self.long_lock = asyncio.Lock()
        """One long job (backup, verify, restore) at a time: they share the scratch address."""
        self._job: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name=f"fence-{cfg.name}", daemon=True)

    @property
    def synchronous(self) -> bool:
        return self.cfg.replication == "synchronous"

    # -- addresses ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.cfg.name

    def admin_dsn(self, address: str | None = None, dbname: str = "postgres") -> str:
        return conninfo(address or self.cfg.listen, SUPERUSER, self.cfg.superuser_password, dbname)

    def endpoint_target(self) -> Target | None:
        """Where the site's endpoint sends a new client now (None: hold it)."""
        if self.holding:
            return None
        if self.role is Role.PRIMARY:
            tenure = self.tenure
            if self.writable and tenure is not None and not tenure.must_fence(time.monotonic()):
                return Target(self.cfg.listen, self.cfg.site)
            return None
        lease = self.lease
        if lease is not None and lease.holder and lease.holder in self.cfg.peers:
            # Hold clients until the new holder says it takes writes (not while it promotes).
            report = (self.view.get("sites") or {}).get(lease.holder) or {}
            if report.get("writable") and report.get("epoch") == lease.epoch:
                return Target(self.cfg.peers[lease.holder], lease.holder)
        return None

    # -- the watchdog ------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(WATCHDOG):
            tenure, pm = self.tenure, self.postmaster
            if (
                self.role is Role.PRIMARY
                and pm is not None
                and self.exit_seen_at is None
                and not pm.alive()
            ):
                self.exit_seen_at = time.time()
            if (
                self.role is Role.PRIMARY
                and tenure is not None
                and pm is not None
                and tenure.must_fence(time.monotonic())
                and pm.alive()
            ):
                self.writable = False
                self.watchdog_fired = True
                pm.signal(signal.SIGQUIT)
                log.warning("%s: watchdog fenced the primary: lease not renewed in time", self.name)

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        self._watchdog.start()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._renewing())
                group.create_task(self._cycling())
                group.create_task(self._restart_restores())
        finally:
            self._stop.set()

    async def _restart_restores(self) -> None:
        try:
            await backups.restart_restores(self)
        except Exception as exc:  # a bad restores.json must not stop the steward
            log.exception("%s: restarting restored instances", self.name)
            self.last_error = f"restarting restored instances: {exc!r}"

    async def shutdown(self) -> None:
        self._stop.set()
        self.writable = False
        await self._settle()
        for pm in [self.postmaster, *self.restores.values()]:
            if pm is not None and pm.alive():
                await pm.stop("fast", timeout=20)

    async def _cycling(self) -> None:
        while True:
            try:
                verdict = await self.cycle()
            except AlwaysonError as exc:
                verdict = f"cycle failed: {exc}"
                self.last_error = str(exc)
            except Exception as exc:
                log.exception("%s: cycle crashed", self.name)
                verdict = f"cycle crashed: {exc!r}"
                self.last_error = repr(exc)
            if verdict != self.last_verdict:
                log.info("%s: %s", self.name, verdict)
                self.last_verdict = verdict
            await asyncio.sleep(CYCLE)

    async def _renewing(self) -> None:
        while True:
            tenure = self.tenure
            now = time.monotonic()
            if self.role is Role.PRIMARY and tenure is not None and tenure.renew_due(now):
                await self.renew_now()
            await asyncio.sleep(0.05)

    async def renew_now(self) -> bool:
        tenure = self.tenure
        if tenure is None:
            return False
        sent = time.monotonic()
        budget = min(1.5, tenure.fence_at() - sent - 0.05)
        if budget <= 0:
            return False
        try:
            lease = await self.keeper.lease(
                self.name,
                "renew",
                self.cfg.site,
                tenure.epoch,
                self.cfg.ttl,
                budget,
                sync=self.sync_standby,
                synchronous=self.cfg.replication == "synchronous",
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
        stopped_at = time.time()
        pm = self.postmaster
        if pm is not None:
            await pm.stop("immediate", timeout=5)  # returns once no backend is left
        log.warning("%s: fenced the primary: %s", self.name, why)
        if tenure is not None:
            # Known stopped: give the lease up so the standby need not wait for the ttl (a
            # revoked lease stays reserved for the operator's choice).
            await self._release(tenure.epoch, f"fenced: {why}", stopped_at)
        await self._event("db-fenced", f"{self.cfg.site} stopped its primary: {why}")
        if tenure is not None:
            self._find_end_of_wal(tenure.epoch)

    async def _release(self, epoch: int, why: str, fault_at: float) -> bool:
        try:
            await self.keeper.lease(
                self.name,
                "release",
                self.cfg.site,
                epoch,
                self.cfg.ttl,
                2.0,
                why=why,
                fault_at=fault_at,
            )
        except (LeaseRefused, TemporaryError) as exc:
            self.last_error = f"release of epoch {epoch}: {exc}"
            return False
        return True

    # -- one cycle ---------------------------------------------------------------------

    async def cycle(self) -> str:
        await self._refresh_view()
        if self.role is Role.STARTING:
            return await self._bootstrap()
        if self.role is Role.PRIMARY:
            verdict = await self._primary_cycle()
        elif self.role is Role.STANDBY:
            verdict = await self._standby_cycle()
        elif self.role is Role.FENCED:
            verdict = await self._fenced_cycle()
        else:
            verdict = f"{self.role.value}"
        await self._requests()
        await self._report()
        return verdict

    async def _refresh_view(self) -> None:
        sites = self.cfg.sites
        try:
            sent = time.time()
            view = await self.keeper.view(self.name, sites, timeout=1.0)
        except TemporaryError as exc:
            self.last_error = str(exc)
            return
        self.view = view
        self.keeper_offset = float(view["now"]) - sent
        lease = Lease.from_json(view["lease"]) if view.get("lease") else None
        if self.role is not Role.PRIMARY or lease is None or lease.holder != self.cfg.site:
            self.lease = lease

    def keeper_now(self) -> float:
        return time.time() + self.keeper_offset

    # -- bootstrap ---------------------------------------------------------------------

    def _my_epoch(self) -> int:
        try:
            return int(json.loads((self.data.parent / "agent.json").read_text())["epoch"])
        except (OSError, ValueError, KeyError):
            return 0

    def _save_epoch(self, epoch: int) -> None:
        path = self.data.parent / "agent.json"
        path.write_text(json.dumps({"epoch": epoch}))

    async def _bootstrap(self) -> str:
        if not self.view:
            return "waiting for the lease keeper"
        lease = self.lease
        if (self.data / "PG_VERSION").exists():
            if (self.data / "standby.signal").exists():
                self.role = Role.STANDBY
                return "found a standby; following the primary"
            if (
                lease is None
                or lease.holder in (None, self.cfg.site)
                or (lease.previous_holder == self.cfg.site and lease.epoch == self._my_epoch())
            ):
                return await self._become_primary_again("restarted")
            self.role = Role.FENCED
            self.fence_reason = f"{lease.holder} became primary while this site was down"
            return f"fenced: {self.fence_reason}; `alwayson db failback` rejoins it"
        if lease is None and self.cfg.site == self.cfg.primary_site:
            return await self._initialise()
        if lease is not None and lease.holder and lease.holder != self.cfg.site:
            return await self._clone_from(lease.holder)
        return "waiting for a primary to clone from"

    async def _initialise(self) -> str:
        root = self.data.parent
        root.mkdir(parents=True, exist_ok=True)
        self.engine.ident.check_reachable(root)
        await asyncio.to_thread(shutil.rmtree, self.data, True)  # other databases renew meanwhile
        await self.engine.initdb(self.data, SUPERUSER)
        self._prepare_repo()
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(INCLUDE_LINE)
        self.engine.write_file(self.data / "pg_hba.conf", HBA)
        sent = time.monotonic()  # before asking: our view must end before the keeper's
        lease = await self.keeper.lease(
            self.name, "acquire", self.cfg.site, 0, self.cfg.ttl, 2.0, synchronous=self.synchronous
        )
        self._hold(lease, sent)
        await self._start(sync_names=[])
        await self._wait_ready()
        await self._ensure_slots()
        await self._create_app_objects()
        self.role = Role.PRIMARY
        self.writable = True
        await self._event("db-initialised", f"{self.cfg.site}: new primary at epoch {lease.epoch}")
        return f"initialised a new primary (lease epoch {lease.epoch})"

    def _hold(self, lease: Lease, sent: float) -> None:
        self.lease = lease
        self.tenure = Tenure(lease.epoch, self.cfg.ttl, self.cfg.margin, sent)
        self.watchdog_fired = False
        self.exit_seen_at = None
        self.final_wal = None
        self._save_epoch(lease.epoch)

    def _prepare_repo(self) -> None:
        repo = Path(self.cfg.repo_dir)
        for sub in (repo, repo / "wal", repo / "base"):
            self.engine.ident.own(sub)

    async def _create_app_objects(self) -> None:
        name, pw = self.name, self.cfg.app_password
        rows = await query(self.admin_dsn(), "SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
        if not rows:
            await query(
                self.admin_dsn(),
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(pw)
                ),
            )
        rows = await query(
            self.admin_dsn(), "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        )
        if not rows:
            await query(
                self.admin_dsn(),
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(name)
                ),
            )

    async def _ensure_slots(self) -> None:
        for site in self.cfg.standby_sites:
            await query(
                self.admin_dsn(),
                "SELECT pg_create_physical_replication_slot(%s) WHERE NOT EXISTS "
                "(SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
                (slot_name(site), slot_name(site)),
            )

    async def _clone_from(self, holder: str) -> str:
        if not self.partitions.connected(self.cfg.site, holder):
            return f"cannot reach {holder} to clone the standby"
        await self._settle()
        root = self.data.parent
        root.mkdir(parents=True, exist_ok=True)
        self.engine.ident.check_reachable(root)
        await asyncio.to_thread(shutil.rmtree, self.data, True)  # other databases renew meanwhile
        self.engine.ident.own(self.data)
        self._prepare_repo()
        source = self.cfg.peers[holder]
        host, _, port = source.rpartition(":")
        await self.engine.run(
            "pg_basebackup",
            "-D",
            str(self.data),
            "-h",
            host,
            "-p",
            port,
            "-U",
            SUPERUSER,
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-manifest",
            timeout=600,
        )
        await self._start_standby(holder)
        self.role = Role.STANDBY
        return f"cloned a standby from {holder} with pg_basebackup"

    # -- starting ----------------------------------------------------------------------

    def _write_conf(self, sync_names: list[str], follow: str | None) -> None:
        self.engine.write_file(
            self.data / "alwayson.conf",
            postgresql_conf(self.cfg, self.cfg.listen, sync_names, follow),
        )
        self.sync_names = list(sync_names)

    async def _start(self, sync_names: list[str], follow: str | None = None) -> None:
        await self._settle()
        old = self.postmaster
        if old is not None and old.alive():
            await old.stop("fast", timeout=20)
        self._write_conf(sync_names, follow)
        signal_file = self.data / "standby.signal"
        if follow is not None:
            self.engine.write_file(signal_file, "")
        else:
            signal_file.unlink(missing_ok=True)
        self.postmaster = self.engine.spawn(
            self.data, self.log_dir / f"{self.name}@{self.cfg.site}.pg.log"
        )

    async def _start_standby(self, holder: str) -> None:
        await self._start([], follow=self.cfg.peers[holder])
        self.writable = False

    async def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            pm = self.postmaster
            if pm is None or not pm.alive():
                raise EngineError(f"{self.name}: PostgreSQL exited while starting (see its log)")
            try:
                await query(self.admin_dsn(), "SELECT 1", timeout=2)
                return
            except TemporaryError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.05)

    async def _become_primary_again(self, why: str) -> str:
        sent = time.monotonic()  # before asking: our view must end before the keeper's
        try:
            lease = await self.keeper.lease(
                self.name,
                "acquire",
                self.cfg.site,
                0,
                self.cfg.ttl,
                1.5,
                synchronous=self.synchronous,
            )
        except LeaseRefused as exc:
            self.role = Role.FENCED
            return f"cannot take the lease back: {exc.reason}"
        self._hold(lease, sent)
        await self._start(sync_names=[])
        await self._wait_ready()
        self.role = Role.PRIMARY
        self.writable = True
        self.fence_reason = ""
        return f"{why}: primary again at lease epoch {lease.epoch}"

    # -- primary -----------------------------------------------------------------------

    async def _primary_cycle(self) -> str:
        pm = self.postmaster
        if pm is None or not pm.alive():
            return await self._primary_died()
        seen = self.view.get("lease") or {}
        tenure = self.tenure
        if (
            seen.get("revoked_for")
            and seen.get("holder") == self.cfg.site
            and tenure is not None
            and seen.get("epoch") == tenure.epoch
        ):
            # `db failover`: the next renewal would be refused anyway; stop taking writes now.
            why = f"the operator revoked the lease for a failover to {seen['revoked_for']}"
            await self.fence(why)
            return f"fenced: {why}"
        try:
            rows = await query(
                self.admin_dsn(),
                "SELECT application_name, state, sync_state, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint, "
                "extract(epoch FROM replay_lag)::float8, pg_current_wal_lsn()::text "
                "FROM pg_stat_replication",
                timeout=2,
            )
            current = await query(
                self.admin_dsn(),
                "SELECT pg_current_wal_lsn()::text, "
                "(SELECT timeline_id FROM pg_control_checkpoint()), "
                "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), "
                "(SELECT sum(xact_commit + xact_rollback) FROM pg_stat_database)::bigint",
                timeout=2,
            )
        except TemporaryError as exc:
            self.last_error = str(exc)
            return f"primary not answering: {exc}"
        lsn, timeline, connections, xacts = current[0]
        # connections and xact_total feed the controller's alwayson_db_* metrics.
        self.facts = {
            "lsn": lsn,
            "timeline": timeline,
            "connections": int(connections or 0),
            "xact_total": int(xacts or 0),
        }
        self.replication = [
            {
                "standby": r[0],
                "state": r[1],
                "sync_state": r[2],
                "lag_bytes": r[3] or 0,
                "flush_lag_bytes": r[4] or 0,
                "lag_seconds": r[5] or 0.0,
            }
            for r in rows
        ]
        if self.cfg.replication == "synchronous":
            await self._keep_synchronous()
        await self._complete_record()
        return f"primary at epoch {self.tenure.epoch if self.tenure else '?'}"

    async def _primary_died(self) -> str:
        self.writable = False
        exited = self.exit_seen_at or time.time()
        tenure = self.tenure
        self.tenure = None
        self.role = Role.FENCED
        self.fence_reason = (
            "lease not renewed in time: the watchdog stopped PostgreSQL"
            if self.watchdog_fired
            else "the PostgreSQL process exited"
        )
        noticed = time.time()
        await wait_backends_gone(self.data, 5.0)
        gone = time.time()
        released = tenure is not None and await self._release(
            tenure.epoch, f"primary process exited at {exited:.3f}", exited
        )
        self.retake_after = time.monotonic() + 2 * self.cfg.ttl
        await self._event("db-primary-exited", f"{self.cfg.site}: primary exited; lease released")
        if tenure is not None:
            self._find_end_of_wal(tenure.epoch)
        return (
            f"primary exited (seen by the cycle {noticed - exited:.2f}s later, every backend "
            f"gone {gone - exited:.2f}s after the exit)"
            + (", lease released for the standby" if released else "")
        )

    def _find_end_of_wal(self, epoch: int) -> None:
        """In the background, after the release: it must delay neither the standby's
        promotion nor this site's reports; anything that touches the data directory
        again waits for it first (``_settle``)."""

        async def find() -> None:
            self.final_wal = await self._end_of_wal(epoch)

        self._wal_end_job = asyncio.create_task(find())

    async def _settle(self, wait: float = 0.0) -> None:
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

    async def _end_of_wal(self, epoch: int) -> dict[str, Any] | None:
        """Where this stopped primary's WAL ends on disk: every commit it acknowledged is
        before it (a commit is acknowledged only once flushed). pg_waldump reads the
        newest timeline from the last checkpoint's redo point (or from where that timeline
        began, when the checkpoint is older) until the first invalid record."""
        try:
            control = await self.engine.controldata(self.data)
            redo = control.get("Latest checkpoint's REDO location", "")
            timeline = int(control.get("Latest checkpoint's TimeLineID", "1") or 1)
            timeline, start = newest_timeline(self.data / "pg_wal", timeline, redo)
            await self.engine.run(
                "pg_waldump",
                "--quiet",
                "--path",
                str(self.data / "pg_wal"),
                "--start",
                start,
                "--timeline",
                str(timeline),
                timeout=30,
            )
        except OSError as exc:
            log.warning("%s: end of WAL not found: %s", self.name, exc)
        except EngineError as exc:
            # "error in WAL record at 0/1480368: invalid record length at 0/14803E0: ..."
            text = str(exc)
            found = re.findall(r"(?:at|LSN) ([0-9A-F]+/[0-9A-F]+)", text)
            if "error in WAL record" in text and found:
                return {"epoch": epoch, "lsn": found[-1], "at": time.time()}
            log.warning("%s: end of WAL not found: %s", self.name, text[-300:])
        return None

    async def _keep_synchronous(self) -> None:
        standbys = [slot_name(s) for s in self.cfg.standby_sites]
        streaming = {r["standby"]: r for r in self.replication if r["state"] == "streaming"}
        present = [s for s in standbys if s in streaming]
        now = time.monotonic()
        if present:
            self.standby_missing_since = None
            row = streaming[present[0]]
            if not self.sync_names and row["flush_lag_bytes"] <= CATCH_UP_BYTES:
                self._write_conf([present[0]], None)
                await query(self.admin_dsn(), "SELECT pg_reload_conf()")
            elif self.sync_names and row["sync_state"] == "sync":
                site = next(s for s in self.cfg.standby_sites if slot_name(s) == present[0])
                if self.sync_standby != site:
                    self.sync_standby = site
                    await self.renew_now()
                if self.alert and self.sync_standby == site:
                    await self._clear_alert(site)
            return
        if self.standby_missing_since is None:
            self.standby_missing_since = now
        missing_for = now - self.standby_missing_since
        if self.cfg.on_standby_loss == "block":
            # Commits wait for the standby, so it still has every acknowledged one: it stays
            # named in the lease and may take over if this primary is lost meanwhile.
            if self.sync_names and missing_for >= self.cfg.standby_timeout and not self.alert:
                self.alert_kind = "blocked"
                self.alert = (
                    f"commits to {self.name} on {self.cfg.site} are blocked: the synchronous "
                    "standby is lost and on_standby_loss is block"
                )
                await self._event("db-writes-blocked", self.alert)
            return
        if self.sync_standby is not None:
            # The lease must stop naming a standby before commits may go without it.
            self.sync_standby = None
            if not await self.renew_now():
                return
        if self.sync_names and missing_for >= self.cfg.standby_timeout:
            self._write_conf([], None)
            await query(self.admin_dsn(), "SELECT pg_reload_conf()")
            self.alert_kind = "rpo"
            self.alert = (
                f"RPO=0 no longer holds for {self.name}: the standby is lost; commits "
                f"continue on {self.cfg.site} alone"
            )
            await self._event("db-rpo-alert", self.alert)

    async def _clear_alert(self, site: str) -> None:
        if self.alert_kind == "blocked":
            await self._event(
                "db-writes-resumed", f"{self.name}: {site} is back; blocked commits go on"
            )
        else:
            await self._event(
                "db-rpo-restored", f"{self.name}: {site} is synchronous again; RPO=0 holds"
            )
        self.alert = None
        self.alert_kind = None

    # -- fenced ------------------------------------------------------------------------

    async def _fenced_cycle(self) -> str:
        lease = self.lease
        if lease is None:
            return f"fenced ({self.fence_reason}); the lease keeper is unreachable"
        untouched = lease.epoch == self._my_epoch() and lease.previous_holder in (
            None,
            self.cfg.site,
        )
        if (
            untouched
            and lease.expired(self.keeper_now())
            and time.monotonic() >= self.retake_after
            and (self.data / "PG_VERSION").exists()
        ):
            return await self._become_primary_again("nobody took over")
        return f"fenced ({self.fence_reason}); `alwayson db failback` rejoins it as a standby"

    # -- standby -----------------------------------------------------------------------

    async def _standby_cycle(self) -> str:
        lease = self.lease
        pm = self.postmaster
        holder = lease.holder if lease else None
        if pm is None or not pm.alive():
            target = holder if holder and holder != self.cfg.site else self._other()
            if target is None:
                return "standby stopped; no primary known"
            await self._start_standby(target)
            return f"started the standby following {target}"
        if lease is not None and holder == self.cfg.site:
            return await self._promote("the lease was handed over")
        if lease is not None and self._may_take(lease):
            sent = time.monotonic()  # before asking: our view must end before the keeper's
            try:
                new = await self.keeper.lease(
                    self.name,
                    "acquire",
                    self.cfg.site,
                    0,
                    self.cfg.ttl,
                    1.5,
                    synchronous=self.synchronous,
                )
            except LeaseRefused as exc:
                self.detected_at = None  # not a takeover yet; date the one that happens
                return f"standby: cannot take the lease: {exc.reason}"
            self.detected_at = self.detected_at or time.time()
            self._hold(new, sent)
            return await self._promote(
                f"lease epoch {new.epoch} acquired after {lease.holder or lease.previous_holder}'s "
                + ("was released" if lease.holder is None else "expired")
            )
        await self._standby_facts()
        return f"standby following {holder}"

    def _other(self) -> str | None:
        others = [s for s in self.cfg.sites if s != self.cfg.site]
        return others[0] if others else None

    def _may_take(self, lease: Lease) -> bool:
        if lease.revoked_for not in (None, self.cfg.site) or not lease.expired(self.keeper_now()):
            self.detected_at = None
            return False
        if self.detected_at is None:
            self.detected_at = time.time()
        return True

    async def _standby_facts(self) -> None:
        self.replication = []
        try:
            rows = await query(
                self.admin_dsn(),
                "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, "
                "extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, "
                "(SELECT status FROM pg_stat_wal_receiver), "
                "(SELECT received_tli FROM pg_stat_wal_receiver)",
                timeout=2,
            )
        except TemporaryError as exc:
            self.last_error = str(exc)
            return
        receive, replay, age, status, tli = rows[0]
        self.facts = {
            "receive_lsn": receive,
            "replay_lsn": replay,
            "replay_age_seconds": age,
            "receiver": status,
            "timeline": tli,
        }

    async def _promote(self, why: str) -> str:
        started = time.time()
        detected = self.detected_at or started
        before = Lease.from_json(self.view["lease"]) if self.view.get("lease") else None
        # Handed over: renew first, so our own view of the lease starts after the keeper
        # granted it, never before.
        if self.tenure is None and not await self._take_handed_lease():
            return "handed the lease but could not renew it yet; still a standby"
        lag = await self._lag_at_fault()
        self.role = Role.PRIMARY
        self.writable = False
        try:
            await query(self.admin_dsn(), "SELECT pg_promote(true, 30)", timeout=35)
        except TemporaryError as exc:
            return f"promotion failed: {exc}"
        promoted = time.time()
        self._write_conf([], None)
        (self.data / "standby.signal").unlink(missing_ok=True)
        await query(self.admin_dsn(), "SELECT pg_reload_conf()")
        self.sync_standby = None
        self.sync_names = []
        await self._ensure_slots()
        self.writable = True
        writable_at = await self._first_write()
        lease = self.lease
        fault, basis = fault_of(before, detected)
        kind = "failover" if "acquired" in why else "switchover-promotion"
        record = {
            "kind": kind,
            "database": self.name,
            "to": self.cfg.site,
            "from": (lease.previous_holder if lease else None),
            "epoch": lease.epoch if lease else None,
            "why": why,
            "replication": self.cfg.replication,
            "fault_at": fault,
            "fault_basis": basis,
            "lease_free_at": lease_free_at(before),
            "detected_at": detected,
            "promote_started_at": started,
            "promoted_at": promoted,
            "writable_at": writable_at,
            "detect_seconds": detected - fault,
            "promote_seconds": promoted - started,
            "rto_seconds": (writable_at - fault) if writable_at else None,
            "lag_at_fault": lag,
        }
        self.detected_at = None
        ident = f"{int(promoted * 1000)}-{self.cfg.site}"
        with contextlib.suppress(TemporaryError):
            await self.keeper.record(self.name, "record", ident, record)
        if kind == "failover":
            self.pending_record = (ident, record, time.monotonic() + PENDING_RECORD)
        await self._event("db-promoted", f"{self.cfg.site} promoted: {why}", record)
        return f"promoted: {why}"

    async def _complete_record(self) -> None:
        """Add the old primary's end of WAL to the failover record once it reports it: the
        WAL it had on disk that this site never received (acknowledged commits or not)."""
        pending = self.pending_record
        if pending is None:
            return
        ident, record, until = pending
        report = (self.view.get("sites") or {}).get(record.get("from") or "") or {}
        final = report.get("final_wal") or {}
        if final.get("epoch") != (record.get("epoch") or 0) - 1 or not final.get("lsn"):
            if time.monotonic() > until:
                self.pending_record = None
            return
        lag = dict(record["lag_at_fault"])
        end = lsn_int(final["lsn"])
        received = lsn_int(lag.get("standby_receive_lsn"))
        lag["old_primary_wal_end_lsn"] = final["lsn"]
        lag["wal_bytes_not_received"] = max(0, end - received) if received else None
        record = {**record, "lag_at_fault": lag}
        try:
            await self.keeper.record(self.name, "record", ident, record)
        except TemporaryError:
            return
        self.pending_record = None

    async def _take_handed_lease(self) -> bool:
        lease = self.lease
        if lease is None or lease.holder != self.cfg.site:
            return False
        sent = time.monotonic()
        try:
            new = await self.keeper.lease(
                self.name,
                "renew",
                self.cfg.site,
                lease.epoch,
                self.cfg.ttl,
                1.5,
                sync=None,
                synchronous=self.synchronous,
            )
        except (LeaseRefused, TemporaryError) as exc:
            self.last_error = str(exc)
            return False
        self._hold(new, sent)
        return True

    async def _lag_at_fault(self) -> dict[str, Any]:
        """How far this standby was behind when it took over. Its own positions are read
        now, just before promotion; the old primary's is its last report (every CYCLE, so
        it may have written more since: a lower bound). The old primary's end of WAL on
        disk, when it can tell, completes it later (``_complete_record``)."""
        receive, replay = self.facts.get("receive_lsn"), self.facts.get("replay_lsn")
        with contextlib.suppress(TemporaryError):
            rows = await query(
                self.admin_dsn(),
                "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text",
                timeout=2,
            )
            receive, replay = rows[0][0] or receive, rows[0][1] or replay
        previous = self.lease.previous_holder if self.lease else None
        report = (self.view.get("sites") or {}).get(previous or "") or {}
        theirs = lsn_int(report.get("lsn"))
        mine = lsn_int(receive)
        reported_at = report.get("reported_at")
        return {
            "standby_receive_lsn": receive,
            "standby_replay_lsn": replay,
            "primary_last_reported_lsn": report.get("lsn"),
            "primary_report_age_seconds": (
                (self.keeper_now() - float(reported_at)) if reported_at else None
            ),
            "bytes_behind_last_report": max(0, theirs - mine) if theirs and mine else None,
            "replay_age_seconds": self.facts.get("replay_age_seconds"),
        }

    async def _first_write(self) -> float | None:
        dsn = conninfo(self.cfg.endpoint, SUPERUSER, self.cfg.superuser_password)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                await query(dsn, "SELECT txid_current()", timeout=2)
                return time.time()
            except TemporaryError:
                await asyncio.sleep(0.05)
        return None

    # -- requests from the operator ------------------------------------------------------

    async def _requests(self) -> None:
        request = self.view.get("request") or {}
        ident = request.get("id")
        if not ident or request.get("site") not in (None, self.cfg.site):
            return
        op = request.get("op")
        mine = self._claims(op)
        if not mine:
            return
        if op in LONG_REQUESTS:
            if self._job is None or self._job.done():
                self._job = asyncio.create_task(self._run_request(op, request))
            return
        await self._run_request(op, request)

    async def _run_request(self, op: str | None, request: dict[str, Any]) -> None:
        ident = str(request["id"])
        started = time.time()
        try:
            if op in LONG_REQUESTS:
                async with self.long_lock:
                    result = await self._carry_out(op, request)
            else:
                result = await self._carry_out(op, request)
            outcome = {"ok": True, **result}
        except (AlwaysonError, OSError) as exc:
            outcome = {"ok": False, "error": str(exc)}
        record = {
            "kind": op,
            **request,
            **outcome,
            "started_at": started,
            "finished_at": time.time(),
            "site": self.cfg.site,
        }
        with contextlib.suppress(TemporaryError):
            await self.keeper.record(self.name, "record", ident, record)
            await self.keeper.finish(self.name, ident)
        self.view["request"] = None

    def _claims(self, op: str | None) -> bool:
        if op in ("switchover", "backup", "verify"):
            return self.role is Role.PRIMARY
        if op == "failback":
            return self.role is Role.FENCED
        if op == "restore":
            return self.role is Role.PRIMARY
        if op == "drop-restore":
            # Whichever site runs it (it stays where it was made, through failovers).
            into = str((self.view.get("request") or {}).get("into"))
            return into in self.restores or backups.restored(self.cfg, into) is not None
        return False

    async def _carry_out(self, op: str | None, request: dict[str, Any]) -> dict[str, Any]:
        if op == "switchover":
            return await self._switchover(str(request["to"]))
        if op == "failback":
            return await self._failback()
        if op == "backup":
            return await backups.create(self, verify=bool(request.get("verify", False)))
        if op == "verify":
            return await backups.verify(self, str(request["backup"]))
        if op == "restore":
            return await backups.restore(self, request.get("to_time"), str(request["into"]))
        if op == "drop-restore":
            return await backups.drop_restore(self, str(request["into"]))
        raise AlwaysonError(f"unknown request {op!r}")

    async def _switchover(self, to: str) -> dict[str, Any]:
        if to not in self.cfg.peers:
            raise AlwaysonError(f"{to!r} has no standby of {self.name}")
        row = next((r for r in self.replication if r["standby"] == slot_name(to)), None)
        if row is None or row["state"] != "streaming":
            raise AlwaysonError(f"{to} is not streaming from {self.cfg.site}; nothing was changed")
        if row["lag_bytes"] > self.cfg.switchover_max_lag:
            raise AlwaysonError(
                f"{to} is {row['lag_bytes']} bytes behind (switchover_max_lag "
                f"{self.cfg.switchover_max_lag}); wait for it to catch up; nothing was changed"
            )
        tenure = self.tenure
        pm = self.postmaster
        assert tenure is not None and pm is not None
        began = time.time()
        self.holding = True
        self.writable = False
        self.role = Role.SWITCHING
        try:
            # Tell the other site first: its endpoint stops sending new clients here on
            # its next view refresh, instead of into a PostgreSQL that is shutting down.
            await self._report()
            await asyncio.sleep(CYCLE + 0.05)
            await pm.stop("fast", timeout=20)
            control = await self.engine.controldata(self.data)
            final = lsn_int(control.get("Latest checkpoint location"))
            deadline = time.monotonic() + SWITCHOVER_WAIT
            replayed = 0
            while time.monotonic() < deadline:
                with contextlib.suppress(TemporaryError):
                    rows = await query(
                        self.admin_dsn(self.cfg.peers[to]),
                        "SELECT pg_last_wal_replay_lsn()::text",
                        timeout=2,
                    )
                    replayed = lsn_int(rows[0][0])
                    if replayed >= final:
                        break
                await asyncio.sleep(0.05)
            if replayed < final:
                await self._start(self.sync_names)
                await self._wait_ready()
                self.role = Role.PRIMARY
                self.writable = True
                raise AlwaysonError(
                    f"{to} did not replay up to {final:X} within {SWITCHOVER_WAIT:.0f}s; "
                    f"{self.cfg.site} stays primary"
                )
            await self.keeper.lease(
                self.name,
                "handover",
                self.cfg.site,
                tenure.epoch,
                self.cfg.ttl,
                2.0,
                to=to,
                fault_at=began,
            )
            self.tenure = None
            handed = time.time()
            await self._start_standby(to)
            self.role = Role.STANDBY
            return {
                "from": self.cfg.site,
                "to": to,
                "epoch": tenure.epoch + 1,
                "stopped_at": began,
                "handed_at": handed,
                "final_lsn": f"{final >> 32:X}/{final & 0xFFFFFFFF:X}",
                "standby_replayed_lsn": f"{replayed >> 32:X}/{replayed & 0xFFFFFFFF:X}",
                "lost_writes": 0,
            }
        finally:
            self.holding = False

    async def _failback(self) -> dict[str, Any]:
        lease = self.lease
        holder = lease.holder if lease else None
        if holder is None or holder == self.cfg.site:
            raise AlwaysonError("no other site is primary; nothing to fail back to")
        self.role = Role.REJOINING
        await self._settle(wait=30.0)  # the end of this site's WAL, for the record
        source = conninfo(self.cfg.peers[holder], SUPERUSER, self.cfg.superuser_password)
        began = time.time()
        method = "rewind"
        output = ""
        try:
            output = await self.engine.run(
                "pg_rewind",
                "--target-pgdata",
                str(self.data),
                "--source-server",
                source,
                "--no-sync",
                timeout=600,
            )
        except EngineError as exc:
            method = f"re-clone (pg_rewind failed: {str(exc)[:200]})"
            await self._clone_from(holder)
        else:
            if await self._diverged_after_rewind(holder):
                method = "re-clone (both sites wrote on the same timeline; rewind cannot tell)"
                await self._clone_from(holder)
            else:
                await self._start_standby(holder)
        self.role = Role.STANDBY
        self.fence_reason = ""
        # "servers diverged at WAL location 0/3000148 on timeline 1"
        found = re.search(r"diverged at WAL location ([0-9A-F]+/[0-9A-F]+)", output)
        diverged = found.group(1) if found else None
        end = (self.final_wal or {}).get("lsn")
        self.final_wal = None
        return {
            "from": self.cfg.site,
            "method": method,
            "follows": holder,
            "epoch": lease.epoch if lease else None,
            "seconds": time.time() - began,
            "diverged_at": diverged,
            "own_wal_end": end,
            # What this site had written past the new primary's history and threw away.
            "discarded_wal_bytes": (
                max(0, lsn_int(end) - lsn_int(diverged)) if diverged and end else None
            ),
        }

    async def _diverged_after_rewind(self, holder: str) -> bool:
        """pg_rewind compares timelines only: when the new primary was promoted before it
        learnt the old one's newest timeline, both chose the same id and rewind sees
        nothing to do although this copy has WAL the new primary never had."""
        control = await self.engine.controldata(self.data)
        mine = lsn_int(control.get("Latest checkpoint location"))
        tli = int(control.get("Latest checkpoint's TimeLineID", "0") or 0)
        rows = await query(
            self.admin_dsn(self.cfg.peers[holder]),
            "SELECT pg_current_wal_lsn()::text, (SELECT timeline_id FROM pg_control_checkpoint())",
        )
        theirs, their_tli = lsn_int(rows[0][0]), int(rows[0][1])
        return tli >= their_tli and mine > theirs

    # -- reporting ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        pm = self.postmaster
        lease = self.lease
        role = self.role
        if role is Role.PRIMARY and self.watchdog_fired:
            # The watchdog thread stopped it; the next cycle records why.
            role = Role.FENCED
        return {
            "site": self.cfg.site,
            "role": role.value,
            "pid": pm.pid if pm is not None and pm.alive() else None,
            "address": self.cfg.listen,
            "endpoint": self.cfg.endpoint,
            "writable": self.writable,
            "epoch": lease.epoch if lease else None,
            "lease_holder": lease.holder if lease else None,
            "sync_standby": self.sync_standby,
            "sync_names": self.sync_names,
            "alert": self.alert,
            "alert_kind": self.alert_kind,
            "standby_missing_for": (
                time.monotonic() - self.standby_missing_since
                if self.standby_missing_since is not None
                else None
            ),
            "final_wal": self.final_wal,
            "fence_reason": self.fence_reason,
            "replication": self.replication,
            "verdict": self.last_verdict,
            "last_error": self.last_error,
            "restores": {
                name: {**(backups.restored(self.cfg, name) or {}), "pid": pm.pid}
                for name, pm in sorted(self.restores.items())
                if pm.alive()
            },
            **self.facts,
        }

    async def _report(self) -> None:
        with contextlib.suppress(TemporaryError):
            await self.keeper.report(self.name, self.cfg.site, self.status())

    async def _event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        with contextlib.suppress(TemporaryError):
            await self.keeper.event(kind, self.name, message, data or {})
