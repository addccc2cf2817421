"""The dashboard's document (the pure ``dashboard_view``) and its three routes."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, cast

import httpx
import pytest
from fastapi import Depends, FastAPI, Header, HTTPException

from alwayson.api.dashboard import (
    STATIC,
    InstanceState,
    dashboard_view,
    instance_state,
    mount_dashboard,
)
from alwayson.util.clocks import ManualClock

if TYPE_CHECKING:
    from alwayson.control.controller import Controller

TOKEN = "s3cret-token"


def inst(ident: str, **extra: Any) -> dict[str, Any]:
    """An instance row shaped like ``Controller.status()["instances"]``."""
    if "@" in ident:
        kind, site = ident.split("@")
        service = kind
    else:
        service, site, _ = ident.rsplit("-", 2)
        kind = "workload"
    row: dict[str, Any] = {
        "id": ident,
        "kind": kind,
        "site": site,
        "service": service,
        "version": "1.0.0",
        "address": "127.21.0.2:8000",
        "desired": True,
        "pid": 4242,
        "phase": "ready",
        "ready": True,
        "adopted": False,
        "started_at": 1_799_999_990.0,
        "restarts": 0,
        "failures": 0,
        "last_exit": "",
        "last_probe": "",
        "start_failure": "",
        "log": "/tmp/x.log",
    }
    row.update(extra)
    return row


def status(instances: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rows = (
        instances
        if instances is not None
        else [
            inst("accounts-jakarta-0"),
            inst("accounts-jakarta-1"),
            inst("accounts-surabaya-0"),
            inst("accounts-surabaya-1"),
            inst("cards-jakarta-0"),
            inst("cards-surabaya-0"),
            inst("gateway@jakarta"),
            inst("gateway@surabaya"),
            inst("etcd@witness"),
        ]
    )
    sites = []
    for name, witness in (("jakarta", False), ("surabaya", False), ("witness", True)):
        mine = [r for r in rows if r["site"] == name and r["desired"]]
        sites.append(
            {
                "name": name,
                "witness": witness,
                "subnet": "127.21.0.0/16",
                "desired": len(mine),
                "ready": sum(1 for r in mine if r["ready"]),
            }
        )
    services = []
    for name in ("accounts", "cards"):
        mine = [r for r in rows if r["service"] == name and r["desired"]]
        services.append(
            {
                "name": name,
                "version": "1.0.0",
                "release": None,
                "port": 8000,
                "desired": len(mine),
                "ready": sum(1 for r in mine if r["ready"]),
                "routes": [],
            }
        )
    desired = [r for r in rows if r["desired"]]
    ready = sum(1 for r in desired if r["ready"])
    return {
        "platform": "test-bank",
        "spec": "/x/alwayson.yaml",
        "digest": "abc",
        "front_door": "http://127.0.0.1:9000",
        "verdict": "converged: 9 processes ready",
        "cycles": 12,
        "desired": len(desired),
        "ready": ready,
        "converged": ready == len(desired),
        "drift": [],
        "sites": sites,
        "services": services,
        "instances": rows,
    }


def database(**changes: Any) -> dict[str, Any]:
    """A database shaped like ``DatabaseOps.status()``: jakarta primary, surabaya standby."""
    db: dict[str, Any] = {
        "name": "ledger",
        "replication": "synchronous",
        "primary_site": "jakarta",
        "objectives": {},
        "lease": {"holder": "jakarta", "epoch": 3, "sync_standby": "surabaya"},
        "lease_expires_in": 4.2,
        "sites": [
            {
                "site": "jakarta",
                "role": "primary",
                "pid": 100,
                "writable": True,
                "alert": None,
                "stale": False,
                "replication": [
                    {
                        "standby": "surabaya",
                        "state": "streaming",
                        "sync_state": "sync",
                        "lag_bytes": 2048,
                        "flush_lag_bytes": 0,
                        "lag_seconds": 0.02,
                    }
                ],
            },
            {"site": "surabaya", "role": "standby", "pid": 101, "stale": False, "replication": []},
        ],
        "pending_request": None,
        "recent": [],
        "alerts": [],
    }
    db.update(changes)
    return db


def release(phase: str = "progressing", stage: int = 1) -> dict[str, Any]:
    return {
        "id": 7,
        "service": "accounts",
        "strategy": "canary",
        "phase": phase,
        "stable": {"version": "1.0.0", "label": "1.0.0"},
        "candidate": {"version": "1.1.0", "label": "1.1.0"},
        "stages": [
            {"name": "canary-10", "routing": "weighted", "weight": 10},
            {"name": "canary-50", "routing": "weighted", "weight": 50},
            {"name": "full", "routing": "candidate", "weight": 0},
        ],
        "stage": stage,
        "started_at": 1_799_999_900.0,
        "message": "analysis passed",
        "summary": "release 7 of accounts 1.0.0 → 1.1.0 (canary): progressing, stage 2/3",
    }


def alert(name: str, state: str, severity: str, at: float, **labels: str) -> dict[str, Any]:
    return {
        "state": state,
        "labels": {"alertname": name, "severity": severity, **labels},
        "annotations": {"summary": f"{name} summary"},
        "activeAt": at,
        "value": 1.0,
    }


def site(view: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in view["sites"] if s["name"] == name)


def card(view: dict[str, Any], site_name: str, service: str) -> dict[str, Any]:
    return next(s for s in site(view, site_name)["services"] if s["name"] == service)


# ------------------------------------------------------------------ instances


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, InstanceState.READY),
        ({"ready": False, "phase": "starting"}, InstanceState.STARTING),
        ({"ready": False, "phase": "unready"}, InstanceState.NOT_READY),
        ({"ready": False, "phase": "stopping"}, InstanceState.STOPPING),
        (
            {
                "ready": False,
                "phase": "pending",
                "pid": None,
                "failures": 1,
                "last_exit": "SIGKILL",
            },
            InstanceState.DOWN,
        ),
        ({"ready": False, "phase": "pending", "pid": None}, InstanceState.PENDING),
    ],
)
def test_instance_state_names_every_phase(extra: dict[str, Any], expected: InstanceState) -> None:
    assert instance_state(inst("accounts-jakarta-0", **extra)) is expected


def test_sites_side_by_side_with_their_services_and_instances() -> None:
    view = dashboard_view(status(), [], [], None, now=1_800_000_000.0)
    assert [s["name"] for s in view["sites"]] == ["jakarta", "surabaya", "witness"]
    assert [s["witness"] for s in view["sites"]] == [False, False, True]
    jakarta = site(view, "jakarta")
    assert [s["name"] for s in jakarta["services"]] == ["accounts", "cards"]
    accounts = card(view, "jakarta", "accounts")
    assert [i["id"] for i in accounts["instances"]] == ["accounts-jakarta-0", "accounts-jakarta-1"]
    assert [i["ordinal"] for i in accounts["instances"]] == ["0", "1"]
    assert accounts["versions"] == [{"version": "1.0.0", "instances": 2, "ready": 2}]
    assert (accounts["ready"], accounts["desired"], accounts["health"]) == (2, 2, "healthy")
    assert [c["id"] for c in jakarta["components"]] == ["gateway@jakarta"]
    witness = site(view, "witness")
    assert witness["services"] == []
    assert [c["id"] for c in witness["components"]] == ["etcd@witness"]
    assert view["health"] == "healthy" and view["reasons"] == []
    assert view["generated_at"] == 1_800_000_000.0
    assert (view["platform"], view["front_door"]) == ("test-bank", "http://127.0.0.1:9000")


def test_without_monitoring_figures_are_unknown_not_zero() -> None:
    view = dashboard_view(status(), [], [], None)
    assert view["observed"] is False
    assert card(view, "jakarta", "accounts")["traffic"] is None
    assert all(s["traffic"] is None for s in view["services"])
    assert view["alerts"] == {"firing": None, "pending": None}
    assert view["drills"] is None


def test_a_killed_instance_turns_its_card_and_the_platform_degraded() -> None:
    rows = status()["instances"]
    rows[0] = inst(
        "accounts-jakarta-0",
        ready=False,
        phase="pending",
        pid=None,
        restarts=1,
        failures=1,
        last_exit="killed by SIGKILL",
    )
    view = dashboard_view(status(rows), [], [], None)
    killed = card(view, "jakarta", "accounts")["instances"][0]
    assert (killed["state"], killed["tone"], killed["restarts"]) == ("down", "bad", 1)
    assert "killed by SIGKILL" in killed["detail"]
    assert card(view, "jakarta", "accounts")["health"] == "degraded"
    assert site(view, "jakarta")["health"] == "degraded"
    assert site(view, "surabaya")["health"] == "healthy"
    assert view["health"] == "degraded"
    assert view["reasons"] == ["1 of 9 processes not ready"]


def test_a_site_with_no_ready_workload_is_critical() -> None:
    rows = [
        inst(r["id"], ready=False, phase="unready", last_probe="connection refused")
        if r["site"] == "surabaya" and r["kind"] == "workload"
        else r
        for r in status()["instances"]
    ]
    view = dashboard_view(status(rows), [], [], None)
    assert site(view, "surabaya")["health"] == "critical"
    assert card(view, "surabaya", "cards")["instances"][0]["detail"] == (
        "probe: connection refused"
    )
    assert view["health"] == "critical"
    assert view["reasons"] == ["3 of 9 processes not ready", "site surabaya: no instance ready"]


def test_a_service_down_in_one_site_is_named() -> None:
    rows = [
        inst(r["id"], ready=False, phase="starting") if r["id"] == "cards-surabaya-0" else r
        for r in status()["instances"]
    ]
    view = dashboard_view(status(rows), [], [], None)
    assert card(view, "surabaya", "cards")["health"] == "critical"
    assert site(view, "surabaya")["health"] == "degraded"  # accounts still serves there
    assert view["health"] == "degraded"
    assert view["reasons"] == [
        "1 of 9 processes not ready",
        "cards has no ready instance in surabaya",
    ]


def test_an_instance_leaving_the_desired_state_is_shown_but_not_counted() -> None:
    rows = [*status()["instances"], inst("accounts-jakarta-2", desired=False, version="0.9.0")]
    view = dashboard_view(status(rows), [], [], None)
    accounts = card(view, "jakarta", "accounts")
    assert accounts["desired"] == 2 and len(accounts["instances"]) == 3
    assert "being removed" in accounts["instances"][2]["detail"]
    assert [v["version"] for v in accounts["versions"]] == ["0.9.0", "1.0.0"]


def test_nothing_applied_is_unknown() -> None:
    empty = {
        "platform": None,
        "desired": 0,
        "ready": 0,
        "sites": [],
        "services": [],
        "instances": [],
    }
    view = dashboard_view(empty, [], [], None)
    assert view["health"] == "unknown" and view["sites"] == []
    assert "nothing is applied" in view["reasons"][0]


# ------------------------------------------------------------------ traffic, alerts, drills


def test_traffic_per_site_and_per_service_over_both_sites() -> None:
    observed = {
        "traffic": [
            {
                "site": "jakarta",
                "service": "accounts",
                "rps": 30.0,
                "error_rate": 0.1,
                "p95_seconds": 0.2,
            },
            {
                "site": "surabaya",
                "service": "accounts",
                "rps": 10.0,
                "error_rate": 0.0,
                "p95_seconds": 0.5,
            },
            {
                "site": "jakarta",
                "service": "cards",
                "rps": None,
                "error_rate": None,
                "p95_seconds": None,
            },
        ],
        "alerts": [],
        "drills": [],
    }
    view = dashboard_view(status(), [], [], observed)
    assert view["observed"] is True
    assert card(view, "jakarta", "accounts")["traffic"] == {
        "rps": 30.0,
        "error_rate": 0.1,
        "p95_seconds": 0.2,
    }
    assert card(view, "surabaya", "cards")["traffic"] is None  # no row at all
    accounts, cards = view["services"]
    assert accounts["traffic"]["rps"] == pytest.approx(40.0)
    assert accounts["traffic"]["error_rate"] == pytest.approx(3.0 / 40.0)  # weighted by requests
    assert accounts["traffic"]["p95_seconds"] == 0.5  # the worst site: quantiles do not add
    assert cards["traffic"] is None  # a row of unknowns is still unknown
    assert view["alerts"] == {"firing": [], "pending": []} and view["drills"] == []
    assert view["health"] == "healthy"


def test_firing_alerts_critical_first_and_pending_apart() -> None:
    observed = {
        "traffic": [],
        "alerts": [
            alert("ErrorRateHigh", "firing", "warning", 100.0, service="cards"),
            alert("InstanceDown", "firing", "critical", 50.0, instance="accounts@jakarta#0"),
            alert("LatencyHigh", "pending", "warning", 120.0),
        ],
        "drills": [],
    }
    view = dashboard_view(status(), [], [], observed)
    firing = view["alerts"]["firing"]
    assert [a["name"] for a in firing] == ["InstanceDown", "ErrorRateHigh"]
    assert firing[0]["labels"] == {"instance": "accounts@jakarta#0"}
    assert (firing[0]["severity"], firing[0]["summary"]) == ("critical", "InstanceDown summary")
    assert firing[0]["active_at"] == 50.0
    assert [a["name"] for a in view["alerts"]["pending"]] == ["LatencyHigh"]
    assert view["health"] == "critical"
    assert "2 alerts firing" in view["reasons"]


def test_a_warning_alert_alone_degrades() -> None:
    observed = {
        "traffic": [],
        "alerts": [alert("DiskFull", "firing", "warning", 1.0)],
        "drills": [],
    }
    view = dashboard_view(status(), [], [], observed)
    assert (view["health"], view["reasons"]) == ("degraded", ["1 alert firing"])


def test_recent_drills_newest_first_and_bounded() -> None:
    drills = [
        {
            "name": f"d{n}",
            "started_at": float(n),
            "result": "passed",
            "rto_seconds": 1.5,
            "rpo_seconds": 0.0,
            "lost": 0,
        }
        for n in range(15)
    ]
    view = dashboard_view(status(), [], [], {"traffic": [], "alerts": [], "drills": drills})
    assert [d["name"] for d in view["drills"]] == [f"d{n}" for n in range(14, 4, -1)]
    assert view["drills"][0] == {
        "name": "d14",
        "started_at": 14.0,
        "result": "passed",
        "rto_seconds": 1.5,
        "rpo_seconds": 0.0,
        "lost": 0,
    }


# ------------------------------------------------------------------ databases, releases


def test_database_roles_and_the_standby_lag_from_the_primary() -> None:
    view = dashboard_view(status(), [database()], [], None)
    (db,) = view["databases"]
    assert (db["name"], db["lease_holder"], db["epoch"], db["sync_standby"]) == (
        "ledger",
        "jakarta",
        3,
        "surabaya",
    )
    primary, standby = db["sites"]
    assert (primary["role"], primary["lag_bytes"], primary["replication"]) == (
        "primary",
        None,
        None,
    )
    assert standby["role"] == "standby"
    assert (standby["replication"], standby["sync_state"]) == ("streaming", "sync")
    assert (standby["lag_bytes"], standby["lag_seconds"]) == (2048, 0.02)
    assert (db["health"], db["problems"]) == ("healthy", [])
    assert view["health"] == "healthy"


def test_a_standby_not_streaming_or_a_stale_report_degrades_the_database() -> None:
    broken = database()
    broken["sites"][0]["replication"] = []
    view = dashboard_view(status(), [broken], [], None)
    assert view["databases"][0]["sites"][1]["replication"] == "not streaming"
    assert view["databases"][0]["health"] == "degraded"
    assert view["health"] == "degraded"
    assert view["reasons"] == ["database ledger: surabaya not streaming"]

    stale = database()
    stale["sites"][1]["stale"] = True
    (db,) = dashboard_view(status(), [stale], [], None)["databases"]
    assert (db["health"], db["problems"]) == ("degraded", ["no report from surabaya for 5 s"])

    alone = database()
    alone["sites"].pop()
    (db,) = dashboard_view(status(), [alone], [], None)["databases"]
    assert (db["health"], db["problems"]) == ("degraded", ["no standby"])


def test_a_database_without_primary_is_critical() -> None:
    lost = database(lease={"holder": None, "epoch": 4}, alerts=["RPO=0 no longer holds"])
    lost["sites"][0]["role"] = "fenced"
    view = dashboard_view(status(), [lost], [], None)
    (db,) = view["databases"]
    assert db["health"] == "critical" and db["alerts"] == ["RPO=0 no longer holds"]
    assert db["sites"][1]["replication"] is None  # no primary to stream from
    assert view["health"] == "critical"
    assert view["reasons"] == ["database ledger: no primary; RPO=0 no longer holds"]


def test_releases_in_progress_with_their_step() -> None:
    done = release(phase="succeeded")
    view = dashboard_view(status(), [], [release(), done, release(phase="rolling-back")], None)
    assert len(view["releases"]) == 2
    shown = view["releases"][0]
    assert shown == {
        "service": "accounts",
        "id": 7,
        "strategy": "canary",
        "from": "1.0.0",
        "to": "1.1.0",
        "phase": "progressing",
        "step": 2,
        "steps": 3,
        "step_name": "canary-50",
        "routing": "weighted",
        "weight": 50,
        "started_at": 1_799_999_900.0,
        "message": "analysis passed",
        "summary": release()["summary"],
    }


def test_the_view_does_not_change_its_inputs() -> None:
    given = status()
    dbs = [database()]
    before = copy.deepcopy((given, dbs))
    dashboard_view(given, dbs, [release()], {"traffic": [], "alerts": [], "drills": []})
    assert (given, dbs) == before


# ------------------------------------------------------------------ routes


class FakeReleases:
    active: dict[str, Any] = {}


class FakeDatabases:
    async def status(self) -> list[dict[str, Any]]:
        return [database()]


class FakeController:
    def __init__(self, observed: Any = None) -> None:
        self.clock = ManualClock()
        self.releases = FakeReleases()
        self.databases = FakeDatabases()
        self.observed_calls = 0
        if observed is not None:

            def observed_view() -> dict[str, Any]:
                self.observed_calls += 1
                if isinstance(observed, Exception):
                    raise observed
                return dict(observed)

            self.observed_view = observed_view

    def status(self) -> dict[str, Any]:
        return status()


def app_for(controller: FakeController) -> FastAPI:
    def authorize(authorization: str = Header(default="")) -> None:
        if authorization != f"Bearer {TOKEN}":
            raise HTTPException(401, "missing or wrong bearer token")

    app = FastAPI()
    mount_dashboard(app, cast("Controller", controller), [Depends(authorize)])
    return app


def client_for(controller: FakeController) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app_for(controller))
    return httpx.AsyncClient(transport=transport, base_url="http://dashboard")


async def test_the_page_and_its_files_load_without_a_token_from_the_package() -> None:
    async with client_for(FakeController()) as client:
        page = await client.get("/")
        script = await client.get("/static/dashboard.js")
        style = await client.get("/static/dashboard.css")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text == (STATIC / "index.html").read_text()
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert '<script src="/static/dashboard.js"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    assert script.status_code == 200 and "sessionStorage" in script.text
    assert "Authorization: `Bearer ${" in script.text
    assert style.status_code == 200 and "prefers-color-scheme" in style.text
    assert script.headers["cache-control"] == "no-cache"  # an upgrade is seen at once


async def test_the_document_needs_the_token() -> None:
    async with client_for(FakeController()) as client:
        missing = await client.get("/api/v1/dashboard")
        wrong = await client.get("/api/v1/dashboard", headers={"Authorization": "Bearer nope"})
        right = await client.get("/api/v1/dashboard", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert right.status_code == 200 and right.headers["cache-control"] == "no-store"
    doc = right.json()
    assert [s["name"] for s in doc["sites"]] == ["jakarta", "surabaya", "witness"]
    assert doc["databases"][0]["name"] == "ledger"
    assert doc["generated_at"] == ManualClock().wall()
    assert doc["observed"] is False  # this controller has no observed_view


async def test_monitoring_is_read_at_most_once_a_second_and_its_failure_is_not_fatal() -> None:
    controller = FakeController({"traffic": [], "alerts": [], "drills": []})
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with client_for(controller) as client:
        first = (await client.get("/api/v1/dashboard", headers=headers)).json()
        await client.get("/api/v1/dashboard", headers=headers)
        assert controller.observed_calls == 1
        controller.clock.advance(1.0)
        await client.get("/api/v1/dashboard", headers=headers)
        assert controller.observed_calls == 2
    assert first["observed"] is True and first["alerts"]["firing"] == []

    failing = FakeController(RuntimeError("store closed"))
    async with client_for(failing) as client:
        response = await client.get("/api/v1/dashboard", headers=headers)
    assert response.status_code == 200 and response.json()["observed"] is False
