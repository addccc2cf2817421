"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

The first test runs a small real platform (two workload sites and a witness, two echo
services), signs in with the token of its state directory, kills an instance with SIGKILL
and watches the page show it within seconds. The second serves the page over a fixed
document so every panel the small platform leaves empty (databases, alerts, releases,
drills, traffic) is drawn in the browser too. Screenshots land under the test's temporary
folder and in ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException
from playwright.sync_api import Page, expect, sync_playwright
from tests.support import ROOT, Platform, echo_service, free_port, three_service_spec, wait_for

from alwayson.api.dashboard import mount_dashboard
from alwayson.release.model import Release
from alwayson.util.clocks import ManualClock

CHROMIUM = Path("/usr/bin/chromium")
INSTALL = ROOT / "scripts" / "install-browser.sh"
ARTIFACTS = ROOT / "test-artifacts"
REFLECT_DEADLINE = 10.0  # a kill shows on the page well within this (polls every second)


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's Chromium; scripts/install-browser.sh installs it when missing."""
    if not CHROMIUM.exists():
        subprocess.run(["bash", str(INSTALL)], check=True, timeout=900)
    assert CHROMIUM.exists(), f"{INSTALL} did not install {CHROMIUM}"
    return CHROMIUM


def _alive(pid: int, started: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) < 0.05 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@contextlib.contextmanager
def browser_page(executable: Path) -> Iterator[Page]:
    """A page in a fresh headless Chromium; afterwards every process Playwright started
    (its driver, the browser and its helpers) is checked gone by pid, and killed if not."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    started: dict[int, float] = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(executable), headless=True)
            for proc in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if proc.pid not in before:
                        started[proc.pid] = proc.create_time()
            try:
                context = browser.new_context(viewport={"width": 1500, "height": 1000})
                yield context.new_page()
            finally:
                browser.close()
    finally:
        for pid, at in started.items():
            if _alive(pid, at):
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()
        left = wait_for(
            "the browser's processes to end",
            lambda: [pid for pid, at in started.items() if _alive(pid, at)] or "none",
            10,
        )
        assert left == "none", f"browser processes left running: {left}"


def save_screenshot(page: Page, folder: Path, name: str) -> Path:
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(path, ARTIFACTS / name)
    return path


def sign_in(page: Page, token: str) -> None:
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Open the dashboard").click()


def instance(page: Page, ident: str) -> Any:
    return page.locator(f'li[data-instance="{ident}"]')


# ------------------------------------------------------------------ a real platform


def test_dashboard_shows_both_sites_and_an_instance_kill_within_seconds(
    make_platform: Callable[..., Platform], echo_folder: Path, chromium: Path, tmp_path: Path
) -> None:
    data = three_service_spec()
    data["services"] = [echo_service("accounts", 8000), echo_service("cards", 8001, replicas=1)]
    platform = make_platform(data, folder=echo_folder)
    platform.cli("up", "--timeout", "60")
    token = (platform.state_dir / "token").read_text().strip()
    url = f"http://{platform.api}/"
    api = httpx.Client(
        base_url=f"http://{platform.api}",
        headers={"Authorization": f"Bearer {token}"},
        trust_env=False,
        timeout=5,
    )
    with api, browser_page(chromium) as page:
        page.goto(url)
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

        sign_in(page, "not-the-token")
        error = page.locator("#login-error")
        expect(error).to_be_visible(timeout=5000)
        expect(error).to_contain_text("The API refused this token (HTTP 401)")
        expect(page.locator("main")).to_be_hidden()

        sign_in(page, token)
        expect(error).to_be_hidden(timeout=5000)
        expect(page.locator("#platform")).to_have_text("test-bank", timeout=5000)
        status = api.get("/api/v1/status").json()
        workloads = [i for i in status["instances"] if i["kind"] == "workload"]
        assert len(workloads) == 2 * 2 + 1 * 2
        for inst in workloads:
            expect(instance(page, inst["id"])).to_have_attribute("data-state", "ready")
        for site in ("jakarta", "surabaya"):
            column = page.locator(f'section.site[data-site="{site}"]')
            expect(column.get_by_role("heading", name=site, exact=True)).to_be_visible()
            for service in ("accounts", "cards"):
                expect(column.locator(f'article[data-service="{service}"]')).to_be_visible()
            expect(column.locator('li[data-instance="gateway@' + site + '"]')).to_contain_text(
                "ready"
            )
        expect(page.locator('section.site.witness[data-site="witness"]')).to_be_visible()
        everything = f"{status['desired']}/{status['desired']} processes ready"
        expect(page.locator("#updated")).to_contain_text(everything, timeout=10_000)
        expect(page.locator("#health")).not_to_have_attribute("data-health", "critical")
        jakarta = page.locator('section.site[data-site="jakarta"]').bounding_box()
        surabaya = page.locator('section.site[data-site="surabaya"]').bounding_box()
        assert jakarta and surabaya
        assert jakarta["x"] + jakarta["width"] <= surabaya["x"], "sites side by side"
        assert abs(jakarta["y"] - surabaya["y"]) < 1, "sites side by side"
        save_screenshot(page, tmp_path, "dashboard-before-kill.png")

        victim = next(i for i in workloads if (i["service"], i["site"]) == ("accounts", "jakarta"))
        row = instance(page, victim["id"])
        expect(row).to_have_attribute("data-pid", str(victim["pid"]))
        killed_at = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        expect(row).to_have_attribute("data-restarts", "1", timeout=REFLECT_DEADLINE * 1000)
        shown_after = time.monotonic() - killed_at
        print(f"the kill showed on the page after {shown_after:.2f}s")
        expect(row).to_have_class(_has("changed"))
        expect(row).to_contain_text("restarted 1×")
        expect(page.locator("#changes")).to_contain_text(victim["id"])
        save_screenshot(page, tmp_path, "dashboard.png")

        # ... and keeps following it: back to ready under a new pid.
        expect(row).to_have_attribute("data-state", "ready", timeout=30_000)
        expect(row).not_to_have_attribute("data-pid", str(victim["pid"]))
        expect(row).to_contain_text("SIGKILL")
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
        assert (ARTIFACTS / "dashboard.png").exists()

        page.get_by_role("button", name="Log out").click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('alwayson.token')") is None

    pids = platform.recorded_processes()
    assert pids
    platform.cli("down")
    left = wait_for(
        "every process of the platform to end",
        lambda: [pid for pid, at in pids if _alive(pid, at)] or "none",
        30,
    )
    assert left == "none", f"processes left running: {left}"


def _has(css_class: str) -> re.Pattern[str]:
    return re.compile(rf"(^|\s){re.escape(css_class)}(\s|$)")


# ------------------------------------------------------------------ every panel drawn


NOW = 1_800_000_000.0
SNEAKY = '<img src=x id="injected">'


def _row(ident: str, **extra: Any) -> dict[str, Any]:
    kind, site = ident.split("@") if "@" in ident else ("workload", ident.split("-")[1])
    row: dict[str, Any] = {
        "id": ident,
        "kind": kind,
        "site": site,
        "service": ident.split("-")[0] if kind == "workload" else kind,
        "version": "1.0.0",
        "address": "127.0.0.1:1",
        "desired": True,
        "pid": 1000 + len(ident),
        "phase": "ready",
        "ready": True,
        "started_at": NOW - 60,
        "restarts": 0,
        "failures": 0,
        "last_exit": "",
        "last_probe": "",
        "start_failure": "",
    }
    row.update(extra)
    return row


def _status() -> dict[str, Any]:
    rows = [
        _row("payments-jakarta-0"),
        _row("payments-jakarta-1", version="1.1.0"),
        _row("payments-surabaya-0", ready=False, phase="unready", last_probe=SNEAKY),
        _row("gateway@jakarta"),
        _row("gateway@surabaya"),
        _row("etcd@witness"),
    ]
    sites = [
        {"name": "jakarta", "witness": False, "subnet": "127.1.0.0/16", "desired": 3, "ready": 3},
        {"name": "surabaya", "witness": False, "subnet": "127.2.0.0/16", "desired": 2, "ready": 1},
        {"name": "witness", "witness": True, "subnet": "127.3.0.0/16", "desired": 1, "ready": 1},
    ]
    service = {"name": "payments", "version": "1.0.0", "desired": 3, "ready": 2}
    return {
        "platform": "panel-bank",
        "front_door": "http://127.0.0.1:9",
        "verdict": "1 instance not ready",
        "desired": 6,
        "ready": 5,
        "converged": False,
        "sites": sites,
        "services": [service],
        "instances": rows,
    }


def _databases() -> list[dict[str, Any]]:
    stream = {
        "standby": "surabaya",
        "state": "streaming",
        "sync_state": "sync",
        "lag_bytes": 2048,
        "lag_seconds": 0.25,
    }
    return [
        {
            "name": "ledger",
            "replication": "synchronous",
            "primary_site": "jakarta",
            "lease": {"holder": "jakarta", "epoch": 4, "sync_standby": "surabaya"},
            "lease_expires_in": 3.5,
            "sites": [
                {"site": "jakarta", "role": "primary", "writable": True, "replication": [stream]},
                {"site": "surabaya", "role": "standby", "stale": True, "replication": []},
            ],
            "alerts": [],
        }
    ]


def _release() -> dict[str, Any]:
    return {
        "id": 3,
        "service": "payments",
        "strategy": "canary",
        "phase": "progressing",
        "stable": {"label": "1.0.0"},
        "candidate": {"label": "1.1.0"},
        "stages": [
            {"name": "canary-10", "routing": "weighted", "weight": 10},
            {"name": "canary-50", "routing": "weighted", "weight": 50},
            {"name": "full", "routing": "candidate"},
        ],
        "stage": 1,
        "started_at": NOW - 30,
        "message": "",
    }


OBSERVED = {
    "traffic": [
        {
            "site": "jakarta",
            "service": "payments",
            "rps": 123.4,
            "error_rate": 0.025,
            "p95_seconds": 0.042,
        }
    ],
    "alerts": [
        {
            "state": "firing",
            "labels": {"alertname": "InstanceDown", "severity": "critical", "site": "surabaya"},
            "annotations": {"summary": f"payments-surabaya-0 is down {SNEAKY}"},
            "activeAt": NOW - 20,
            "value": 0.0,
        }
    ],
    "drills": [
        {
            "name": "site-loss",
            "started_at": NOW - 3600,
            "result": "passed",
            "rto_seconds": 4.2,
            "rpo_seconds": 0.0,
            "lost": 0,
        }
    ],
}


class _Releases:
    def __init__(self) -> None:
        self.active: dict[str, Release] = {}


class _Databases:
    async def status(self) -> list[dict[str, Any]]:
        return _databases()


class _Controller:
    """Just what the dashboard's routes read, answering fixed figures."""

    def __init__(self) -> None:
        self.clock = ManualClock(wall_start=NOW)
        self.releases = _Releases()
        self.databases = _Databases()

    def status(self) -> dict[str, Any]:
        return _status()

    def observed_view(self) -> dict[str, Any]:
        return OBSERVED


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for("the test server", lambda: server.started, 10)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "the test server did not stop"


def test_dashboard_draws_databases_alerts_releases_drills_and_traffic(
    chromium: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    controller = _Controller()
    controller.releases.active = {"payments": stored_release(_release())}

    def authorize(authorization: str = Header(default="")) -> None:
        if authorization != "Bearer panel-token":
            raise HTTPException(401, "missing or wrong bearer token")

    app = FastAPI()
    mount_dashboard(app, controller, [Depends(authorize)])  # type: ignore[arg-type]
    with serving(app) as url, browser_page(chromium) as page:
        page.goto(url + "/")
        sign_in(page, "panel-token")
        expect(page.locator("#platform")).to_have_text("panel-bank", timeout=5000)

        health = page.locator("#health")
        expect(health).to_have_attribute("data-health", "critical")
        expect(health).to_contain_text("Critical")
        expect(health).to_contain_text("1 alert firing")

        alerts = page.locator("#alerts")
        expect(alerts).to_contain_text("CRITICAL")
        expect(alerts).to_contain_text("InstanceDown")
        expect(alerts).to_contain_text("site=surabaya")
        expect(alerts).to_contain_text(SNEAKY)  # shown as text ...
        assert page.locator("#injected").count() == 0  # ... never as markup

        card = page.locator('section[data-site="jakarta"] article[data-service="payments"]')
        expect(card).to_contain_text("123")  # req/s
        expect(card).to_contain_text("2.50 %")  # errors
        expect(card).to_contain_text("42 ms")  # p95
        expect(card).to_contain_text("v1.0.0 ×1")
        expect(card).to_contain_text("v1.1.0 ×1")
        other = page.locator('section[data-site="surabaya"] article[data-service="payments"]')
        expect(other).to_contain_text("traffic: no data yet")
        expect(other.locator("li[data-instance]")).to_have_attribute("data-state", "not ready")
        expect(other).to_contain_text("not ready")

        standby = page.locator('#databases tr[data-db-site="surabaya"]')
        expect(standby).to_contain_text("standby")
        expect(standby).to_contain_text("streaming (sync)")
        expect(standby).to_contain_text("2.0 KiB")
        expect(standby).to_contain_text("250 ms")
        expect(page.locator('#databases tr[data-db-site="jakarta"]')).to_contain_text("primary")
        expect(standby).to_contain_text("stale: no recent report")
        databases = page.locator("#databases")
        expect(databases).to_contain_text("lease: jakarta, epoch 4")
        expect(databases).to_contain_text("⚠ no report from surabaya for 5 s")
        expect(health).to_contain_text("database ledger: no report from surabaya for 5 s")

        releases = page.locator("#releases")
        expect(releases).to_contain_text("payments 1.0.0 → 1.1.0")
        expect(releases).to_contain_text("step 2 of 3: canary-50 (50 % of traffic to 1.1.0)")
        expect(releases.locator("progress")).to_have_attribute("value", "2")

        drill = page.locator('#drills tr[data-drill="site-loss"]')
        expect(drill).to_contain_text("passed")
        expect(drill).to_contain_text("4.20 s")
        expect(drill).to_contain_text("1 h 0 min ago")
        save_screenshot(page, tmp_path, "dashboard-panels.png")

        monkeypatch.setattr(_Controller, "status", _unavailable)
        expect(page.locator("#banner")).to_contain_text(
            "Lost contact with the controller: the API answered HTTP 503: store unreachable",
            timeout=5000,
        )
        expect(page.locator("#platform")).to_have_text("panel-bank")  # the last view stays


def _unavailable(self: _Controller) -> dict[str, Any]:
    raise HTTPException(503, "store unreachable")


def stored_release(data: dict[str, Any]) -> Release:
    """A release record as the controller keeps it (the real model)."""
    full = {
        "actor": "test",
        "reason": "test",
        "settings": {},
        "stage_started_at": NOW - 10,
        **data,
        "stable": {"version": "1.0.0", "run": "x", "label": "1.0.0", "color": "a"},
        "candidate": {"version": "1.1.0", "run": "y", "label": "1.1.0", "color": "b"},
        "stages": [
            {"name": s["name"], "counts": {}, "routing": s["routing"], "weight": s.get("weight", 0)}
            for s in data["stages"]
        ],
    }
    return Release.model_validate(full)
