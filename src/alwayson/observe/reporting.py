"""Utilisation and health reports: figures per site and service over a period, as JSON
and as one self-contained HTML page a manager can read.

Every figure comes from a PromQL range query (:data:`RangeQuery`, injected) on the
platform's own store; :func:`report_queries` holds the exact text. ``P`` is the period
(``end - start``), ``W`` the rate window of the plotted series (the step, at least 60 s):

- **requests and errors**: ``sum by (site, service, code) (increase(
  alwayson_gateway_requests_total[P]))`` at ``end``. Requests are all answers; errors
  the ``5xx`` ones. ``site`` is the backend's site; answers the gateway made with no
  backend at all have no site: they count for the service and the platform, not for a
  site's row.
- **availability** = share of answers that were not 5xx. Judged against
  ``objectives["availability"]`` (e.g. 0.999) per service (all its sites) and for the
  platform: *met* when at least the objective. The **error budget** is the 5xx answers
  the objective allows, ``(1 - objective) * requests``; *left* is the share of it not
  spent (negative: overspent).
- **latency**: ``histogram_quantile(q, sum by (site, service, le) (increase(
  alwayson_gateway_request_duration_seconds_bucket[P])))`` at ``end`` for q = 0.5, 0.95,
  0.99 (the same by ``service`` and overall for the p95 judged against
  ``objectives["latency_p95"]`` in seconds, when given).
- **requests per second**: average = requests / period; peak = the highest point of
  ``sum by (site, service) (rate(alwayson_gateway_requests_total[W]))``.
- **CPU** (cores) and **memory** (resident bytes) of a service in a site: the sum over its
  instances, ``sum by (site, service) (rate(alwayson_process_cpu_seconds_total{kind=
  "instance"}[W]))`` and ``sum by (site, service) (alwayson_process_resident_memory_bytes{
  kind="instance"})``; average and highest point. The platform's own processes
  (gateways, agents, etcd members) are the same with ``kind!="instance"``, by site.
- **readiness**: ``avg by (site, service) (alwayson_instance_ready)`` averaged over the
  period (share of instance-time ready) and the fewest ready, ``min`` of ``sum by (site,
  service) (alwayson_instance_ready)``; restarts, ``increase`` of
  ``alwayson_instance_restarts_total`` over ``P``.
- **sites**: ``max by (site) (alwayson_site_up)`` (share of the period up) and the lowest
  free disk share, ``min by (site) (alwayson_disk_free_bytes / alwayson_disk_size_bytes)``.
- **databases**: ``max by (db, site)`` of ``alwayson_db_up``, ``alwayson_db_primary`` (the
  role at ``end`` and how often it changed), ``alwayson_db_replication_lag_seconds`` and
  ``..._bytes`` (highest).

A query that returns nothing gives ``None`` figures, shown as "no data", never zero.
Everything here is pure but the plots (matplotlib, Agg, no pyplot state).
"""

from __future__ import annotations

import base64
import io
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import jinja2

from alwayson.metrics.model import Line

RangeQuery = Callable[[str, float, float, float], list[Line]]
"""A PromQL range query: ``(expr, start, end, step)`` → one :class:`Line` per series."""

ReportKind = Literal["utilisation", "health"]

REQUESTS = "alwayson_gateway_requests_total"
BUCKETS = "alwayson_gateway_request_duration_seconds_bucket"
CPU = "alwayson_process_cpu_seconds_total"
MEMORY = "alwayson_process_resident_memory_bytes"
MIN_WINDOW = 60.0
POINTS = 240  # points per plotted series, about
# Queries evaluated once, at the end of the period, over the whole period.
AT_END = ("requests", "p50", "p95", "p99", "service_p95", "platform_p95", "restarts")


def promql_range(seconds: float) -> str:
    """A PromQL range in whole units: ``60s``, ``86400s``, ``1500ms``."""
    millis = max(1, round(seconds * 1000))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def report_queries(period: float, window: float) -> dict[str, str]:
    """The PromQL of every figure, by name, for a period and a rate window (seconds)."""
    p, w = promql_range(period), promql_range(window)

    def quantile(q: float, by: str, over: str) -> str:
        return f"histogram_quantile({q}, sum by ({by}) (increase({BUCKETS}[{over}])))"

    return {
        "requests": f"sum by (site, service, code) (increase({REQUESTS}[{p}]))",
        "p50": quantile(0.5, "site, service, le", p),
        "p95": quantile(0.95, "site, service, le", p),
        "p99": quantile(0.99, "site, service, le", p),
        "service_p95": quantile(0.95, "service, le", p),
        "platform_p95": quantile(0.95, "le", p),
        "restarts": f"sum by (site, service) (increase(alwayson_instance_restarts_total[{p}]))",
        "rps": f"sum by (site, service) (rate({REQUESTS}[{w}]))",
        "errors": f'sum by (site, service) (rate({REQUESTS}{{code="5xx"}}[{w}]))',
        "latency": (f"histogram_quantile(0.95, sum by (site, service, le) (rate({BUCKETS}[{w}])))"),
        "cpu": f'sum by (site, service) (rate({CPU}{{kind="instance"}}[{w}]))',
        "memory": f'sum by (site, service) ({MEMORY}{{kind="instance"}})',
        "ready": "sum by (site, service) (alwayson_instance_ready)",
        "readiness": "avg by (site, service) (alwayson_instance_ready)",
        "platform_cpu": f'sum by (site) (rate({CPU}{{kind!="instance"}}[{w}]))',
        "platform_memory": f'sum by (site) ({MEMORY}{{kind!="instance"}})',
        "site_up": "max by (site) (alwayson_site_up)",
        "disk_free": "min by (site) (alwayson_disk_free_bytes / alwayson_disk_size_bytes)",
        "db_up": "max by (db, site) (alwayson_db_up)",
        "db_primary": "max by (db, site) (alwayson_db_primary)",
        "db_lag_seconds": "max by (db, site) (alwayson_db_replication_lag_seconds)",
        "db_lag_bytes": "max by (db, site) (alwayson_db_replication_lag_bytes)",
    }


PLOTTED = ("rps", "errors", "latency", "cpu", "memory")

# -- the figures --------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One service in one site. None: no data."""

    site: str
    service: str
    requests: float | None = None
    errors: float | None = None
    error_share: float | None = None
    availability: float | None = None
    rps_avg: float | None = None
    rps_peak: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    cpu_cores_avg: float | None = None
    cpu_cores_max: float | None = None
    memory_bytes_avg: float | None = None
    memory_bytes_max: float | None = None
    ready_share: float | None = None
    ready_min: float | None = None
    restarts: float | None = None


@dataclass(frozen=True)
class Availability:
    """Requests and 5xx answers of a service (all sites) or of the whole platform, judged
    against the objectives."""

    name: str
    requests: float | None = None
    errors: float | None = None
    availability: float | None = None
    objective: float | None = None
    met: bool | None = None
    allowed_errors: float | None = None
    budget_left: float | None = None
    p95: float | None = None
    latency_objective: float | None = None
    latency_met: bool | None = None


@dataclass(frozen=True)
class SiteHealth:
    site: str
    up_share: float | None = None
    disk_free_min: float | None = None
    platform_cpu_cores_avg: float | None = None
    platform_cpu_cores_max: float | None = None
    platform_memory_bytes_max: float | None = None


@dataclass(frozen=True)
class DatabaseHealth:
    db: str
    site: str
    role: str | None = None
    role_changes: int | None = None
    up_share: float | None = None
    lag_seconds_max: float | None = None
    lag_bytes_max: float | None = None


@dataclass(frozen=True)
class FiredAlert:
    at: float | None
    name: str
    severity: str = ""
    site: str = ""
    service: str = ""
    summary: str = ""


_T = TypeVar("_T")


def _from_fields(cls: type[_T], data: Mapping[str, Any]) -> _T:
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def _plain(item: Any) -> dict[str, Any]:
    return {f.name: getattr(item, f.name) for f in fields(item)}


@dataclass(frozen=True)
class Report:
    """A utilisation or health report; :meth:`to_json` for the API, :func:`render_html`
    for people."""

    kind: ReportKind
    start: float
    end: float
    step: float
    sites: list[str]
    services: list[str]
    objectives: dict[str, float]
    verdict: str
    no_data: bool
    platform: Availability
    availability: list[Availability]
    rows: list[Row]
    site_health: list[SiteHealth]
    databases: list[DatabaseHealth]
    alerts: list[FiredAlert]
    series: dict[str, list[Line]] = field(default_factory=dict)
    queries: dict[str, str] = field(default_factory=dict)
    title: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "title": self.title,
            "start": self.start,
            "end": self.end,
            "step": self.step,
            "sites": list(self.sites),
            "services": list(self.services),
            "objectives": dict(self.objectives),
            "verdict": self.verdict,
            "no_data": self.no_data,
            "platform": _plain(self.platform),
            "availability": [_plain(a) for a in self.availability],
            "rows": [_plain(r) for r in self.rows],
            "site_health": [_plain(s) for s in self.site_health],
            "databases": [_plain(d) for d in self.databases],
            "alerts": [_plain(a) for a in self.alerts],
            "series": {
                name: [
                    {"labels": dict(ln.labels), "points": [[t, v] for t, v in ln.points]}
                    for ln in lines
                ]
                for name, lines in self.series.items()
            },
            "queries": dict(self.queries),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Report:
        return cls(
            kind=data["kind"],
            title=str(data.get("title", "")),
            start=float(data["start"]),
            end=float(data["end"]),
            step=float(data["step"]),
            sites=list(data["sites"]),
            services=list(data["services"]),
            objectives=dict(data.get("objectives", {})),
            verdict=str(data["verdict"]),
            no_data=bool(data["no_data"]),
            platform=_from_fields(Availability, data["platform"]),
            availability=[_from_fields(Availability, a) for a in data["availability"]],
            rows=[_from_fields(Row, r) for r in data["rows"]],
            site_health=[_from_fields(SiteHealth, s) for s in data["site_health"]],
            databases=[_from_fields(DatabaseHealth, d) for d in data["databases"]],
            alerts=[_from_fields(FiredAlert, a) for a in data["alerts"]],
            series={
                name: [
                    Line(dict(ln["labels"]), [(float(t), float(v)) for t, v in ln["points"]])
                    for ln in lines
                ]
                for name, lines in data.get("series", {}).items()
            },
            queries=dict(data.get("queries", {})),
        )


# -- building ---------------------------------------------------------------------------


def _finite(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(t, v) for t, v in points if math.isfinite(v)]


def _group(lines: Sequence[Line], *keys: str) -> dict[tuple[str, ...], list[tuple[float, float]]]:
    """Finite points by the values of ``keys`` (missing labels are ``""``)."""
    out: dict[tuple[str, ...], list[tuple[float, float]]] = {}
    for line in lines:
        key = tuple(line.labels.get(k, "") for k in keys)
        out.setdefault(key, []).extend(_finite(line.points))
    for points in out.values():
        points.sort()
    return {k: v for k, v in out.items() if v}


def _avg(points: Sequence[tuple[float, float]] | None) -> float | None:
    return sum(v for _, v in points) / len(points) if points else None


def _max(points: Sequence[tuple[float, float]] | None) -> float | None:
    return max(v for _, v in points) if points else None


def _min(points: Sequence[tuple[float, float]] | None) -> float | None:
    return min(v for _, v in points) if points else None


def _last(points: Sequence[tuple[float, float]] | None) -> float | None:
    return points[-1][1] if points else None


def _share(part: float | None, whole: float | None) -> float | None:
    return None if part is None or not whole else part / whole


def _judge(
    name: str,
    requests: float | None,
    errors: float | None,
    p95: float | None,
    objectives: Mapping[str, float],
) -> Availability:
    objective = objectives.get("availability")
    latency_objective = objectives.get("latency_p95")
    availability = None if not requests else 1 - (errors or 0.0) / requests
    met = allowed = left = None
    if availability is not None and objective is not None:
        met = availability >= objective
        allowed = (1 - objective) * (requests or 0.0)
        left = 1 - (errors or 0.0) / allowed if allowed > 0 else None
    latency_met = None
    if p95 is not None and latency_objective is not None:
        latency_met = p95 <= latency_objective
    return Availability(
        name, requests, errors, availability, objective, met, allowed, left, p95,
        latency_objective, latency_met,
    )  # fmt: skip


def _alert(data: Mapping[str, Any]) -> FiredAlert:
    """One fired alert from what the caller has: an alert view (``labels``, ``annotations``,
    ``firedAt``…) or a stored event (``at``, ``subject``, ``message``, ``data``)."""
    extra = data.get("data")
    labels = data.get("labels") or (extra.get("labels") if isinstance(extra, Mapping) else {})
    labels = labels or {}
    annotations = data.get("annotations") or {}
    at = next(
        (data[k] for k in ("firedAt", "startsAt", "activeAt", "at") if data.get(k) is not None),
        None,
    )
    name = labels.get("alertname") or data.get("name") or data.get("rule") or data.get("subject")
    return FiredAlert(
        at=float(at) if isinstance(at, int | float) else None,
        name=str(name or "?"),
        severity=str(labels.get("severity") or data.get("severity") or ""),
        site=str(labels.get("site", "")),
        service=str(labels.get("service", "")),
        summary=str(annotations.get("summary") or data.get("summary") or data.get("message") or ""),
    )


def auto_step(period: float) -> float:
    """About :data:`POINTS` points over the period, in whole seconds, at least 15 s."""
    return float(max(15, math.ceil(period / POINTS)))


def build_report(
    kind: ReportKind,
    query: RangeQuery,
    sites: list[str],
    services: list[str],
    start: float,
    end: float,
    objectives: Mapping[str, float],
    alerts_fired: list[dict[str, Any]],
    *,
    step: float | None = None,
    title: str = "",
) -> Report:
    """Query, compute and judge: the report of ``kind`` for every site and service
    between ``start`` and ``end`` (wall seconds). ``objectives``: ``availability`` (a
    share, e.g. 0.999) and optionally ``latency_p95`` (seconds)."""
    if end <= start:
        raise ValueError("a report needs end after start")
    period = end - start
    step = step or auto_step(period)
    window = max(step, MIN_WINDOW)
    texts = report_queries(period, window)
    got = {
        name: (query(text, end, end, period) if name in AT_END else query(text, start, end, step))
        for name, text in texts.items()
    }
    by_row = {
        name: _group(got[name], "site", "service")
        for name in ("rps", "errors", "cpu", "memory", "ready", "readiness", "restarts")
    }
    quantiles = {q: _group(got[q], "site", "service") for q in ("p50", "p95", "p99")}
    counts = _group(got["requests"], "site", "service", "code")

    def count(site: str | None, service: str | None, code: str | None = None) -> float | None:
        picked = [
            _last(points)
            for (s, svc, c), points in counts.items()
            if site in (None, s) and service in (None, svc) and code in (None, c)
            and (service is not None or svc in services)
        ]  # fmt: skip
        values = [v for v in picked if v is not None]
        return sum(values) if values else None

    def any_count(site: str | None, service: str | None) -> bool:
        return any(site in (None, s) and service in (None, svc) for s, svc, _ in counts)

    rows: list[Row] = []
    for site in sites:
        for service in services:
            key = (site, service)
            requests = count(site, service)
            errors = (count(site, service, "5xx") or 0.0) if any_count(site, service) else None
            rows.append(
                Row(
                    site=site,
                    service=service,
                    requests=requests,
                    errors=errors,
                    error_share=_share(errors, requests),
                    availability=None if not requests else 1 - (errors or 0.0) / requests,
                    rps_avg=None if requests is None else requests / period,
                    rps_peak=_max(by_row["rps"].get(key)),
                    p50=_last(quantiles["p50"].get(key)),
                    p95=_last(quantiles["p95"].get(key)),
                    p99=_last(quantiles["p99"].get(key)),
                    cpu_cores_avg=_avg(by_row["cpu"].get(key)),
                    cpu_cores_max=_max(by_row["cpu"].get(key)),
                    memory_bytes_avg=_avg(by_row["memory"].get(key)),
                    memory_bytes_max=_max(by_row["memory"].get(key)),
                    ready_share=_avg(by_row["readiness"].get(key)),
                    ready_min=_min(by_row["ready"].get(key)),
                    restarts=_last(by_row["restarts"].get(key)),
                )
            )

    service_p95 = _group(got["service_p95"], "service")
    availability = []
    for service in services:
        has = any_count(None, service)
        availability.append(
            _judge(
                service,
                count(None, service),
                (count(None, service, "5xx") or 0.0) if has else None,
                _last(service_p95.get((service,))),
                objectives,
            )
        )
    has_any = any(svc in services for _, svc, _ in counts)
    platform = _judge(
        "platform",
        count(None, None),
        (count(None, None, "5xx") or 0.0) if has_any else None,
        _last(_group(got["platform_p95"]).get(())),
        objectives,
    )

    per_site = {
        name: _group(got[name], "site")
        for name in ("site_up", "disk_free", "platform_cpu", "platform_memory")
    }
    site_health = [
        SiteHealth(
            site=site,
            up_share=_avg(per_site["site_up"].get((site,))),
            disk_free_min=_min(per_site["disk_free"].get((site,))),
            platform_cpu_cores_avg=_avg(per_site["platform_cpu"].get((site,))),
            platform_cpu_cores_max=_max(per_site["platform_cpu"].get((site,))),
            platform_memory_bytes_max=_max(per_site["platform_memory"].get((site,))),
        )
        for site in sites
    ]

    per_db = {
        name: _group(got[name], "db", "site")
        for name in ("db_up", "db_primary", "db_lag_seconds", "db_lag_bytes")
    }
    databases = []
    for db, site in sorted(set().union(*(set(v) for v in per_db.values()))):
        roles = per_db["db_primary"].get((db, site))
        last_role = _last(roles)
        databases.append(
            DatabaseHealth(
                db=db,
                site=site,
                role=None if last_role is None else "primary" if last_role >= 1 else "standby",
                role_changes=None
                if not roles
                else sum(1 for a, b in itertools.pairwise(roles) if a[1] != b[1]),
                up_share=_avg(per_db["db_up"].get((db, site))),
                lag_seconds_max=_max(per_db["db_lag_seconds"].get((db, site))),
                lag_bytes_max=_max(per_db["db_lag_bytes"].get((db, site))),
            )
        )

    alerts = sorted((_alert(a) for a in alerts_fired), key=lambda a: (a.at or 0.0, a.name))
    series = {
        name: [
            Line({"site": s, "service": svc}, points)
            for (s, svc), points in sorted(by_row[name].items())
            if s in sites and svc in services
        ]
        for name in ("rps", "errors", "cpu", "memory")
    }
    series["latency"] = [
        Line({"site": s, "service": svc}, points)
        for (s, svc), points in sorted(_group(got["latency"], "site", "service").items())
        if s in sites and svc in services
    ]
    no_data = (
        not has_any
        and not any(series.values())
        and not any(r.ready_share is not None for r in rows)
    )
    report = Report(
        kind=kind,
        title=title,
        start=start,
        end=end,
        step=step,
        sites=list(sites),
        services=list(services),
        objectives=dict(objectives),
        verdict="",
        no_data=no_data,
        platform=platform,
        availability=availability,
        rows=rows,
        site_health=site_health,
        databases=databases,
        alerts=alerts,
        series=series,
        queries=texts,
    )
    return _with_verdict(report)


# -- words ---------------------------------------------------------------------------------


def percent(value: float | None, floor: bool = False) -> str:
    """``99.97%``; ``floor`` rounds down, so an availability is never overstated."""
    if value is None:
        return "no data"
    if value == 1:
        return "100%"
    if floor:
        return f"{math.floor(value * 10000 + 1e-6) / 100:.2f}%"  # 0.9999 * 10000 < 9999
    if 0 < value < 0.0001:
        return "<0.01%"
    return f"{value * 100:.2f}%"


def objective_text(value: float) -> str:
    return f"{value * 100:g}%"


def count_text(value: float | None) -> str:
    return "no data" if value is None else f"{round(value):,}"


def seconds_text(value: float | None) -> str:
    if value is None:
        return "no data"
    return f"{value * 1000:.3g}ms" if value < 1 else f"{value:.3g}s"


def bytes_text(value: float | None) -> str:
    if value is None:
        return "no data"
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


def number_text(value: float | None) -> str:
    return "no data" if value is None else f"{value:.3g}"


def period_text(seconds: float) -> str:
    minutes = round(seconds / 60)
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{mins}m" if mins else ""]
    return "".join(parts) or f"{seconds:.0f}s"


def time_text(at: float | None) -> str:
    if at is None:
        return "?"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _availability_sentence(a: Availability) -> str:
    if a.availability is None:
        return "Availability: no data (no request was answered)."
    shown = percent(a.availability, floor=True)
    if a.objective is None:
        return f"Availability {shown} (no objective set)."
    text = f"Availability {shown} against {objective_text(a.objective)}: "
    text += "met" if a.met else "missed"
    if a.budget_left is not None:
        if a.budget_left >= 0:
            text += f", {percent(a.budget_left, floor=True)} of the error budget left"
        else:
            text += f", {1 - a.budget_left:.1f} times the error budget spent"
    return text + "."


def _peak(rows: Sequence[Row], attr: str) -> tuple[float, Row] | None:
    found = [(getattr(r, attr), r) for r in rows if getattr(r, attr) is not None]
    return max(found, key=lambda x: x[0]) if found else None


def _with_verdict(report: Report) -> Report:
    window = f"between {time_text(report.start)} and {time_text(report.end)}"
    if report.no_data:
        verdict = (
            f"No data {window}: no request, CPU, memory or readiness figure was recorded "
            "for these sites and services."
        )
        return _replace_verdict(report, verdict)
    p = report.platform
    sentences: list[str] = []
    health = [_availability_sentence(p)]
    if p.requests:
        health.append(f"{count_text(p.requests)} requests, {count_text(p.errors)} answered 5xx.")
    if p.p95 is not None:
        judged = ""
        if p.latency_objective is not None:
            result = "met" if p.latency_met else "missed"
            judged = f" (objective {seconds_text(p.latency_objective)}: {result})"
        health.append(f"p95 latency {seconds_text(p.p95)}{judged}.")
    missed = [a for a in report.availability if a.met is False]
    if missed:
        names = ", ".join(f"{a.name} {percent(a.availability, floor=True)}" for a in missed)
        health.append(f"Below objective: {names}.")
    fired = len(report.alerts)
    critical = sum(1 for a in report.alerts if a.severity == "critical")
    if fired:
        plural = "alert" if fired == 1 else "alerts"
        health.append(f"{fired} {plural} fired ({critical} critical).")
    else:
        health.append("No alert fired.")
    restarts = sum(r.restarts or 0 for r in report.rows)
    if restarts >= 1:
        health.append(f"{count_text(restarts)} instance restarts.")
    changes = sum(d.role_changes or 0 for d in report.databases) // 2
    if changes:
        health.append(f"Database primaries changed {changes} time(s).")

    usage: list[str] = []
    rps = _peak(report.rows, "rps_peak")
    if p.requests is not None:
        text = f"Over {period_text(report.end - report.start)}, {count_text(p.requests)} requests"
        if rps:
            text += f" (peak {number_text(rps[0])}/s: {rps[1].service} in {rps[1].site})"
        usage.append(text + ".")
    cpu = _peak(report.rows, "cpu_cores_max")
    if cpu:
        usage.append(
            f"CPU peaked at {number_text(cpu[0])} cores ({cpu[1].service} in {cpu[1].site})."
        )
    memory = _peak(report.rows, "memory_bytes_max")
    if memory:
        usage.append(
            f"Memory peaked at {bytes_text(memory[0])} ({memory[1].service} in {memory[1].site})."
        )
    if not usage:
        usage.append("No CPU, memory or request figure was recorded.")

    sentences = health if report.kind == "health" else [*usage, health[0]]
    return _replace_verdict(report, " ".join(sentences))


def _replace_verdict(report: Report, verdict: str) -> Report:
    return replace(report, verdict=verdict)


# -- HTML ----------------------------------------------------------------------------------

_PLOT_TITLES = {
    "rps": ("Requests per second", 1.0),
    "errors": ("5xx answers per second", 1.0),
    "latency": ("p95 latency (ms)", 1000.0),
    "cpu": ("CPU (cores)", 1.0),
    "memory": ("Memory (MiB)", 1 / 1024**2),
}


def _plot(report: Report, name: str) -> str | None:
    """One PNG data URI: a panel per site, a line per service; None without data."""
    lines = report.series.get(name) or []
    if not any(ln.points for ln in lines):
        return None
    # matplotlib is imported here only: it costs 0.3 s, which every controller start paid.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    title, scale = _PLOT_TITLES[name]
    figure = Figure(figsize=(4.2 * max(1, len(report.sites)) + 1.8, 3.0), dpi=96)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, max(1, len(report.sites)), sharey=True, squeeze=False)[0]
    colours = {svc: f"C{i % 10}" for i, svc in enumerate(report.services)}
    for ax, site in zip(axes, report.sites, strict=False):
        for line in lines:
            if line.labels.get("site") != site or not line.points:
                continue
            times = [datetime.fromtimestamp(t, UTC) for t, _ in line.points]
            values = [v * scale for _, v in line.points]
            service = line.labels.get("service", "")
            ax.plot(times, values, label=service, color=colours.get(service), linewidth=1.2)
        ax.set_title(site, fontsize=10)
        locator = AutoDateLocator()  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0].set_ylabel(title, fontsize=9)
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=False):
            handles.setdefault(label, handle)
    if handles:
        figure.legend(
            list(handles.values()), list(handles), loc="center right", fontsize=8, frameon=False
        )
    figure.subplots_adjust(left=0.07, right=0.86, bottom=0.18, top=0.86, wspace=0.08)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("alwayson.observe", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        percent=percent,
        availability=lambda v: percent(v, floor=True),
        objective=objective_text,
        count=count_text,
        seconds=seconds_text,
        bytes=bytes_text,
        number=number_text,
        time=time_text,
        period=period_text,
    )
    return env


def render_html(report: Report) -> str:
    """The report as one HTML page: verdict, tables, plots as embedded PNGs; no link
    to anything outside the page."""
    order = PLOTTED
    if report.kind == "utilisation":
        order = ("cpu", "memory", "rps", "errors", "latency")
    plots = [(_PLOT_TITLES[name][0], _plot(report, name)) for name in order]
    template = _environment().get_template("report.html.j2")
    return template.render(report=report, plots=plots, heading=_heading(report))


def _heading(report: Report) -> str:
    kind = "Utilisation report" if report.kind == "utilisation" else "Health report"
    return f"{kind}: {report.title}" if report.title else kind
