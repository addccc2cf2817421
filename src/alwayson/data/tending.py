"""What a steward holds and the acts every role shares: the lease, PostgreSQL, events.

:class:`Tender` is the state of one database in one site (the lease as this agent holds
it, its own :class:`~alwayson.data.leases.Tenure`, the postmaster, the alert) plus the
small acts the role modules (``starting``, ``primaries``, ``promoting``, ``switching``)
are built from. Deciding what to do is :mod:`alwayson.data.deciding`'s job; running the
loops is :mod:`alwayson.data.stewarding`'s.

Every call to etcd has a deadline shorter than the lease it protects
(:func:`~alwayson.data.deciding.renewal_budget`); a refused renewal fences at once. When
etcd cannot be reached, the failsafe (docs/DATA-DESIGN.md) asks the standby sites' agents
instead: a confirmation from every one counts as a renewal sent when the question left;
the standby side of it is :meth:`Tender.promise`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alwayson.data.board import Board
from alwayson.data.deciding import Role, failsafe_refusal, renewal_budget
from alwayson.data.engines import (
    Engine,
    EngineError,
    KeptConnection,
    Postmaster,
    conninfo,
    query,
)
from alwayson.data.layout import SUPERUSER, DatabaseConfig
from alwayson.data.leases import Lease, LeaseRefused, Tenure, reclaimable
from alwayson.data.settings import postgresql_conf
from alwayson.data.wal import end_of_wal
from alwayson.util.clocks import Clock
from alwayson.util.errors import TemporaryError
from alwayson.util.replication import slot_name
from alwayson.util.sitelinks import Partitions

if TYPE_CHECKING:
    from alwayson.data.failsafe import Asker

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
        asker: Asker | None = None,
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
        # -- the failsafe --
        self.asker = asker
        """How this site asks the standby sites' agents (None: no failsafe)."""
        self.started_at = clock.monotonic()
        self.acquiring = False
        """From the start of an acquire until its outcome is known (a lost answer: until
        etcd is read again): no failsafe promise meanwhile."""
        self.promised_until = 0.0
        """Monotonic time until which this site promised ``promised_to`` not to take over."""
        self.promised_to: str | None = None
        self.failsafe_since: float | None = None
        """Wall time this primary began living on its standbys' confirmations."""
        self.failsafe_trouble = ""
        """Why the last failsafe question got no confirmation from every standby."""
        self.unsent_events: list[tuple[str, str, dict[str, Any]]] = []
        """Failsafe events, filed once etcd answers again (it is down when they happen)."""

    @property
    def synchronous(self) -> bool:
        return self.cfg.replication == "synchronous"

    @property
    def name(self) -> str:
        return self.cfg.name

    def admin_dsn(self, address: str | None = None, dbname: str = "postgres") -> str:
        return conninfo(address or self.cfg.listen, SUPERUSER, self.cfg.superuser_password, dbname)

    @property
    def quiet_until(self) -> float:
        """One ttl after this agent started: a promise given before a restart died with
        the agent's memory, so until then it neither promises nor takes over."""
        return self.started_at + self.cfg.ttl

    @property
    def on_failsafe(self) -> bool:
        return self.failsafe_since is not None and self.tenure is not None

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
        self._end_failsafe(f"a new tenure at epoch {lease.epoch}")
        self.save_epoch(lease.epoch)
        self.tenure_changed()

    def tenure_changed(self) -> None:
        """A new tenure: whoever times its end (the steward's watchdog) looks again."""

    async def acquire(self, deadline: float) -> tuple[Lease, float]:
        """Ask etcd for the lease (epoch + 1); returns it and when the ask was sent.
        Refused without asking while a failsafe promise runs."""
        sent = self.clock.monotonic()  # before asking: our view must end before etcd's
        if sent < self.promised_until:
            left = self.promised_until - sent
            raise LeaseRefused(
                f"promised {self.promised_to} not to take over for {left:.1f}s more", self.lease
            )
        self.acquiring = True
        try:
            lease = await self.board.lease(
                self.name,
                "acquire",
                self.cfg.site,
                0,
                self.cfg.ttl,
                deadline,
                synchronous=self.synchronous,
            )
        except TemporaryError:
            raise  # it may have landed: still acquiring until etcd is read again
        except BaseException:
            self.acquiring = False
            raise
        self.lease = lease  # before the flag drops: a question now sees this site named
        self.acquiring = False
        return lease, sent

    async def renew_now(self) -> bool:
        tenure = self.tenure
        if tenure is None:
            return False
        sent = self.clock.monotonic()
        budget = renewal_budget(tenure, sent)
        if budget is None:
            return False
        if self.asker is not None and self.cfg.standby_sites:
            # Leave the failsafe half of the time: an etcd that accepts calls but has no
            # leader yet (members coming back) would otherwise take it all, and the
            # standby's confirmation would come after the tenure ended (seen in CI).
            budget /= 2
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
            if reclaimable(exc.lease, self.cfg.site, tenure.epoch):
                return await self._reclaim(tenure, exc.reason)
            self.lease = exc.lease
            await self.fence(f"renewal refused: {exc.reason}")
            return False
        except TemporaryError as exc:
            self.last_error = str(exc)
            return await self._failsafe(tenure)
        self._renewed(tenure, sent, lease, "the lease renewed")
        return True

    def _renewed(self, tenure: Tenure, sent: float, lease: Lease, how: str) -> None:
        """etcd granted the lease again: the tenure runs from when the call was sent."""
        if self.tenure is tenure and sent > tenure.renewed_at:
            tenure.renewed_at = sent
        self.lease = lease
        if self.failsafe_since is not None:
            self._end_failsafe(f"etcd answers again: {how}")

    def _record_as_wanted(self) -> bool:
        """Whether the record says what this primary wants it to (who may take over);
        a renewal that could not write a change must not let the caller act on it."""
        lease = self.lease
        return (
            lease is not None
            and lease.synchronous == self.synchronous
            and lease.sync_standby == self.sync_standby
        )

    async def _reclaim(self, tenure: Tenure, refused: str) -> bool:
        """The record names this site at its epoch, not revoked, but the holder key is
        gone (a failsafe period outlived its etcd lease): take the key back at the same
        epoch, the tenure running from when the reclaim was sent. Refused (someone
        acquired meanwhile, or a revocation): fence."""
        sent = self.clock.monotonic()
        budget = renewal_budget(tenure, sent)
        if budget is None:
            return False  # the watchdog fences at the tenure's end
        try:
            lease = await self.board.lease(
                self.name,
                "reclaim",
                self.cfg.site,
                tenure.epoch,
                self.cfg.ttl,
                budget,
                synchronous=self.synchronous,
            )
        except LeaseRefused as exc:
            self.lease = exc.lease
            await self.fence(f"renewal refused ({refused}); reclaim refused: {exc.reason}")
            return False
        except TemporaryError as exc:
            self.last_error = str(exc)
            return await self._failsafe(tenure)
        log.warning(
            "%s: holder key reclaimed at epoch %d (renewal refused: %s)",
            self.name,
            tenure.epoch,
            refused,
        )
        self._renewed(tenure, sent, lease, f"holder key reclaimed at epoch {tenure.epoch}")
        return self._record_as_wanted()

    # -- the failsafe ----------------------------------------------------------------------

    async def _failsafe(self, tenure: Tenure) -> bool:
        """etcd cannot be reached: ask every standby site's agent whether it follows this
        primary at this epoch and will not take over. A yes from every one, in time,
        counts as a renewal sent when the question left; anything else changes nothing:
        the tenure runs out and the watchdog fences, as without the failsafe."""
        peers = self.cfg.standby_sites
        if self.asker is None or not peers:
            return False
        asked = self.clock.monotonic()
        budget = renewal_budget(tenure, asked)
        if budget is None:
            return False
        question = {"site": self.cfg.site, "epoch": tenure.epoch, "ttl": tenure.ttl}
        answers = await asyncio.gather(*(self._ask(p, question, budget) for p in peers))
        troubles = [f"{p}: {why}" for p, why in zip(peers, answers, strict=True) if why]
        if not troubles and self.clock.monotonic() >= tenure.fence_at():
            troubles.append("the confirmations came after the tenure ended")
        if troubles or self.tenure is not tenure:
            self.failsafe_trouble = "; ".join(troubles) or "fenced meanwhile"
            self.last_error = f"etcd unreachable, no failsafe: {self.failsafe_trouble}"
            return False
        if asked > tenure.renewed_at:
            tenure.renewed_at = asked
        self.failsafe_trouble = ""
        if self.failsafe_since is None:
            self._start_failsafe(peers)
        return self._record_as_wanted()

    async def _ask(self, peer: str, question: dict[str, Any], budget: float) -> str | None:
        """One standby's answer: None when it confirmed for at least our ttl, else why not."""
        assert self.asker is not None
        try:
            answer = await asyncio.wait_for(
                self.asker.ask(peer, self.name, question, budget), budget
            )
        except (TemporaryError, TimeoutError, OSError) as exc:
            return f"no answer ({exc})"
        except Exception as exc:  # whatever went wrong, it is no confirmation
            log.exception("%s: asking %s (failsafe)", self.name, peer)
            return f"no answer ({exc!r})"
        if answer.get("ok") is not True:
            return str(answer.get("why") or f"no confirmation: {answer}")
        promised = answer.get("promise_seconds")
        if not isinstance(promised, int | float) or promised < question["ttl"]:
            return f"promised {promised!r}s, less than the ttl"
        return None

    def _start_failsafe(self, peers: list[str]) -> None:
        self.failsafe_since = self.clock.wall()
        epoch = self.tenure.epoch if self.tenure else None
        message = (
            f"{self.cfg.site} keeps its primary at epoch {epoch} without etcd: "
            f"{', '.join(peers)} confirmed it follows and will not take over (failsafe)"
        )
        log.warning("%s: %s", self.name, message)
        data = {"site": self.cfg.site, "epoch": epoch, "since": self.failsafe_since}
        self.unsent_events.append(("db-failsafe", message, {**data, "confirmed_by": peers}))

    def _end_failsafe(self, how: str) -> None:
        since = self.failsafe_since
        self.failsafe_since = None
        if since is None:
            return
        ended = self.clock.wall()
        message = f"{self.cfg.site} leaves the failsafe after {ended - since:.1f}s: {how}"
        log.warning("%s: %s", self.name, message)
        data = {"site": self.cfg.site, "since": since, "ended": ended, "how": how}
        self.unsent_events.append(("db-failsafe-ended", message, data))

    async def file_unsent_events(self) -> None:
        """File the failsafe's events once etcd answers (in order; stops at the first
        that cannot be filed yet)."""
        if self.failsafe_since is not None and self.tenure is None:
            # Stopped while on failsafe without passing through fence (the watchdog).
            self._end_failsafe(f"the primary stopped ({self.fence_reason or 'tenure over'})")
        while self.unsent_events and self.failsafe_since is None:
            kind, message, data = self.unsent_events[0]
            try:
                await self.board.event(kind, self.name, message, data)
            except TemporaryError:
                return
            self.unsent_events.pop(0)

    def promise(self, site: str, epoch: int, ttl: float) -> dict[str, Any]:
        """The standby side of the failsafe: confirm ``site``, a primary at ``epoch``
        that cannot reach etcd, and promise not to take over for ``max(ttl, own ttl)``
        seconds from now, recorded before the answer leaves (no await in here)."""
        now = self.clock.monotonic()
        why = failsafe_refusal(
            self.role, self.lease, site, epoch, self.acquiring, now, self.quiet_until
        )
        if why is not None:
            log.info(
                "%s: not confirming %s at epoch %d (failsafe): %s", self.name, site, epoch, why
            )
            return {"ok": False, "site": self.cfg.site, "why": why}
        length = max(self.cfg.ttl, ttl)
        if now >= self.promised_until:
            log.warning(
                "%s: confirmed %s at epoch %d without etcd (failsafe): no takeover for %.1fs "
                "from each confirmation",
                self.name,
                site,
                epoch,
                length,
            )
        self.promised_until = max(self.promised_until, now + length)
        self.promised_to = site
        return {
            "ok": True,
            "site": self.cfg.site,
            "promise_until": self.clock.wall() + length,
            "promise_seconds": length,
        }

    async def fence(self, why: str) -> None:
        """Stop the primary now: nothing commits after this returns."""
        self.writable = False
        if self.role is not Role.PRIMARY:
            return
        self.role = Role.FENCED
        self.fence_reason = why
        self._end_failsafe(f"fenced: {why}")
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
