"""One database in one site, as its site agent keeps it (the Patroni-like part).

Three concurrent duties, each with its own bound:

- **renewing** (primary only): renew the lease every ttl/3 with a deadline shorter than
  what is left of it; a refusal fences at once.
- **watchdog** (a thread, so a blocked event loop cannot delay it): when the agent's own
  view of the lease runs out (``Tenure.must_fence``) the postmaster gets SIGQUIT.
- **cycle** (every ``CYCLE``): observe once (:class:`~alwayson.data.deciding.StewardView`),
  decide (:func:`~alwayson.data.deciding.decide`, pure), act (``starting``,
  ``primaries``, ``promoting``), then carry out the operator's requests and report.

Every decision is logged as a sentence (``"promoted: lease epoch 4 acquired after
jakarta's expired"``) and kept in ``last_verdict``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alwayson.data import backups, restoring
from alwayson.data.board import Board
from alwayson.data.deciding import (
    Action,
    Decision,
    Role,
    StewardView,
    decide,
    endpoint_open,
    renewal_due,
    report_due,
    watch_for,
    watchdog_must_stop,
)
from alwayson.data.engines import Engine, Postmaster
from alwayson.data.layout import DatabaseConfig
from alwayson.data.leases import Lease
from alwayson.data.links import Target
from alwayson.data.primaries import keep_primary, primary_exited
from alwayson.data.promoting import acquire_and_promote, complete_record, promote, standby_facts
from alwayson.data.starting import become_primary_again, clone_from, initialise
from alwayson.data.switching import rejoin, switchover
from alwayson.data.tending import Tender
from alwayson.util.alarms import Alarm
from alwayson.util.clocks import Clock
from alwayson.util.errors import AlwaysonError, TemporaryError
from alwayson.util.sitelinks import Partitions

if TYPE_CHECKING:
    from alwayson.data.failsafe import Asker

log = logging.getLogger("alwayson.agent")

CYCLE = 0.25
WATCHDOG_IDLE = 0.25
"""The longest the watchdog sleeps: it wakes at its tenure's fencing time, when the
postmaster exits (pidfd) or when poked (a new tenure, a stop), else this often."""
RENEW_POLL = 0.05
VIEW_DEADLINE = 1.0
LONG_REQUESTS = ("backup", "verify", "restore", "drop-restore")
REJOIN_RETRY = 10.0
"""After a failed rejoin, the next attempt waits this long (s)."""
REPORT_EVERY = 1.0
"""A report that says nothing new is written at most this often (readers count a report
older than 5 s as stale); one that says something new goes at once."""

__all__ = ["CYCLE", "Role", "Steward"]


class Steward(Tender):
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
        super().__init__(cfg, board, engine, partitions, log_dir, clock, asker)
        self.restores: dict[str, Postmaster] = {}
        self.long_lock = asyncio.Lock()
        """One long job (backup, verify, restore) at a time: they share the scratch address."""
        self._job: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._reported: dict[str, Any] | None = None  # the last report written, and when
        self._reported_at = 0.0
        self._alarm = Alarm()
        self._watchdog = threading.Thread(target=self._watch, name=f"fence-{cfg.name}", daemon=True)

    def endpoint_target(self) -> Target | None:
        """Where the site's endpoint sends a new client now (None: hold it)."""
        if self.holding:
            return None
        if self.role is Role.PRIMARY:
            if endpoint_open(self.writable, self.tenure, self.clock.monotonic()):
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
        try:
            while not self._stop.is_set():
                tenure, pm = self.tenure, self.postmaster
                alive = pm is not None and pm.alive()
                exited = self.role is Role.PRIMARY and pm is not None and not alive
                if exited and self.exit_seen_at is None:
                    self.exit_seen_at = self.clock.wall()
                now = self.clock.monotonic()
                if pm is not None and watchdog_must_stop(self.role, tenure, alive, now):
                    self.writable = False
                    self.watchdog_fired = True
                    pm.signal(signal.SIGQUIT)
                    log.warning(
                        "%s: watchdog fenced the primary: lease not renewed in time", self.name
                    )
                self._alarm.wait(
                    pm.pid if alive and pm is not None else None,
                    watch_for(tenure, now, WATCHDOG_IDLE),
                )
        finally:
            self._alarm.close()

    def tenure_changed(self) -> None:
        self._alarm.poke()

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
            self._alarm.poke()

    async def _restart_restores(self) -> None:
        try:
            problems = await restoring.restart_restores(
                self, set(self.restores), self.restores.__setitem__
            )
        except Exception as exc:  # a bad restores.json must not stop the steward
            log.exception("%s: restarting restored instances", self.name)
            self.last_error = f"restarting restored instances: {exc!r}"
            return
        if problems:
            self.last_error = problems[-1]

    async def shutdown(self) -> None:
        self._stop.set()
        self._alarm.poke()
        self.writable = False
        await self.settle()
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
            await self.clock.sleep(CYCLE)

    async def _renewing(self) -> None:
        while True:
            if renewal_due(self.role, self.tenure, self.clock.monotonic()):
                await self.renew_now()
            await self.clock.sleep(RENEW_POLL)

    # -- one cycle: observe, decide, act -----------------------------------------------

    async def cycle(self) -> str:
        fresh = await self._refresh_view()
        starting = self.role is Role.STARTING
        decision = decide(self.observe())
        self.detected_at = decision.detected_at
        verdict = await self.act(decision)
        if starting:
            return verdict  # bootstrap: no requests or reports until a role is known
        await self._requests()
        await self._report()
        if fresh:  # etcd answered this cycle: file what happened while it did not
            await self.file_unsent_events()
        return verdict

    async def _refresh_view(self) -> bool:
        """Read the lease and the sites' reports; False when etcd did not answer."""
        try:
            sent = self.clock.wall()
            view = await self.board.view(self.name, self.cfg.sites, timeout=VIEW_DEADLINE)
        except TemporaryError as exc:
            self.last_error = str(exc)
            return False
        self.view = view
        self.acquiring = False  # an acquire whose answer was lost shows in this view
        self.board_offset = float(view["now"]) - sent
        lease = Lease.from_json(view["lease"]) if view.get("lease") else None
        if self.role is not Role.PRIMARY or lease is None or lease.holder != self.cfg.site:
            self.lease = lease
        return True

    def observe(self) -> StewardView:
        """One immutable view for this cycle's decision (files only where a role needs
        them: a running primary's cycle reads none)."""
        pm = self.postmaster
        seen = self.view.get("lease")
        on_disk = self.role in (Role.STARTING, Role.FENCED)
        has_data = on_disk and (self.data / "PG_VERSION").exists()
        return StewardView(
            site=self.cfg.site,
            primary_site=self.cfg.primary_site,
            sites=tuple(self.cfg.sites),
            role=self.role,
            board_seen=bool(self.view),
            lease=self.lease,
            seen_lease=Lease.from_json(seen) if seen else None,
            tenure_epoch=self.tenure.epoch if self.tenure else None,
            postmaster_alive=pm is not None and pm.alive(),
            board_now=self.board_now(),
            monotonic=self.clock.monotonic(),
            wall=self.clock.wall(),
            fence_reason=self.fence_reason,
            retake_after=self.retake_after,
            detected_at=self.detected_at,
            watchdog_fired=self.watchdog_fired,
            has_data=has_data,
            standby_signal=has_data and (self.data / "standby.signal").exists(),
            saved_epoch=self.saved_epoch() if on_disk else 0,
            reachable=frozenset(
                s for s in self.cfg.sites if self.partitions.connected(self.cfg.site, s)
            ),
            promised_until=self.promised_until,
            promised_to=self.promised_to,
            quiet_until=self.quiet_until,
        )

    async def act(self, decision: Decision) -> str:
        """Carry one decision out; the sentence says what happened."""
        action = decision.action
        if action is Action.FOLLOW_FOUND_STANDBY:
            self.role = Role.STANDBY
        elif action is Action.RETAKE_LEASE:
            return await become_primary_again(self, decision.why)
        elif action is Action.STAY_FENCED:
            self.role = Role.FENCED
            self.fence_reason = decision.why
        elif action is Action.INITIALISE:
            return await initialise(self)
        elif action is Action.CLONE:
            assert decision.target is not None
            return await clone_from(self, decision.target)
        elif action is Action.PRIMARY_EXITED:
            return await primary_exited(self, decision.why)
        elif action is Action.FENCE:
            await self.fence(decision.why)
        elif action is Action.KEEP_PRIMARY:
            trouble = await keep_primary(self)
            if trouble is not None:
                return trouble
            await complete_record(self)
            return f"primary at epoch {self.tenure.epoch if self.tenure else '?'}"
        elif action is Action.START_STANDBY:
            assert decision.target is not None
            await self.start_standby(decision.target)
        elif action is Action.PROMOTE:
            return await promote(self, decision.why)
        elif action is Action.ACQUIRE_AND_PROMOTE:
            return await acquire_and_promote(self, decision)
        elif action is Action.FOLLOW:
            await standby_facts(self)
        elif action is Action.REJOIN:
            return await self._rejoin(decision)
        return decision.verdict

    async def _rejoin(self, decision: Decision) -> str:
        """Come back as a standby by itself, and record how (for `db status` and audit)."""
        started = self.clock.wall()
        ident = f"rejoin-{int(started * 1000)}"
        log.info("%s: %s", self.name, decision.verdict)
        try:
            result = await rejoin(self)
        except (AlwaysonError, OSError) as exc:
            self.retake_after = self.clock.monotonic() + REJOIN_RETRY
            self.fence_reason = f"rejoin failed: {exc}"
            outcome: dict[str, Any] = {"ok": False, "error": str(exc)}
            verdict = f"rejoin as a standby of {decision.target} failed: {exc}"
        else:
            outcome = {"ok": True, **result}
            verdict = f"rejoined as a standby of {decision.target} ({result['method']})"
        record = {
            "kind": "rejoin",
            "id": ident,
            "why": decision.why,
            **outcome,
            "started_at": started,
            "finished_at": self.clock.wall(),
            "site": self.cfg.site,
        }
        with contextlib.suppress(TemporaryError):
            await self.board.record(self.name, "record", ident, record)
        await self.event("db-rejoined" if outcome["ok"] else "db-rejoin-failed", verdict, record)
        return verdict

    # -- requests from the operator ------------------------------------------------------

    async def _requests(self) -> None:
        request = self.view.get("request") or {}
        ident = request.get("id")
        if not ident or request.get("site") not in (None, self.cfg.site):
            return
        op = request.get("op")
        if not self._claims(op):
            return
        if op in LONG_REQUESTS:
            if self._job is None or self._job.done():
                self._job = asyncio.create_task(self._run_request(op, request))
            return
        await self._run_request(op, request)

    async def _run_request(self, op: str | None, request: dict[str, Any]) -> None:
        ident = str(request["id"])
        started = self.clock.wall()
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
            "finished_at": self.clock.wall(),
            "site": self.cfg.site,
        }
        with contextlib.suppress(TemporaryError):
            await self.board.record(self.name, "record", ident, record)
            await self.board.finish(self.name, ident)
        self.view["request"] = None

    def _claims(self, op: str | None) -> bool:
        if op in ("switchover", "failback"):
            # The primary moving away; never the site it moved to (it becomes primary
            # before the request is cleared).
            request = self.view.get("request") or {}
            return self.role is Role.PRIMARY and request.get("to") != self.cfg.site
        if op in ("backup", "verify", "restore"):
            return self.role is Role.PRIMARY
        if op == "drop-restore":
            # Whichever site runs it (it stays where it was made, through failovers).
            into = str((self.view.get("request") or {}).get("into"))
            return into in self.restores or restoring.restored(self.cfg, into) is not None
        return False

    async def _carry_out(self, op: str | None, request: dict[str, Any]) -> dict[str, Any]:
        if op == "switchover":
            return await switchover(self, str(request["to"]), self._report, CYCLE)
        if op == "failback":  # a switchover back to the spec's primary site
            return await switchover(self, str(request["to"]), self._report, CYCLE)
        if op == "backup":
            return await backups.create(self, verify=bool(request.get("verify", False)))
        if op == "verify":
            return await backups.verify(self, str(request["backup"]))
        if op == "restore":
            into = str(request["into"])
            result, pm = await restoring.restore(
                self, request.get("to_time"), into, set(self.restores)
            )
            self.restores[into] = pm
            return result
        if op == "drop-restore":
            into = str(request["into"])
            return await restoring.drop_restore(self, into, self.restores.pop(into, None))
        raise AlwaysonError(f"unknown request {op!r}")

    # -- reporting ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        pm = self.postmaster
        lease = self.lease
        role = self.role
        if role is Role.PRIMARY and self.watchdog_fired:
            # The watchdog thread stopped it; the next cycle records why.
            role = Role.FENCED
        promise_left = self.promised_until - self.clock.monotonic()
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
                self.clock.monotonic() - self.standby_missing_since
                if self.standby_missing_since is not None
                else None
            ),
            "final_wal": self.final_wal,
            "fence_reason": self.fence_reason,
            "failsafe": self.on_failsafe,
            "failsafe_since": self.failsafe_since if self.on_failsafe else None,
            "failsafe_trouble": self.failsafe_trouble or None,
            "promised_to": self.promised_to if promise_left > 0 else None,
            "promise_left": round(promise_left, 3) if promise_left > 0 else None,
            "replication": self.replication,
            "verdict": self.last_verdict,
            "last_error": self.last_error,
            "restores": {
                name: {**(restoring.restored(self.cfg, name) or {}), "pid": pm.pid}
                for name, pm in sorted(self.restores.items())
                if pm.alive()
            },
            **self.facts,
        }

    async def _report(self) -> None:
        """Write this site's report: at once when it says something new, else once every
        ``REPORT_EVERY``. Each write is a raft proposal on every etcd member: written every
        cycle, the two agents' reports were most of an idle platform's etcd work."""
        status = self.status()
        now = self.clock.monotonic()
        if not report_due(status, self._reported, now, self._reported_at, REPORT_EVERY):
            return
        with contextlib.suppress(TemporaryError):
            await self.board.report(self.name, self.cfg.site, status)
            self._reported, self._reported_at = status, now
