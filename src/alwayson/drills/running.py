"""One drill, from preflight to report: load, fault, undo, checks, verdict.

The phases, each written to ``progress.json`` as it starts:

1. **preflight**: the controller answers, the target exists and is ready.
2. **baseline**: load through the front door for ``BASELINE`` seconds; when the target is
   already failing, the drill stops here and says so (measuring a fault on a broken
   platform would be nonsense), with no fault injected.
3. **fault**: journaled, then injected; held for the scenario's hold (``--duration``).
4. **undo**: the fault is undone; a lost site is restored and, for ``site-loss``, the
   database is moved back (failback).
5. **settle**: load continues until the platform is whole again and a few seconds more.
6. **checks**: detection from the controller's events and the databases' records, the
   acknowledged-writes set check and the ledger, then the verdict against the objectives.

Ctrl-C (SIGINT or SIGTERM to the drill process) ends the current phase: the faults are
undone, the load stops, the checks still run, and the result is marked interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from alwayson.drills import checks, concluding, healing, measuring
from alwayson.drills.faults import (
    Fault,
    FaultError,
    Journal,
    inject,
    process_fault,
    site_hang,
    undo_all,
)
from alwayson.drills.loading import Load, LoadGenerator, Writes, journey_for
from alwayson.drills.model import (
    PROGRESS_FILE,
    REPORT_FILE,
    RESULT_FILE,
    RESULT_SCHEMA,
    DrillContext,
    Mark,
    Status,
    write_atomic,
)
from alwayson.drills.remote import ControllerApi
from alwayson.drills.scenarios import Scenario, scenario
from alwayson.util.errors import AlwaysonError, TemporaryError

log = logging.getLogger(__name__)

BASELINE = 3.0
BASELINE_MIN_SUCCESS = 0.9
POLL = 0.2
MAX_LOAD_SECONDS = 6 * 3600


class Interrupted(Exception):
    """Ctrl-C: stop where we are, undo, report."""


class Drill:
    def __init__(self, ctx: DrillContext, run_dir: Path, generator: LoadGenerator) -> None:
        self.ctx = ctx
        self.run_dir = run_dir
        self.generator = generator
        self.scenario: Scenario = scenario(ctx.scenario)
        self.api = ControllerApi(ctx.api, ctx.token, others=ctx.apis)
        self.journal = Journal(run_dir)
        self.log = measuring.OutcomeLog()
        self.marks: list[Mark] = []
        self.interrupt = asyncio.Event()
        self.stop_load = asyncio.Event()
        self.phase = "starting"
        self.started_at = time.time()
        self.fault_at: float | None = None
        self.undone_at: float | None = None
        self.healed_at: float | None = None
        self.load_stopped_at: float | None = None
        self.fault: Fault | None = None
        self.writes = Writes()  # filled by the bank's registration journey
        self.primaries: list[dict[str, Any]] = []  # samples: {at, writable: [sites]}
        self.controller_down: list[float] = []
        self.controller_back: float | None = None
        """When, after the controller was killed, one answered the API again (the next
        leader, on a platform with a controller per site)."""
        self.notes: list[str] = []
        self.original_primary: dict[str, str] = {}

    # ------------------------------------------------------------------ plumbing

    def mark(self, kind: str, label: str, at: float | None = None) -> None:
        self.marks.append(Mark(time.time() if at is None else at, kind, label))
        log.info("drill %s: %s: %s", self.ctx.id, kind, label)

    def enter(self, phase: str, message: str) -> None:
        self.phase = phase
        self.mark("phase", f"{phase}: {message}")
        self.write_progress(message)

    def write_progress(self, message: str = "") -> None:
        counts = self.log.counts()
        since = self.log.counts(start=self.fault_at) if self.fault_at else None
        write_atomic(
            self.run_dir / PROGRESS_FILE,
            json.dumps(
                {
                    "phase": self.phase,
                    "message": message,
                    "at": time.time(),
                    "elapsed": time.time() - self.started_at,
                    "requests": counts["requests"],
                    "failed": counts["failed"],
                    "failed_since_fault": since["failed"] if since else 0,
                    "fault_at": self.fault_at,
                }
            ),
        )

    async def pause(self, seconds: float) -> None:
        """Wait, unless interrupted (then raise)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.interrupt.wait(), timeout=max(seconds, 0.0))
        if self.interrupt.is_set():
            raise Interrupted

    async def until(
        self, check: Callable[[], Awaitable[bool]], timeout: float, what: str
    ) -> float | None:
        """Poll ``check`` until true (returns when) or ``timeout`` (returns None)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(AlwaysonError):
                if await check():
                    return time.time()
            await self.pause(POLL)
        self.notes.append(f"{what}: not within {timeout:g} s")
        return None

    # ------------------------------------------------------------------ load

    async def load(self) -> None:
        load = Load(
            base_url=self.ctx.front_door,
            journey=journey_for(self.ctx.journey, self.writes),
            rate=self.ctx.rate,
            duration=MAX_LOAD_SECONDS,
            timeout=10.0,
            drain=10.0,
            max_lag=5.0,
        )
        await self.generator.run(load, self.log.record, self.stop_load)

    # ------------------------------------------------------------------ the drill

    async def run(self) -> dict[str, Any]:
        status, reason = Status.ERROR, ""
        load_task: asyncio.Task[None] | None = None
        ticker = asyncio.create_task(self._tick())
        try:
            self.enter("preflight", f"{self.scenario.name}: checking the platform")
            await self.preflight()
            load_task = asyncio.create_task(self.load())
            self.mark(
                "load-start", f"{self.ctx.rate:g} {self.ctx.journey}/s via {self.ctx.front_door}"
            )
            self.enter("baseline", f"{BASELINE:g} s of load before the fault")
            await self.pause(BASELINE)
            baseline = self.log.counts()
            if (
                baseline["requests"] == 0
                or baseline["ok"] < BASELINE_MIN_SUCCESS * baseline["requests"]
            ):
                errors = (
                    ", ".join(f"{k}: {v}" for k, v in self.log.errors().items()) or "none finished"
                )
                raise TargetDown(
                    f"the load target {self.ctx.front_door} is failing before the fault "
                    f"({baseline['ok']} of {baseline['requests']} requests succeeded; {errors}); "
                    "no fault was injected. Fix the platform (alwayson status) and run the "
                    "drill again."
                )
            await self.inject_fault()
            self.enter(
                "fault", f"{self.fault.target if self.fault else ''} held {self.ctx.duration:g} s"
            )
            await self.hold(self.ctx.duration)
            await self.undo_fault()
            await self.heal()
            self.enter("settle", f"{self.ctx.settle:g} s of load after recovery")
            await self.pause(self.ctx.settle)
            status = Status.PASSED
        except Interrupted:
            status, reason = Status.ABORTED, "interrupted (Ctrl-C): faults undone, partial result"
            self.mark("interrupted", reason)
        except TargetDown as exc:
            status, reason = Status.ABORTED, str(exc)
            self.mark("aborted", reason)
        except (AlwaysonError, OSError) as exc:
            status, reason = Status.ERROR, f"{type(exc).__name__}: {exc}"
            self.mark("error", reason)
        finally:
            problems = await undo_all(self.journal, self.api)
            for problem in problems:
                self.notes.append(problem)
                status, reason = Status.ERROR, reason or problem
            if self.journal.faults and self.undone_at is None:
                self.undone_at = max((f.undone_at or 0) for f in self.journal.faults) or None
            self.stop_load.set()
            if load_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(load_task, timeout=15)
                self.load_stopped_at = time.time()
                self.mark("load-stop", "load stopped")
            ticker.cancel()
        self.enter("checks", "detection, data checks and verdict")
        result = await self.result(status, reason)
        await self.api.close()
        return result

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            with contextlib.suppress(OSError):
                self.write_progress()

    async def preflight(self) -> None:
        if not await self.api.alive():
            raise TargetDown(f"the controller at {self.ctx.api} does not answer")
        status = await self.api.status()
        if self.scenario.needs_database and not self.ctx.databases:
            raise TargetDown(f"{self.scenario.name} needs a database; the spec declares none")
        for db in self.ctx.databases:
            found = next((d for d in await self.api.databases() if d.get("name") == db.name), {})
            holder = (found.get("lease") or {}).get("holder")
            if holder:
                self.original_primary[db.name] = holder
        if not status.get("converged"):
            not_ready = [
                i["id"] for i in status.get("instances", []) if i["desired"] and not i["ready"]
            ]
            raise TargetDown(
                "the platform is not whole before the fault (not ready: "
                f"{', '.join(not_ready[:10]) or 'unknown'}); wait for `alwayson status` to "
                "show every instance ready"
            )

    def primary_site(self) -> str | None:
        for db in self.ctx.databases:
            return self.original_primary.get(db.name, db.primary_site)
        return None

    def fault_site(self) -> str:
        site = (
            self.ctx.site or self.primary_site() or (self.ctx.sites[0] if self.ctx.sites else None)
        )
        if site is None:
            raise FaultError("no workload site to inject the fault in")
        return site

    async def inject_fault(self) -> None:
        s, ctx = self.scenario, self.ctx
        site = self.fault_site()
        status = await self.api.status()
        fault: Fault
        if s.target in ("instance", "gateway", "etcd"):
            fault = self._process_target(status, site)
        elif s.target == "db-primary":
            db = ctx.databases[0]
            found = next(d for d in await self.api.databases() if d.get("name") == db.name)
            row = next(
                (r for r in found.get("sites", []) if r.get("role") == "primary" and r.get("pid")),
                None,
            )
            if row is None:
                raise FaultError(f"database {db.name} has no primary with a pid to kill")
            fault = process_fault(
                "kill", f"postgres {db.name}@{row['site']}", ctx.id, int(row["pid"])
            )
            site = str(row["site"])
        elif s.target == "witness":
            if ctx.witness is None:
                raise FaultError("the spec has no witness site")
            site = ctx.witness
            stopped = [
                (int(i["pid"]), str(i["id"]))
                for i in status.get("instances", [])
                if i["site"] == site and i.get("pid")
            ]
            if not ctx.apis:  # the only controller runs beside the witness: it goes too
                stopped.append((ctx.controller_pid, "controller"))
            fault = site_hang(site, ctx.id, stopped)
        elif s.target == "controller":
            fault = process_fault("controller-kill", "controller", ctx.id, ctx.controller_pid)
            fault.restart, fault.restart_cwd = list(ctx.controller_restart), ctx.state_dir
        elif s.fault == "site-loss":
            fault = Fault("site-loss", site, ctx.id, site=site)
        else:
            peers = [p for p in [*ctx.sites, *([ctx.witness] if ctx.witness else [])] if p != site]
            fault = Fault(
                s.fault,
                f"{site} <-> {', '.join(peers)}",
                ctx.id,
                site=site,
                pairs=[[site, p] for p in peers],
                delay=s.delay,
                jitter=s.jitter,
                partitions_file=ctx.partitions_file,
            )
        self.fault = fault
        await inject(fault, self.journal, self.api)
        self.fault_at = fault.injected_at
        self.mark(
            "fault",
            f"{s.fault} {fault.target}" + (f" ({fault.note})" if fault.note else ""),
            self.fault_at,
        )

    def _process_target(self, status: dict[str, Any], site: str) -> Fault:
        kind = {"gateway": "gateway", "etcd": "etcd"}.get(self.scenario.target, "workload")
        rows = [
            i
            for i in status.get("instances", [])
            if i["kind"] == kind
            and i["site"] == site
            and i["ready"]
            and i.get("pid")
            and (kind != "workload" or self.ctx.service in (None, i["service"]))
        ]
        if not rows:
            what = {"gateway": "gateway", "etcd": "etcd member"}.get(
                kind, f"instance of {self.ctx.service or 'any service'}"
            )
            raise FaultError(f"no ready {what} in site {site} to {self.scenario.fault}")
        row = sorted(rows, key=lambda r: r["id"])[0]
        return process_fault(self.scenario.fault, row["id"], self.ctx.id, int(row["pid"]))

    async def hold(self, seconds: float) -> None:
        """Keep the fault in force, sampling what the scenario watches."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.scenario.primaries:
                await self.sample_primaries()
            if self.scenario.target == "controller":
                if not await self.api.alive():
                    self.controller_down.append(time.time())
                elif self.controller_down and self.controller_back is None:
                    self.controller_back = time.time()
                    self.mark(
                        "api-back", "a controller answers the API again", self.controller_back
                    )
            await self.pause(min(POLL, max(end - time.monotonic(), 0)))

    async def sample_primaries(self) -> None:
        for db in self.ctx.databases:
            found = await asyncio.gather(*(checks.writable(url) for url in db.servers.values()))
            sites = [s for s, w in zip(db.servers, found, strict=True) if w]
            self.primaries.append({"at": time.time(), "database": db.name, "writable": sites})

    async def undo_fault(self) -> None:
        self.enter("undo", f"undoing {self.fault.kind if self.fault else 'the fault'}")
        problems = await undo_all(self.journal, self.api)
        if problems:
            raise FaultError("; ".join(problems))
        self.undone_at = time.time()
        self.mark("undone", f"{self.fault.kind if self.fault else ''} undone", self.undone_at)

    async def heal(self) -> None:
        """Wait until the platform is whole again (and, for a site loss, fail back)."""
        if await healing.heal(self.api, self.ctx, self.scenario, self.original_primary, self):
            self.healed_at = time.time()

    # ------------------------------------------------------------------ result

    async def result(self, status: Status, reason: str) -> dict[str, Any]:
        now = time.time()
        end = self.load_stopped_at or now
        fault_at = self.fault_at
        detected, records = (
            await concluding.detection(
                self.api,
                self.ctx,
                self.scenario,
                self.fault.target if self.fault else "",
                fault_at,
                self.controller_down,
                self.mark,
            )
            if fault_at is not None
            else (None, [])
        )
        window_end = self.undone_at or end
        rto = measuring.rto(self.log, fault_at, window_end) if fault_at else None
        after = self.log.counts(start=fault_at) if fault_at else self.log.counts(start=math.inf)
        gap, gap_at = measuring.longest_gap(self.log, fault_at, end) if fault_at else (None, None)
        recovered = measuring.recovered_at(self.log, fault_at, window_end) if fault_at else None
        if recovered is not None:
            self.mark("recovered", "requests succeed again and keep succeeding", recovered)
        writes = (
            await concluding.write_check(self.ctx, self.writes)
            if self.log.outcomes
            else checks.WriteCheck()
        )
        lag = next((r.get("lag_at_fault") for r in records if r.get("kind") == "failover"), None)
        primaries = concluding.primaries_summary(self.scenario, self.primaries)
        objectives = (
            concluding.objectives(
                self.ctx,
                self.scenario,
                status,
                rto,
                after["failed"],
                writes,
                primaries,
                bool(self.healed_at),
            )
            if fault_at
            else []
        )
        if status is Status.PASSED and not all(o.passed for o in objectives):
            status = Status.FAILED
            reason = "; ".join(
                f"{o.name} {o.value} > {o.limit}{o.unit}" for o in objectives if not o.passed
            )
        counts = self.log.counts()
        origin = self.marks[0].at if self.marks else self.started_at
        result: dict[str, Any] = {
            "schema": RESULT_SCHEMA,
            "id": self.ctx.id,
            "scenario": self.scenario.name,
            "summary": self.scenario.summary,
            "site": self.fault_site()
            if status is not Status.ERROR or self.fault
            else self.ctx.site,
            "target": self.fault.target if self.fault else None,
            "actor": self.ctx.actor,
            "status": status.value,
            "reason": reason,
            "interrupted": any(m.kind == "interrupted" for m in self.marks),
            "started_at": self.started_at,
            "finished_at": now,
            "fault_at": fault_at,
            "undone_at": self.undone_at,
            "healed_at": self.healed_at,
            "load": {
                "front_door": self.ctx.front_door,
                "journey": self.ctx.journey,
                "rate": self.ctx.rate,
                "hold": self.ctx.duration,
            },
            "measures": {
                "requests": counts["requests"],
                "ok": counts["ok"],
                "failed": counts["failed"],
                "failed_after_fault": after["failed"] if fault_at else None,
                "errors": self.log.errors(),
                "detect_seconds": (detected - fault_at) if detected and fault_at else None,
                "rto_seconds": rto,
                "recovered_at": recovered,
                "longest_gap_seconds": gap,
                "longest_gap_at": gap_at,
                "controller_api_back_seconds": (
                    round(self.controller_back - fault_at, 3)
                    if self.controller_back and fault_at
                    else None
                ),
            },
            "writes": writes.to_dict(),
            "rpo": {
                "acknowledged_writes_lost": len(writes.lost) if writes.checked else None,
                "lag_at_fault": lag,
                "records": records,
            },
            "primaries": primaries,
            "objectives": [o.to_dict() for o in objectives],
            "faults": [f.to_dict() for f in self.journal.faults],
            "timeline": [m.to_dict() for m in sorted(self.marks, key=lambda m: m.at)],
            "series": measuring.series(self.log, origin, end),
            "series_origin": origin,
            "notes": self.notes,
        }
        write_atomic(self.run_dir / RESULT_FILE, json.dumps(result, indent=2, default=str))
        try:
            from alwayson.drills.reporting import render_report

            write_atomic(self.run_dir / REPORT_FILE, render_report(result))
        except Exception as exc:  # the JSON is the record; a report failure is noted
            log.exception("drill %s: the HTML report failed", self.ctx.id)
            result["notes"].append(f"HTML report failed: {exc}")
            write_atomic(self.run_dir / RESULT_FILE, json.dumps(result, indent=2, default=str))
        self.phase = status.value
        self.write_progress(reason or status.value)
        return result


class TargetDown(AlwaysonError):
    """The drill's load target or platform is not healthy before the fault."""


async def run_drill(run_dir: Path, generator: LoadGenerator) -> dict[str, Any]:
    """Run the drill ``run_dir/context.json`` describes, its load sent by ``generator``."""
    ctx = DrillContext.read(run_dir)
    drill = Drill(ctx, run_dir, generator)
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, drill.interrupt.set)
    return await drill.run()


__all__ = ["Drill", "Interrupted", "TargetDown", "TemporaryError", "run_drill"]
