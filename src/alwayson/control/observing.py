"""The controller's monitoring loop: scrape, store, evaluate alerts, notify, autoscale.

One loop, one interval (``metrics.scrape_interval``): scrape every instance, gateway and
front door, sample process CPU and memory, add what only the controller knows (instance
readiness and restarts, site reachability, disk, database roles, lag and backups), append
it all to the embedded time-series store, then evaluate the alert rules on that fresh
data and hand due notifications to the dispatcher, then let the autoscaler decide. An
instance that dies wakes the loop at once, so a kill is seen in the next second rather
than at the next interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from alwayson.control.samples import database_samples
from alwayson.control.waiting import first_of, wait_event
from alwayson.metrics.model import Point, Sample
from alwayson.metrics.promql import QueryEngine, QueryError, Scoped
from alwayson.metrics.scraping import Scraper, Target
from alwayson.metrics.series import SeriesStore
from alwayson.observe.alerting import AlertBook, Notification
from alwayson.observe.notifying import Dispatcher
from alwayson.observe.reporting import Report, build_report
from alwayson.observe.rules import all_rules
from alwayson.runtime.base import Kind
from alwayson.scaling.hpa import Autoscaler, Decision
from alwayson.scaling.queries import autoscale_queries, measurement
from alwayson.spec.models import PlatformSpec
from alwayson.spec.observing import Metrics
from alwayson.util.errors import PermanentError, TemporaryError

if TYPE_CHECKING:
    from alwayson.control.ports import (
        DatabaseReports,
        DrillHistory,
        EventSink,
        LabelFilter,
        Scaler,
        Spawner,
        StateReader,
        StatusView,
    )
    from alwayson.runtime.base import Runtime
    from alwayson.store.base import StateStore
    from alwayson.util.clocks import Clock

log = logging.getLogger(__name__)

ALERTS_KEY = "observe/alerts"
DELIVERIES_KEY = "observe/deliveries"
SCALING_KEY = "observe/autoscalers"
DECISION_PREFIX = "observe/autoscale/"
KEEP_DELIVERIES = 500
COMPACT_EVERY = 60.0
_REQUESTS = "alwayson_gateway_requests_total"
_BUCKETS = "alwayson_gateway_request_duration_seconds_bucket"
SCRAPED_KINDS = {Kind.WORKLOAD: "instances", Kind.GATEWAY: "gateways", Kind.FRONTDOOR: "frontdoors"}
PROCESS_KINDS = {
    Kind.WORKLOAD: "instance",
    Kind.GATEWAY: "gateway",
    Kind.FRONTDOOR: "frontdoor",
    Kind.AGENT: "agent",
    Kind.ETCD: "etcd",
}


class Observatory:
    """Owned by the controller; ``run`` is one of its background tasks."""

    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        view: StateReader,
        runtime: Runtime,
        events: EventSink,
        spawner: Spawner,
        scaler: Scaler,
        statuses: StatusView,
        databases: DatabaseReports,
        drills: DrillHistory,
        state_dir: Path,
    ) -> None:
        self.store = store
        self.clock = clock
        self.view = view
        self.runtime = runtime
        self.events = events
        self.spawner = spawner
        self.scaler = scaler
        self.statuses = statuses
        self.databases = databases
        self.drills = drills
        self.state_dir = state_dir
        self.settings = Metrics()
        # Opened by ``load``: the files are the leader's, and a controller built ahead of
        # its term (api/sites.py) must not read them early nor hold them open.
        self.series = SeriesStore(None, self.settings.retention)
        self.engine = QueryEngine(self.series)
        self.scraper = Scraper()
        self.book = AlertBook()
        self.dispatcher = Dispatcher(on_attempt=self._attempted)
        self.deliveries: list[dict[str, Any]] = []
        self.autoscalers: dict[tuple[str, str], Autoscaler] = {}
        self._recorded: dict[tuple[str, str], float] = {}
        self.scrapes = 0
        self.last_scrape: dict[str, Any] = {}
        self._poke = asyncio.Event()
        self._evaluate_asked = False
        # Callers of ``refresh``: served by the next round that starts after they asked.
        self._waiters: list[asyncio.Future[float]] = []
        self._last_compact = 0.0
        self._last_alerts = 0.0
        self._traffic: list[dict[str, Any]] = []
        self._first_seen: dict[str, float] = {}
        self._site_misses: dict[str, int] = {}
        self._step_warned = False

    # ------------------------------------------------------------ lifecycle

    async def load(self) -> None:
        if self.series.path is None:
            self.series.close()
            self.series = SeriesStore(self.state_dir / "metrics", self.settings.retention)
            self.engine = QueryEngine(self.series)
        found = await self.store.get(ALERTS_KEY)
        if found is not None:
            self.book = AlertBook.from_json(found.value)
        found = await self.store.get(DELIVERIES_KEY)
        if found is not None:
            self.deliveries = list(found.value.get("attempts", []))
        found = await self.store.get(SCALING_KEY)
        self._scaling_state: dict[str, Any] = dict(found.value) if found else {}

    def poke(self) -> None:
        """Scrape and evaluate now (an instance died)."""
        self._evaluate_asked = True
        self._poke.set()

    async def refresh(self) -> float:
        """Scrape now and return the time of that round once it is in the store.

        For readers that need fresher data than the scrape interval gives (a release
        judged every second). The round is one that starts after this call; the wait is
        bounded (a round never takes longer than its scrape timeout and the bookkeeping).
        """
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._poke.set()
        spec = self.view.spec_or_none()
        bound = (spec.metrics.scrape_timeout if spec else self.settings.scrape_timeout) + 10.0
        try:
            at = await first_of(asyncio.shield(waiter), self.clock, bound)
            if at is None:
                raise TemporaryError(f"no metrics round within {bound:g}s", 1.0)
            return at
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def run(self) -> None:
        while True:
            spec = self.view.spec_or_none()
            interval = spec.metrics.scrape_interval if spec else self.settings.scrape_interval
            # What was asked before this round starts is served by it; a poke or a refresh
            # during the round asks for the next one.
            waiters, self._waiters = self._waiters, []
            poked, self._evaluate_asked = self._evaluate_asked, False
            self._poke.clear()
            failure: Exception = PermanentError("no spec loaded: nothing is scraped")
            if spec is not None:
                try:
                    await self.tick(spec, evaluate_now=poked, waiters=waiters)
                except (OSError, QueryError, PermanentError) as exc:
                    log.warning("monitoring cycle failed, will retry: %s", exc)
                    failure = TemporaryError(f"monitoring cycle failed: {exc}", interval)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(failure)
            await wait_event(self._poke, self.clock, interval)

    async def close(self) -> None:
        await self.dispatcher.close()
        await self.scraper.aclose()
        self.series.close()

    async def tick(
        self,
        spec: PlatformSpec,
        evaluate_now: bool = False,
        waiters: Sequence[asyncio.Future[float]] = (),
    ) -> float:
        """One round, stored at the time it returns; ``evaluate_now``: an instance died,
        evaluate the rules on this very scrape rather than when the evaluation interval is
        next due. ``waiters`` (callers of ``refresh``) learn that time as soon as the
        samples are stored, before rules and autoscaling (which may wait for the
        controller's lock that a waiter holds)."""
        now = self.clock.wall()
        self._apply_retention(spec)
        samples = await self.collect(spec, now)
        self.series.append(samples, now)
        self.scrapes += 1
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(now)
        if now - self._last_compact >= COMPACT_EVERY:
            self._last_compact = now
            self.series.compact(now)
        if evaluate_now or now - self._last_alerts >= spec.alerts.evaluation_interval * 0.9:
            self._last_alerts = now
            await self.evaluate(spec, now)
        await self.autoscale(spec, now)
        self._traffic = self._measure_traffic(spec, now)
        return now

    def _apply_retention(self, spec: PlatformSpec) -> None:
        """The spec's raw and rollup ages apply at once (compaction reads them); the rollup
        step is the store's layout on disk, fixed when the store was created."""
        wanted, have = spec.metrics.retention, self.series.retention
        if wanted == have:
            return
        if wanted.rollup_step != have.rollup_step:
            if not self._step_warned:
                self._step_warned = True
                log.warning(
                    "metrics.retention.rollup_step %gs differs from the store's %gs; it applies "
                    "to a new store (remove .alwayson/metrics to start one)",
                    wanted.rollup_step,
                    have.rollup_step,
                )
            wanted = wanted.model_copy(update={"rollup_step": have.rollup_step})
        self.series.retention = wanted

    # ------------------------------------------------------------ collecting

    def targets(self, spec: PlatformSpec) -> list[Target]:
        """Everything that should run (so a dead instance scrapes as ``up 0``), and what
        runs without being desired (still draining)."""
        specs = dict(self.view.state().desired)
        for status in self.runtime.statuses():
            specs.setdefault(status.spec.id, status.spec)
        out = []
        for inst in specs.values():
            job = SCRAPED_KINDS.get(inst.kind)
            if job is None:
                continue
            path = spec.metrics.path if inst.kind is Kind.WORKLOAD else "/metrics"
            labels = {"job": job, "instance": inst.id}
            if inst.kind is Kind.WORKLOAD:
                labels |= {"service": inst.service, "site": inst.site, "version": inst.version}
            else:
                labels |= {"gateway_site": inst.site}
            out.append(Target(f"http://{inst.host}:{inst.port}{path}", labels))
        return out

    async def collect(self, spec: PlatformSpec, now: float) -> list[Sample]:
        targets = self.targets(spec)
        self.scraper.timeout = spec.metrics.scrape_timeout
        scraped = await self.scraper.scrape_all(targets, now)
        samples = list(scraped)
        samples += self._process_samples()
        samples += self._platform_samples(spec, samples)
        samples += await self._database_samples(spec)
        ups = [s for s in scraped if s.name == "up"]
        self.last_scrape = {
            "at": now,
            "targets": len(targets),
            "up": sum(1 for s in ups if s.value == 1),
            "samples": len(samples),
        }
        return samples

    def _process_samples(self) -> list[Sample]:
        """CPU seconds and resident memory of every platform process, from the runtime."""
        usage = self.runtime.usage()
        out = []
        for status in self.runtime.statuses():
            inst = status.spec
            used = usage.get(inst.id)
            if used is None or inst.kind not in PROCESS_KINDS:
                continue
            labels = {
                "instance": inst.id,
                "service": inst.service,
                "site": inst.site,
                "version": inst.version,
                "kind": PROCESS_KINDS[inst.kind],
            }
            out.append(Sample("alwayson_process_cpu_seconds_total", labels, used.cpu_seconds))
            out.append(
                Sample(
                    "alwayson_process_resident_memory_bytes", dict(labels), float(used.rss_bytes)
                )
            )
        return out

    def _platform_samples(self, spec: PlatformSpec, scraped: list[Sample]) -> list[Sample]:
        view = self.statuses.status()
        out: list[Sample] = []
        counts: dict[tuple[str, str], int] = {}
        for row in view["instances"]:
            if row["kind"] != Kind.WORKLOAD.value or not row["desired"]:
                continue
            labels = {
                "instance": row["id"],
                "service": row["service"],
                "site": row["site"],
                "version": row["version"],
            }
            out.append(Sample("alwayson_instance_ready", labels, 1.0 if row["ready"] else 0.0))
            out.append(Sample("alwayson_instance_restarts_total", labels, float(row["restarts"])))
            key = (row["service"], row["site"])
            counts[key] = counts.get(key, 0) + (1 if row["pid"] else 0)
        for svc in spec.services:
            for site in spec.workload_sites:
                n = counts.get((svc.name, site.name), 0)
                out.append(
                    Sample("alwayson_instances", {"service": svc.name, "site": site.name}, n)
                )
        answering: dict[str, bool] = {}
        for sample in scraped:
            if sample.name == "up":
                where = sample.labels.get("site") or sample.labels.get("gateway_site") or ""
                answering[where] = answering.get(where, False) or sample.value == 1
        for site in spec.workload_sites:
            # Down only when nothing in the site answered two scrapes running (one lost
            # scrape, or a gateway restarting, is not a site down).
            misses = 0 if answering.get(site.name) else self._site_misses.get(site.name, 0) + 1
            self._site_misses[site.name] = misses
            up = 0.0 if misses >= 2 else 1.0
            out.append(Sample("alwayson_site_up", {"site": site.name}, up))
        with contextlib.suppress(OSError):
            usage = shutil.disk_usage(self.state_dir)
            for site in spec.sites:
                labels = {"site": site.name, "path": str(self.state_dir)}
                out.append(Sample("alwayson_disk_free_bytes", labels, float(usage.free)))
                out.append(Sample("alwayson_disk_size_bytes", labels, float(usage.total)))
        return out

    async def _database_samples(self, spec: PlatformSpec) -> list[Sample]:
        return await database_samples(spec, self.databases, self._first_seen, self.clock.wall())

    # ------------------------------------------------------------ alerts

    def last_round(self) -> float | None:
        at = self.last_scrape.get("at")
        return float(at) if at is not None else None

    def engine_for(self, keep: LabelFilter) -> QueryEngine:
        return QueryEngine(Scoped(self.series, keep), self.engine.lookback)

    def query(self, expr: str, at: float) -> list[Point]:
        got = self.engine.instant(expr, at)
        if isinstance(got, float):
            return [Point({}, got)]
        return got

    def rules(self, spec: PlatformSpec) -> list[Any]:
        return all_rules(spec.alerts, bool(spec.databases))

    async def save(self) -> None:
        await self.store.put(ALERTS_KEY, self.book.to_json())

    async def evaluate(self, spec: PlatformSpec, now: float) -> None:
        changes = self.book.evaluate(self.rules(spec), self.query, now)
        for change in changes:
            log.info("alert %s", change)
            if change.state in ("pending", "inactive"):
                continue
            await self.events.record_event(
                f"alert-{change.state}",
                change.name,
                change.summary or str(change),
                {"labels": change.labels, "value": change.value, "fingerprint": change.fingerprint},
            )
        self.dispatcher.external_url = f"http://{spec.controller.api}"
        for note in self.book.due_notifications(spec.notifications, spec.alerts, now):
            receiver = next(r for r in spec.notifications if r.name == note.receiver)
            task = self.dispatcher.send(note, receiver, now)
            task.add_done_callback(functools.partial(self._delivered, note))
        await self.save()

    def _delivered(self, note: Notification, task: asyncio.Task[bool]) -> None:
        """A notification that finally failed is due again at the group's next tick."""
        if task.cancelled() or task.exception() is not None or not task.result():
            self.book.mark_undelivered(note)

    def _attempted(self, attempt: dict[str, Any]) -> None:
        self.deliveries.append(attempt)
        del self.deliveries[:-KEEP_DELIVERIES]
        self.spawner.spawn(self.store.put(DELIVERIES_KEY, {"attempts": self.deliveries}))

    # ------------------------------------------------------------ autoscaling

    def _metric(self, expr: str, at: float) -> float | None:
        try:
            got = self.query(expr, at)
        except QueryError as exc:
            log.warning("query failed: %s: %s", expr, exc)
            return None
        return measurement([p.value for p in got])

    def scaling_metrics(self, service: str, site: str, window: float, at: float) -> dict[str, Any]:
        queries = autoscale_queries(service, site, window)
        return {name: self._metric(expr, at) for name, expr in queries.items()}

    async def autoscale(self, spec: PlatformSpec, now: float) -> None:
        view = self.statuses.status()
        for svc in spec.services:
            settings = svc.autoscale
            if settings is None or self.view.state().running_release(svc.name) is not None:
                continue
            for site in spec.workload_sites:
                key = (svc.name, site.name)
                scaler = self.autoscalers.get(key)
                if scaler is not None and scaler.settings != settings:
                    scaler = Autoscaler(settings, svc.name, site.name, scaler.state)
                elif scaler is None:
                    saved = self._scaling_state.get(f"{svc.name}@{site.name}")
                    scaler = (
                        Autoscaler.from_json(settings, saved)
                        if saved
                        else Autoscaler(settings, svc.name, site.name)
                    )
                self.autoscalers[key] = scaler
                if not scaler.due(now):
                    continue
                rows = [
                    r
                    for r in view["instances"]
                    if r["service"] == svc.name and r["site"] == site.name and r["desired"]
                ]
                current = len(rows)
                ready = sum(1 for r in rows if r["ready"])
                metrics = self.scaling_metrics(svc.name, site.name, settings.window, now)
                decision = scaler.decide(current, ready, metrics, now)
                await self._record(svc.name, site.name, decision, now)
                if decision.desired != current:
                    await self.scaler.autoscale(svc.name, site.name, decision.desired)
        await self.store.put(
            SCALING_KEY, {f"{s}@{site}": a.to_json() for (s, site), a in self.autoscalers.items()}
        )

    async def _record(self, service: str, site: str, decision: Decision, now: float) -> None:
        """Keep every change, and an unchanged decision about once a minute per service
        and site (not every cycle)."""
        key = (service, site)
        if not decision.changed and now - self._recorded.get(key, 0.0) < 60.0:
            return
        self._recorded[key] = now
        entry = {**decision.to_json(), "service": service, "site": site, "at": now}
        await self.store.put(f"{DECISION_PREFIX}{now:017.3f}-{service}-{site}", entry)

    async def history(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        found = await self.store.list_prefix(DECISION_PREFIX, limit=100_000)
        rows = [v.value for _, v in found if service in (None, v.value.get("service"))]
        return rows[-limit:]

    # ------------------------------------------------------------ reports

    async def report(self, kind: Literal["utilisation", "health"], since: float) -> Report:
        spec = self.view.spec()
        end = self.clock.wall()
        start = end - since
        events = await self.store.list_events(10_000, None)
        fired = [e.__dict__ for e in events if e.kind == "alert-firing" and start <= e.at <= end]
        return await asyncio.to_thread(
            build_report,
            kind,
            self.engine.range,
            [s.name for s in spec.workload_sites],
            [s.name for s in spec.services],
            start,
            end,
            {
                "availability": spec.alerts.availability_objective,
                "latency_p95": spec.alerts.latency_objective,
            },
            fired,
        )

    # ------------------------------------------------------------ views

    def alerts(self, now: float | None = None) -> list[dict[str, Any]]:
        return self.book.alerts(now if now is not None else self.clock.wall())

    def silence(self, matchers: dict[str, str], ends_at: float, comment: str, who: str) -> Any:
        return self.book.add_silence(matchers, ends_at, comment, who, self.clock.wall())

    def expire(self, ident: str) -> Any:
        return self.book.expire_silence(ident, self.clock.wall())

    def exposition(self, now: float) -> str:
        """The newest value of every series, in Prometheus text format (for federation)."""
        lines: list[str] = []
        seen: set[str] = set()
        for line in self.series.select(None, [], now - 300.0, now):
            if not line.points:
                continue
            name = line.labels.get("__name__", "")
            if name not in seen:
                seen.add(name)
                lines.append(f"# TYPE {name} untyped")
            labels = ",".join(
                f'{k}="{_escape(v)}"' for k, v in sorted(line.labels.items()) if k != "__name__"
            )
            at, value = line.points[-1]
            lines.append(f"{name}{{{labels}}} {_number(value)} {int(at * 1000)}")
        return "\n".join(lines) + "\n"

    def observed_view(self) -> dict[str, Any]:
        """What the dashboard shows from monitoring: traffic (measured at the last scrape),
        alerts, drills."""
        now = self.clock.wall()
        return {
            "traffic": self._traffic,
            "alerts": [a for a in self.alerts(now) if a.get("state") in ("firing", "pending")],
            "drills": self.drills.recent(),
            "scrape": self.last_scrape,
        }

    def _measure_traffic(self, spec: PlatformSpec, now: float) -> list[dict[str, Any]]:
        """Requests per second, error rate and p95 of every service in every site over the
        last 30 s: three grouped queries, not three per service and site."""
        rps = self._by_service_site(f"sum by (service, site) (rate({_REQUESTS}[30s]))", now)
        errors = self._by_service_site(
            f'sum by (service, site) (rate({_REQUESTS}{{code="5xx"}}[30s]))', now
        )
        p95 = self._by_service_site(
            f"histogram_quantile(0.95, sum by (service, site, le) (rate({_BUCKETS}[30s])))", now
        )
        traffic = []
        for site in spec.workload_sites:
            for svc in spec.services:
                key = (svc.name, site.name)
                rate = rps.get(key)
                traffic.append(
                    {
                        "site": site.name,
                        "service": svc.name,
                        "rps": rate,
                        "error_rate": errors.get(key, 0.0) / rate if rate else None,
                        "p95_seconds": p95.get(key),
                    }
                )
        return traffic

    def _by_service_site(self, expr: str, at: float) -> dict[tuple[str, str], float]:
        """The finite values of ``expr`` by (service, site); empty when it fails."""
        try:
            points = self.query(expr, at)
        except QueryError as exc:
            log.warning("query failed: %s: %s", expr, exc)
            return {}
        return {
            (p.labels.get("service", ""), p.labels.get("site", "")): p.value
            for p in points
            if math.isfinite(p.value)
        }


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
