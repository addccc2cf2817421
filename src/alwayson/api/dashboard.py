"""The operator's dashboard: one page at ``/`` and the one JSON document it polls.

The page is static HTML, CSS and vanilla JavaScript shipped inside the package (nothing
from a CDN, so it works with no internet). It loads without the token, asks for it, keeps
it in ``sessionStorage`` and polls ``GET /api/v1/dashboard`` every second with
``Authorization: Bearer …``. That document is built by the pure ``dashboard_view`` from
what the controller already holds: its status, the databases' reports, the releases in
progress and, once monitoring provides it, ``controller.observed_view()`` (traffic, alerts,
drills). Whatever is missing is sent as ``None`` so the page can say "no data yet" rather
than show a misleading zero.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from alwayson.api.schemas import ERROR_ANSWERS
from alwayson.control.databases import STALE_AFTER
from alwayson.util.replication import slot_name

if TYPE_CHECKING:
    from alwayson.control.controller import Controller

log = logging.getLogger("alwayson.dashboard")

STATIC = Path(__file__).resolve().parent / "static"
OBSERVED_TTL = 1.0  # monitoring changes once per scrape; several open pages share one read
RECENT_DRILLS = 10
ACTIVE_RELEASE_PHASES = ("progressing", "paused", "rolling-back")
SEVERITY_ORDER = {"critical": 0, "page": 0, "warning": 1, "info": 2}
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Health(StrEnum):
    """How something is doing, worst last; the page shows the word, not only a colour."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    CRITICAL = "critical"


class InstanceState(StrEnum):
    READY = "ready"
    STARTING = "starting"
    NOT_READY = "not ready"
    STOPPING = "stopping"
    DOWN = "down"
    PENDING = "pending"


TONES = {
    InstanceState.READY: "ok",
    InstanceState.STARTING: "warn",
    InstanceState.STOPPING: "warn",
    InstanceState.PENDING: "warn",
    InstanceState.NOT_READY: "bad",
    InstanceState.DOWN: "bad",
}


def _worst(*levels: Health) -> Health:
    order = [Health.UNKNOWN, Health.HEALTHY, Health.DEGRADED, Health.CRITICAL]
    return max(levels, key=order.index, default=Health.UNKNOWN)


# ------------------------------------------------------------------ the pure view


def instance_state(row: Mapping[str, Any]) -> InstanceState:
    """One word for an instance row of ``Controller.status()``."""
    if row.get("ready"):
        return InstanceState.READY
    phase = row.get("phase")
    if phase == "starting":
        return InstanceState.STARTING
    if phase == "unready":
        return InstanceState.NOT_READY
    if phase == "stopping":
        return InstanceState.STOPPING
    if row.get("failures") or row.get("last_exit") or row.get("start_failure"):
        return InstanceState.DOWN  # crashed; the controller restarts it after its backoff
    return InstanceState.PENDING


def _instance(row: Mapping[str, Any]) -> dict[str, Any]:
    state = instance_state(row)
    ident = str(row["id"])
    details = []
    if row.get("start_failure"):
        details.append(f"start failed: {row['start_failure']}")
    if row.get("last_exit") and state is not InstanceState.READY:
        details.append(f"last exit: {row['last_exit']}")
    elif row.get("last_exit"):
        details.append(f"was: {row['last_exit']}")
    if state is InstanceState.NOT_READY and row.get("last_probe"):
        details.append(f"probe: {row['last_probe']}")
    if not row.get("desired", True):
        details.append("not in the desired state: being removed")
    return {
        "id": ident,
        "kind": row.get("kind", "workload"),
        "service": row.get("service"),
        "site": row.get("site"),
        "version": row.get("version"),
        "ordinal": ident.rsplit("-", 1)[-1] if row.get("kind") == "workload" else ident,
        "state": state.value,
        "tone": TONES[state],
        "pid": row.get("pid"),
        "address": row.get("address"),
        "restarts": int(row.get("restarts") or 0),
        "started_at": row.get("started_at"),
        "desired": bool(row.get("desired", True)),
        "detail": "; ".join(details),
    }


def _traffic_index(observed: Mapping[str, Any] | None) -> dict[tuple[str, str], dict[str, Any]]:
    if observed is None:
        return {}
    out = {}
    for row in observed.get("traffic") or []:
        out[(str(row.get("site")), str(row.get("service")))] = {
            "rps": row.get("rps"),
            "error_rate": row.get("error_rate"),
            "p95_seconds": row.get("p95_seconds"),
        }
    return out


def _combined(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Traffic of one service over its sites: rates add, the error rate is weighted by
    requests, and the p95 is the worst site's (quantiles do not add)."""
    known = [r for r in rows if r.get("rps") is not None]
    if not known:
        return None
    rps = sum(float(r["rps"]) for r in known)
    weighted = [(float(r["rps"]), r.get("error_rate")) for r in known]
    errors = [rate * float(e) for rate, e in weighted if e is not None]
    p95s = [float(r["p95_seconds"]) for r in known if r.get("p95_seconds") is not None]
    return {
        "rps": rps,
        "error_rate": (sum(errors) / rps) if rps and errors else (0.0 if errors else None),
        "p95_seconds": max(p95s) if p95s else None,
    }


def _versions(instances: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    counts: dict[str, list[int]] = {}
    for inst in instances:
        total, ready = counts.setdefault(str(inst["version"]), [0, 0])
        counts[str(inst["version"])] = [total + 1, ready + (inst["state"] == "ready")]
    return [{"version": v, "instances": n, "ready": r} for v, (n, r) in sorted(counts.items())]


def _site_health(workloads: Sequence[Mapping[str, Any]], others: Sequence[Any]) -> Health:
    desired = [i for i in [*workloads, *others] if i["desired"]]
    if not desired:
        return Health.UNKNOWN
    ready = [i for i in desired if i["state"] == "ready"]
    wanted = [i for i in workloads if i["desired"]]
    if wanted and not any(i["state"] == "ready" for i in wanted):
        return Health.CRITICAL
    return Health.HEALTHY if len(ready) == len(desired) else Health.DEGRADED


def _sites(status: Mapping[str, Any], observed: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    traffic = _traffic_index(observed)
    rows = [_instance(r) for r in status.get("instances") or []]
    names = [str(s["name"]) for s in status.get("services") or []]
    out = []
    for site in status.get("sites") or []:
        name = str(site["name"])
        mine = [r for r in rows if r["site"] == name]
        workloads = [r for r in mine if r["kind"] == "workload"]
        others = [r for r in mine if r["kind"] != "workload"]
        services = []
        for service in names if not site.get("witness") else []:
            instances = [r for r in workloads if r["service"] == service]
            desired = [r for r in instances if r["desired"]]
            ready = sum(1 for r in desired if r["state"] == "ready")
            services.append(
                {
                    "name": service,
                    "versions": _versions(instances),
                    "desired": len(desired),
                    "ready": ready,
                    "health": (
                        Health.UNKNOWN
                        if not desired
                        else Health.CRITICAL
                        if ready == 0
                        else Health.HEALTHY
                        if ready == len(desired)
                        else Health.DEGRADED
                    ).value,
                    "traffic": traffic.get((name, service)),
                    "instances": instances,
                }
            )
        out.append(
            {
                "name": name,
                "witness": bool(site.get("witness")),
                "subnet": site.get("subnet", ""),
                "desired": int(site.get("desired") or 0),
                "ready": int(site.get("ready") or 0),
                "health": _site_health(workloads, others).value,
                "services": services,
                "components": others,
            }
        )
    return out


def _services(
    status: Mapping[str, Any], observed: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    rows = list((observed or {}).get("traffic") or [])
    out = []
    for svc in status.get("services") or []:
        name = str(svc["name"])
        out.append(
            {
                "name": name,
                "version": svc.get("version"),
                "release": svc.get("release"),
                "desired": int(svc.get("desired") or 0),
                "ready": int(svc.get("ready") or 0),
                "traffic": _combined([r for r in rows if r.get("service") == name]),
            }
        )
    return out


def _database(db: Mapping[str, Any]) -> dict[str, Any]:
    reports = list(db.get("sites") or [])
    lease = db.get("lease") or {}
    primary = next((r for r in reports if r.get("role") == "primary" and not r.get("stale")), None)
    sites = []
    for report in reports:
        site = str(report.get("site"))
        row: dict[str, Any] = {
            "site": site,
            "role": report.get("role") or "unknown",
            "stale": bool(report.get("stale")),
            "pid": report.get("pid"),
            "writable": report.get("writable"),
            "alert": report.get("alert") or "",
            "verdict": report.get("verdict") or "",
            "lag_bytes": None,
            "lag_seconds": None,
            "sync_state": None,
            "replication": None,
        }
        if row["role"] == "standby" and primary is not None:
            stream = next(
                (
                    r
                    for r in primary.get("replication") or []
                    if r.get("standby") == slot_name(site)
                ),
                None,
            )
            if stream is None:
                row["replication"] = "not streaming"
            else:
                row["replication"] = stream.get("state")
                row["sync_state"] = stream.get("sync_state")
                row["lag_bytes"] = stream.get("lag_bytes")
                row["lag_seconds"] = stream.get("lag_seconds")
        sites.append(row)
    alerts = [str(a) for a in db.get("alerts") or []]
    problems = [] if primary is not None and lease.get("holder") else ["no primary"]
    problems += alerts
    problems += [f"no report from {s['site']} for {STALE_AFTER:g} s" for s in sites if s["stale"]]
    problems += [
        f"{s['site']} not streaming"
        for s in sites
        if s["role"] == "standby" and primary is not None and s["replication"] != "streaming"
    ]
    if not any(s["role"] == "standby" for s in sites):
        problems.append("no standby")
    health = Health.HEALTHY
    if primary is None or not lease.get("holder"):
        health = Health.CRITICAL
    elif problems:
        health = Health.DEGRADED
    return {
        "name": db.get("name"),
        "replication": db.get("replication"),
        "primary_site": db.get("primary_site"),
        "lease_holder": lease.get("holder"),
        "epoch": lease.get("epoch"),
        "sync_standby": lease.get("sync_standby"),
        "lease_expires_in": db.get("lease_expires_in"),
        "pending_request": (db.get("pending_request") or {}).get("op"),
        "alerts": alerts,
        "problems": problems,
        "health": health.value,
        "sites": sites,
    }


def _release(release: Mapping[str, Any]) -> dict[str, Any]:
    stages = list(release.get("stages") or [])
    index = int(release.get("stage") or 0)
    current = stages[min(index, len(stages) - 1)] if stages else {}
    return {
        "service": release.get("service"),
        "id": release.get("id"),
        "strategy": release.get("strategy"),
        "from": (release.get("stable") or {}).get("label"),
        "to": (release.get("candidate") or {}).get("label"),
        "phase": release.get("phase"),
        "step": min(index + 1, len(stages)),
        "steps": len(stages),
        "step_name": current.get("name", ""),
        "routing": current.get("routing"),
        "weight": current.get("weight"),
        "started_at": release.get("started_at"),
        "message": release.get("message") or "",
        "summary": release.get("summary") or "",
    }


def _alert(alert: Mapping[str, Any]) -> dict[str, Any]:
    labels = dict(alert.get("labels") or {})
    annotations = dict(alert.get("annotations") or {})
    name = str(labels.pop("alertname", "") or alert.get("name") or "alert")
    severity = str(labels.pop("severity", "") or "warning")
    return {
        "name": name,
        "severity": severity,
        "state": alert.get("state"),
        "summary": str(annotations.get("summary") or annotations.get("description") or ""),
        "labels": labels,
        "active_at": alert.get("activeAt"),
        "value": alert.get("value"),
    }


def _alerts(observed: Mapping[str, Any] | None) -> dict[str, Any]:
    if observed is None or observed.get("alerts") is None:
        return {"firing": None, "pending": None}
    shown = [_alert(a) for a in observed["alerts"]]

    def order(a: dict[str, Any]) -> tuple[int, float, str]:
        return (SEVERITY_ORDER.get(a["severity"], 3), -float(a["active_at"] or 0), a["name"])

    return {
        "firing": sorted((a for a in shown if a["state"] == "firing"), key=order),
        "pending": sorted((a for a in shown if a["state"] == "pending"), key=order),
    }


def _drills(observed: Mapping[str, Any] | None) -> list[dict[str, Any]] | None:
    if observed is None or observed.get("drills") is None:
        return None
    rows = sorted(observed["drills"], key=lambda d: -float(d.get("started_at") or 0))
    return [
        {
            "name": d.get("name"),
            "started_at": d.get("started_at"),
            "result": d.get("result"),
            "rto_seconds": d.get("rto_seconds"),
            "rpo_seconds": d.get("rpo_seconds"),
            "lost": d.get("lost"),
        }
        for d in rows[:RECENT_DRILLS]
    ]


def _overall(
    status: Mapping[str, Any],
    sites: Sequence[Mapping[str, Any]],
    databases: Sequence[Mapping[str, Any]],
    alerts: Mapping[str, Any],
) -> tuple[Health, list[str]]:
    if not status.get("platform"):
        return Health.UNKNOWN, ["nothing is applied yet (alwayson up)"]
    reasons: list[str] = []
    levels = [Health.HEALTHY]
    desired, ready = int(status.get("desired") or 0), int(status.get("ready") or 0)
    if desired and ready < desired:
        reasons.append(f"{desired - ready} of {desired} processes not ready")
        levels.append(Health.DEGRADED)
    for site in sites:
        if site["health"] == Health.CRITICAL:
            reasons.append(f"site {site['name']}: no instance ready")
            levels.append(Health.CRITICAL)
            continue  # its services say nothing more
        for svc in site["services"]:
            if svc["health"] == Health.CRITICAL:
                reasons.append(f"{svc['name']} has no ready instance in {site['name']}")
    for db in databases:
        if db["problems"]:
            reasons.append(f"database {db['name']}: {'; '.join(db['problems'])}")
            levels.append(Health(db["health"]))
    firing = alerts["firing"] or []
    if firing:
        critical = [a for a in firing if SEVERITY_ORDER.get(a["severity"], 3) == 0]
        reasons.append(f"{len(firing)} alert{'s' if len(firing) != 1 else ''} firing")
        levels.append(Health.CRITICAL if critical else Health.DEGRADED)
    return _worst(*levels), reasons


def dashboard_view(
    status: Mapping[str, Any],
    databases: Sequence[Mapping[str, Any]],
    releases: Sequence[Mapping[str, Any]],
    observed: Mapping[str, Any] | None,
    now: float | None = None,
) -> dict[str, Any]:
    """The dashboard's document.

    ``status`` is ``Controller.status()``, ``databases`` ``DatabaseOps.status()``,
    ``releases`` stored releases (``Release.model_dump(mode="json")`` plus ``summary``; the
    finished ones are left out), ``observed`` what monitoring provides
    (``{"traffic", "alerts", "drills"}``) or None while it provides nothing. Any figure not
    known is None, never 0."""
    sites = _sites(status, observed)
    dbs = [_database(db) for db in databases]
    alerts = _alerts(observed)
    health, reasons = _overall(status, sites, dbs, alerts)
    return {
        "generated_at": now,
        "platform": status.get("platform"),
        "front_door": status.get("front_door"),
        "verdict": status.get("verdict", ""),
        "converged": bool(status.get("converged")),
        "desired": int(status.get("desired") or 0),
        "ready": int(status.get("ready") or 0),
        "health": health.value,
        "reasons": reasons,
        "observed": observed is not None,
        "sites": sites,
        "services": _services(status, observed),
        "databases": dbs,
        "releases": [_release(r) for r in releases if str(r.get("phase")) in ACTIVE_RELEASE_PHASES],
        "alerts": alerts,
        "drills": _drills(observed),
    }


# ------------------------------------------------------------------ the routes


class _Files(StaticFiles):
    """The page's files, revalidated on every load (ETag), so a browser never runs the
    script of a controller that has since been upgraded."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


class _ObservedReader:
    """Reads ``controller.observed_view`` (sync or async) at most once per ``ttl``."""

    def __init__(self, controller: Controller, ttl: float) -> None:
        self.controller = controller
        self.ttl = ttl
        self._at: float | None = None
        self._value: dict[str, Any] | None = None
        self._failure = ""

    async def read(self) -> dict[str, Any] | None:
        source = getattr(self.controller, "observed_view", None)
        if not callable(source):
            return None
        now = self.controller.clock.monotonic()
        if self._at is not None and now - self._at < self.ttl:
            return self._value
        try:
            value = source()
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:  # a monitoring fault must not blank the whole page
            if str(exc) != self._failure:  # once per distinct failure, not every second
                log.warning("dashboard: monitoring data not read: %s", exc)
            self._failure = str(exc)
            value = None
        else:
            self._failure = ""
        self._at, self._value = now, value
        return self._value


def mount_dashboard(app: FastAPI, controller: Controller, guarded: list[Any]) -> None:
    """Serve the page at ``/`` (no token: it asks for one), its files under ``/static``
    and its document at ``GET /api/v1/dashboard`` (behind ``guarded``, the bearer check)."""
    observed = _ObservedReader(controller, OBSERVED_TTL)
    index = STATIC / "index.html"

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers=PAGE_HEADERS)

    @app.get("/api/v1/dashboard", dependencies=guarded, responses=ERROR_ANSWERS)
    async def dashboard(response: Response) -> dict[str, Any]:
        """Everything the dashboard shows, in one document (polled every second)."""
        response.headers["Cache-Control"] = "no-store"
        status = controller.status()
        databases = await controller.databases.status()
        releases = [
            {**release.model_dump(mode="json"), "summary": release.summary()}
            for release in controller.releases.active.values()
            if release.phase.active
        ]
        return dashboard_view(
            status, databases, releases, await observed.read(), controller.clock.wall()
        )

    app.mount("/static", _Files(directory=STATIC), name="dashboard-static")
