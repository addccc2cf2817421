"""Drills as the controller runs them: one at a time, in their own process, kept in history.

``start`` checks the request (scenario, site, database), refuses a second drill while one
runs, writes the run's context (0600: it holds the API token and database passwords) and
starts ``python -m alwayson.entrypoints.drill RUN_DIR`` in its own session, tracked by pid and start
time like every other process. A watcher notices when it ends and keeps its result
(``drill/<id>`` in the store). A drill outlives a controller restart (the controller-kill
scenario depends on it); when a restarted controller finds a drill whose process is gone
without a result, it undoes the faults the drill's journal still lists and records the
drill as aborted.

Scheduled drills (``drills.schedules`` in the spec, cron) start from the same watcher; a
schedule that comes due while a drill runs is recorded as skipped.

A site loss is the one fault the controller itself carries out: it must stop restarting
the site's processes, so ``lose_site`` holds the site down (kept in the store) and kills
every process of the site by pid, PostgreSQL included; ``restore_site`` lets it start again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from croniter import croniter

from alwayson.control.desired import daemon_argv
from alwayson.data.layout import (
    SUPERUSER,
    endpoint_address,
    partitions_path,
    pg_address,
    pg_data_dir,
    secrets_of,
)
from alwayson.drills.faults import Journal, undo_all
from alwayson.drills.model import (
    CONTEXT_FILE,
    PROGRESS_FILE,
    REPORT_FILE,
    RESULT_FILE,
    DatabaseTarget,
    DrillContext,
    Status,
    write_atomic,
)
from alwayson.drills.scenarios import SCENARIOS, scenario
from alwayson.loadgen.journeys import REGISTER_PATH
from alwayson.runtime.base import Phase
from alwayson.runtime.processes import read_pid_file
from alwayson.spec.drilling import SCENARIO_NAMES
from alwayson.spec.models import PlatformSpec
from alwayson.util.errors import ConflictError, NotFoundError, PermanentError

if TYPE_CHECKING:
    from alwayson.control.ports import EventSink, SpecReader, Waker
    from alwayson.runtime.base import Runtime
    from alwayson.runtime.processes import Processes
    from alwayson.store.base import StateStore
    from alwayson.util.clocks import Clock

SELF_KILL_DELAY = 0.5
"""How long a leader that loses its own site (a drill) lives on to answer the request."""
log = logging.getLogger(__name__)

PREFIX = "drill/"
SITES_DOWN_KEY = "drills/sites-down"
SCHEDULE_KEY = "drills/schedule"
WATCH_INTERVAL = 0.5
assert set(SCENARIO_NAMES) == set(SCENARIOS), "spec.drilling and drills.scenarios disagree"


class DrillOps:
    def __init__(
        self,
        store: StateStore,
        events: EventSink,
        waker: Waker,
        specs: SpecReader,
        runtime: Runtime,
        processes: Processes,
        state_dir: Path,
        clock: Clock,
    ) -> None:
        self.store = store
        self.events = events
        self.waker = waker
        self.specs = specs
        self.runtime = runtime
        self.processes = processes
        self.state_dir = state_dir
        self.clock = clock
        self.active: dict[str, Any] | None = None  # the running drill's record
        self.sites_down: dict[str, str] = {}  # site -> the drill holding it down
        self.last_schedule_check = clock.wall()
        self.itself: str | None = None
        """This controller's own instance (one per site): a lost site takes it last."""
        self._recent: list[dict[str, Any]] = []
        self.api: str | None = None  # where the API serves, and its token: the drill
        self.token: str | None = None  # process calls back (set by the daemon)

    def serve_at(self, api: str, token: str) -> None:
        """The API the drill processes call (the daemon knows it; the spec may not)."""
        self.api, self.token = api, token

    @property
    def root(self) -> Path:
        return self.state_dir / "drills"

    def _alive(self, record: dict[str, Any]) -> bool:
        """Whether a drill's runner process (by pid and start time) still runs."""
        try:
            pid, created = int(record["pid"]), record.get("create_time")
            return self.processes.alive(pid, None if created is None else float(created))
        except (KeyError, TypeError, ValueError):
            return False

    # ------------------------------------------------------------------ lifecycle

    async def load(self) -> None:
        found = await self.store.get(SITES_DOWN_KEY)
        self.sites_down = dict(found.value) if found else {}
        at = await self.store.get(SCHEDULE_KEY)
        if at is not None:
            self.last_schedule_check = float(at.value.get("checked_at", self.clock.wall()))
        for _, entry in await self.store.list_prefix(PREFIX, limit=100_000):
            record = dict(entry.value)
            if record.get("status") == Status.RUNNING.value:
                if self._alive(record):
                    self.active = record
                else:
                    await self._finish(record, died=True)
        await self._refresh_recent()

    async def run(self) -> None:
        """The watcher: a drill's end, and scheduled drills coming due."""
        while True:
            try:
                await self.watch_once()
            except Exception:  # keep watching
                log.exception("drill watcher")
            await self.clock.sleep(WATCH_INTERVAL)

    async def watch_once(self) -> None:
        record = self.active
        if record is not None and not self._alive(record):
            await self._finish(record, died=False)
        await self._due()

    # ------------------------------------------------------------------ requests

    async def start(
        self,
        name: str,
        *,
        site: str | None,
        rate: float | None,
        duration: float | None,
        journey: str | None,
        actor: str,
    ) -> dict[str, Any]:
        spec = self.specs.spec()
        chosen = scenario(name)
        workload = [s.name for s in spec.workload_sites]
        if site is not None:
            _workload_site(spec, site)
        if chosen.needs_database and not spec.databases:
            raise PermanentError(
                f"drill {name} needs a database and the spec declares none (add `databases:`)"
            )
        if chosen.fault == "site-loss" and len(workload) < 2:
            raise PermanentError("a site-loss drill needs two workload sites")
        if self.active is not None:
            raise ConflictError(
                f"drill {self.active['id']} ({self.active['scenario']}) is running; one drill "
                f"at a time (wait for it, or `alwayson drill cancel {self.active['id']}`)"
            )
        if rate is not None and not 0 < rate <= 10_000:
            raise PermanentError(f"--rate must be in (0, 10000] per second, not {rate:g}")
        if duration is not None and not 0 < duration <= 24 * 3600:
            raise PermanentError(f"--duration must be in (0 s, 24 h], not {duration:g} s")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock.wall()))
        ident = f"{stamp}-{name}-{secrets.token_hex(2)}"
        run_dir = self.root / ident
        run_dir.mkdir(parents=True, mode=0o700)
        ctx = self._context(spec, ident, name, site, rate, duration, journey, actor, run_dir)
        write_atomic(run_dir / CONTEXT_FILE, ctx.to_json())
        os.chmod(run_dir / CONTEXT_FILE, 0o600)
        runner = self.processes.start_detached(
            [sys.executable, "-m", "alwayson.entrypoints.drill", str(run_dir)],
            run_dir / "drill.log",
            run_dir / "runner.json",
        )
        pid, created = runner.pid, runner.start_time
        record = {
            "id": ident,
            "scenario": name,
            "site": site,
            "status": Status.RUNNING.value,
            "actor": actor,
            "started_at": self.clock.wall(),
            "finished_at": None,
            "pid": pid,
            "create_time": created,
            "run_dir": str(run_dir),
            "rate": ctx.rate,
            "duration": ctx.duration,
            "journey": ctx.journey,
        }
        self.active = record
        await self.store.put(PREFIX + ident, record)
        await self.events.record_event(
            "drill-started", ident, f"{name} by {actor} (pid {pid})", {"scenario": name}
        )
        await self._refresh_recent()
        return record

    def _context(
        self,
        spec: PlatformSpec,
        ident: str,
        name: str,
        site: str | None,
        rate: float | None,
        duration: float | None,
        journey: str | None,
        actor: str,
        run_dir: Path,
    ) -> DrillContext:
        chosen = SCENARIOS[name]
        state_dir = self.state_dir
        if self.api is None or self.token is None:
            raise PermanentError("drills need the controller's API (run by `alwayson up`)")
        api, token = self.api, self.token
        journey = journey or spec.drills.journey
        if journey == "auto":
            journey = "bank-registration" if _serves(spec, REGISTER_PATH) else "/"
        service = _service_for(spec, REGISTER_PATH if journey == "bank-registration" else journey)
        passwords = secrets_of(state_dir, spec) if spec.databases else {}
        databases = []
        for index, db in enumerate(spec.databases):
            app = passwords[db.name]["app"]
            superuser = passwords[db.name]["superuser"]
            sites = [s.name for s in spec.workload_sites]
            databases.append(
                DatabaseTarget(
                    name=db.name,
                    primary_site=db.primary_site,
                    replication=db.replication,
                    rto=db.objectives.rto,
                    rpo=db.objectives.rpo,
                    endpoints={
                        s: f"postgresql://{db.name}:{app}@{endpoint_address(spec, s, index)}"
                        f"/{db.name}"
                        for s in sites
                    },
                    servers={
                        s: f"postgresql://{SUPERUSER}:{superuser}@{pg_address(spec, s, index)}"
                        "/postgres"
                        for s in sites
                    },
                )
            )
        rto = min([d.objectives.rto for d in spec.databases] or [spec.drills.rto])
        witness = next((s.name for s in spec.sites if s.witness), None)
        return DrillContext(
            id=ident,
            scenario=name,
            site=site,
            rate=rate or spec.drills.rate,
            duration=duration or chosen.hold,
            journey=journey,
            actor=actor,
            api=f"http://{api}",
            token=token,
            front_door=f"http://{spec.front_door.listen}",
            run_dir=str(run_dir),
            state_dir=str(state_dir),
            partitions_file=str(partitions_path(state_dir)),
            sites=[s.name for s in spec.workload_sites],
            witness=witness,
            controller_pid=os.getpid(),
            # A controller in every site: the next leader restarts a killed one.
            controller_restart=[] if spec.has_consensus else daemon_argv(state_dir, api),
            apis=list(spec.controller_apis().values()) if spec.has_consensus else [],
            rto_objective=rto,
            service=service,
            settle=spec.drills.settle,
            databases=databases,
        )

    async def cancel(self, ident: str, actor: str) -> dict[str, Any]:
        record = await self.get(ident)
        if record.get("status") != Status.RUNNING.value:
            raise ConflictError(f"drill {ident} is not running ({record.get('status')})")
        if self._alive(record):
            self.processes.signal(int(record["pid"]), float(record["create_time"]), signal.SIGINT)
        await self.events.record_event("drill-cancel", ident, f"cancelled by {actor}")
        return record

    async def get(self, ident: str) -> dict[str, Any]:
        found = await self.store.get(PREFIX + ident)
        if found is None:
            raise NotFoundError(f"no drill {ident!r} (alwayson drill list)")
        record = dict(found.value)
        if record.get("status") == Status.RUNNING.value:
            with contextlib.suppress(OSError, ValueError):
                record["progress"] = json.loads(
                    (Path(record["run_dir"]) / PROGRESS_FILE).read_text()
                )
        return record

    async def history(self, limit: int = 50) -> list[dict[str, Any]]:
        found = await self.store.list_prefix(PREFIX, limit=100_000)
        rows = [_summary(dict(v.value)) for _, v in found]
        rows.sort(key=lambda r: -float(r.get("started_at") or 0))
        return rows[:limit]

    def report(self, record: dict[str, Any]) -> Path:
        path = Path(str(record.get("run_dir", ""))) / REPORT_FILE
        if not path.is_file():
            raise NotFoundError(f"drill {record['id']} has no HTML report (yet)")
        return path

    def recent(self) -> list[dict[str, Any]]:
        """For the dashboard: the latest drills, newest first."""
        return list(self._recent)

    # ------------------------------------------------------------------ ending

    async def _finish(self, record: dict[str, Any], died: bool) -> None:
        run_dir = Path(str(record["run_dir"]))
        result: dict[str, Any] | None = None
        with contextlib.suppress(OSError, ValueError):
            result = json.loads((run_dir / RESULT_FILE).read_text())
        if result is None:
            journal = Journal(run_dir)
            problems = await undo_all(journal, _Local(self))
            why = "the drill process ended without a result"
            if died:
                why = "the drill process was gone when the controller started"
            if journal.faults:
                why += f"; undid {len(journal.faults)} fault(s) from its journal"
            if problems:
                why += "; " + "; ".join(problems)
            record.update(status=Status.ABORTED.value, reason=why)
            _minimal_report(run_dir, record, journal, self.clock.wall())
        else:
            record.update(
                status=result.get("status", Status.ERROR.value),
                reason=result.get("reason", ""),
                result=result,
            )
        record["finished_at"] = self.clock.wall()
        await self.store.put(PREFIX + str(record["id"]), record)
        if self.active is not None and self.active.get("id") == record["id"]:
            self.active = None
        await self.events.record_event(
            "drill-finished",
            str(record["id"]),
            f"{record['scenario']}: {record['status']}"
            + (f" ({record['reason']})" if record.get("reason") else ""),
            {"scenario": record["scenario"], "status": record["status"]},
        )
        await self._prune()
        await self._refresh_recent()

    async def _prune(self) -> None:
        spec = self.specs.spec_or_none()
        keep = spec.drills.history if spec else 200
        found = await self.store.list_prefix(PREFIX, limit=100_000)
        done = sorted(
            (dict(v.value) for _, v in found if v.value.get("status") != Status.RUNNING.value),
            key=lambda r: float(r.get("started_at") or 0),
        )
        for old in done[: max(len(done) - keep, 0)]:
            await self.store.delete(PREFIX + str(old["id"]))

    async def _refresh_recent(self) -> None:
        rows = await self.history(10)
        self._recent = [
            {
                "name": f"{r['scenario']} {r['id']}",
                "id": r["id"],
                "started_at": r.get("started_at"),
                "result": r.get("status"),
                "rto_seconds": r.get("rto_seconds"),
                "rpo_seconds": r.get("rpo_seconds"),
                "lost": r.get("lost"),
            }
            for r in rows
        ]

    # ------------------------------------------------------------------ schedules

    async def _due(self, now: float | None = None) -> None:
        spec = self.specs.spec_or_none()
        now = self.clock.wall() if now is None else now
        since, self.last_schedule_check = self.last_schedule_check, now
        if spec is None or not spec.drills.schedules:
            return
        for plan in spec.drills.schedules:
            # Cron in the controller's local time, as the spec says.
            local = dt.datetime.fromtimestamp(since).astimezone()
            due = croniter(plan.cron, local).get_next(dt.datetime).timestamp()
            if due > now:
                continue
            await self.store.put(SCHEDULE_KEY, {"checked_at": now})
            if self.active is not None:
                await self.events.record_event(
                    "drill-skipped",
                    plan.scenario,
                    f"scheduled {plan.scenario} skipped: drill {self.active['id']} is running",
                )
                continue
            try:
                await self.start(
                    plan.scenario,
                    site=plan.site,
                    rate=plan.rate,
                    duration=plan.duration,
                    journey=None,
                    actor=f"schedule {plan.cron!r}",
                )
            except Exception as exc:
                await self.events.record_event(
                    "drill-skipped", plan.scenario, f"scheduled {plan.scenario} not started: {exc}"
                )

    # ------------------------------------------------------------------ site loss

    async def lose_site(self, site: str, drill: str, actor: str) -> dict[str, Any]:
        spec = self.specs.spec()
        workload = _workload_site(spec, site)
        if site not in self.sites_down and len(self.sites_down) + 1 >= len(workload):
            raise ConflictError("refusing to lose the last workload site")
        self.sites_down[site] = drill
        await self.store.put(SITES_DOWN_KEY, self.sites_down)
        killed = await self._kill_site(spec, site)
        await self.events.record_event(
            "site-lost",
            site,
            f"site {site} lost by {actor}: {len(killed)} processes killed",
            {"drill": drill, "killed": killed},
        )
        self.waker.wake()
        return {"site": site, "killed": killed}

    async def _kill_site(self, spec: PlatformSpec, site: str) -> list[dict[str, Any]]:
        """SIGKILL every process of ``site``: its instances, gateway, front door, database
        agent, and PostgreSQL with its children (they run in their own sessions)."""
        killed: dict[int, str] = {}
        mine = None
        for status in self.runtime.statuses():
            if status.spec.site != site or status.phase is Phase.EXITED or not status.pid:
                continue
            ident = status.spec.id
            if ident == self.itself:  # the leader is in the lost site: it goes after answering
                mine = status
                continue
            with contextlib.suppress(NotFoundError):
                for pid in await self.runtime.kill(ident, signal.SIGKILL, tree=True):
                    killed.setdefault(pid, ident if pid == status.pid else f"{ident} child")
        for db in spec.databases:
            postmaster = read_pid_file(
                pg_data_dir(self.state_dir, db.name, site) / "postmaster.pid"
            )
            if postmaster is None or postmaster.pid in killed:
                continue
            what = f"postgres {db.name}@{site}"
            for pid in self.processes.signal_tree(postmaster.pid, None, signal.SIGKILL):
                killed.setdefault(pid, what if pid == postmaster.pid else f"{what} child")
        if mine is not None:
            killed[mine.pid] = f"{mine.spec.id} (the leader: killed once it has answered)"
            ident = mine.spec.id
            asyncio.get_running_loop().call_later(
                SELF_KILL_DELAY,
                lambda: asyncio.ensure_future(self.runtime.kill(ident, signal.SIGKILL)),
            )
        return [{"pid": pid, "what": what} for pid, what in killed.items()]

    async def restore_site(self, site: str, drill: str, actor: str) -> dict[str, Any]:
        if site not in self.sites_down:
            return {"site": site, "restored": False}
        del self.sites_down[site]
        await self.store.put(SITES_DOWN_KEY, self.sites_down)
        await self.events.record_event(
            "site-restored", site, f"site {site} restored by {actor}", {"drill": drill}
        )
        self.waker.wake()
        return {"site": site, "restored": True}


class _Local:
    """Undo from inside the controller (a drill process died): no HTTP to ourselves."""

    def __init__(self, ops: DrillOps) -> None:
        self.ops = ops

    async def lose_site(self, site: str, drill: str) -> dict[str, Any]:
        return await self.ops.lose_site(site, drill, "drill")

    async def restore_site(self, site: str, drill: str) -> dict[str, Any]:
        return await self.ops.restore_site(site, drill, f"drill {drill} (recovered)")

    async def alive(self) -> bool:
        return True


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    result = record.get("result") or {}
    measures = result.get("measures") or {}
    rpo = result.get("rpo") or {}
    lag = rpo.get("lag_at_fault") or {}
    return {
        "id": record.get("id"),
        "scenario": record.get("scenario"),
        "site": result.get("site") or record.get("site"),
        "status": record.get("status"),
        "reason": record.get("reason", ""),
        "actor": record.get("actor"),
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
        "requests": measures.get("requests"),
        "failed": measures.get("failed_after_fault"),
        "detect_seconds": measures.get("detect_seconds"),
        "rto_seconds": measures.get("rto_seconds"),
        "longest_gap_seconds": measures.get("longest_gap_seconds"),
        "lost": rpo.get("acknowledged_writes_lost"),
        # RPO as time: 0 when the set check found every acknowledged write; otherwise the
        # standby's replay age at the fault, when the failover record has it.
        "rpo_seconds": 0.0
        if rpo.get("acknowledged_writes_lost") == 0
        else (lag.get("replay_age_seconds") if isinstance(lag, dict) else None),
    }


def _minimal_report(run_dir: Path, record: dict[str, Any], journal: Journal, now: float) -> None:
    """A drill that died leaves what is known: its faults and why it ended."""
    from alwayson.drills.reporting import render_report

    result = {
        "schema": "alwayson.drill.result/1",
        "id": record["id"],
        "scenario": record["scenario"],
        "site": record.get("site"),
        "actor": record.get("actor"),
        "status": Status.ABORTED.value,
        "reason": record.get("reason", ""),
        "interrupted": True,
        "started_at": record.get("started_at"),
        "finished_at": now,
        "faults": [f.to_dict() for f in journal.faults],
        "notes": ["the drill process ended without writing its result"],
    }
    with contextlib.suppress(Exception):
        write_atomic(run_dir / RESULT_FILE, json.dumps(result, indent=2, default=str))
        write_atomic(run_dir / REPORT_FILE, render_report(result))
    record["result"] = result


def _workload_site(spec: PlatformSpec, site: str) -> list[str]:
    """The workload sites, once ``site`` is checked to be one of them."""
    workload = [s.name for s in spec.workload_sites]
    if site not in workload:
        raise NotFoundError(f"unknown workload site {site!r} (sites: {', '.join(workload)})")
    return workload


def _serves(spec: PlatformSpec, path: str) -> bool:
    return _service_for(spec, path) is not None


def _service_for(spec: PlatformSpec, path: str) -> str | None:
    """The service whose route takes ``path`` (longest prefix), if any."""
    best: tuple[int, str] | None = None
    for svc in spec.services:
        for route in svc.routes:
            prefix = route.path or "/"
            if path.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), svc.name)
    return best[1] if best else None


__all__ = ["DrillOps"]
