"""Monitoring end to end on a real platform: scrapes, the query API, /metrics for
Prometheus, an alert delivered to a real webhook and a real SMTP server after a real
kill, silences, reports, and the autoscaler reacting to a real load step."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from aiosmtpd.controller import Controller as SmtpController
from aiosmtpd.handlers import Message
from prometheus_client.parser import text_string_to_metric_families
from tests.support import Platform, Stream, echo_service, free_port, wait_for

BANK = Path(__file__).resolve().parents[2] / "examples" / "digital-bank"


class Hook:
    """A real HTTP server on loopback that records every JSON body posted to it."""

    def __init__(self) -> None:
        self.bodies: list[tuple[float, dict[str, Any]]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append((time.monotonic(), json.loads(self.rfile.read(length))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def firing(self, alertname: str, **labels: str) -> list[tuple[float, dict[str, Any]]]:
        return [
            (at, body)
            for at, body in self.bodies
            if any(
                a["status"] == "firing"
                and a["labels"].get("alertname") == alertname
                and all(a["labels"].get(k) == v for k, v in labels.items())
                for a in body["alerts"]
            )
        ]


class Mailbox(Message):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Any] = []

    def handle_message(self, message: Any) -> None:
        self.messages.append(message)


@pytest.fixture
def hook() -> Iterator[Hook]:
    made = Hook()
    yield made
    made.close()


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    smtp = SmtpController(box, hostname="127.0.0.1", port=port)
    smtp.start()
    yield box, port
    smtp.stop()


def monitored_spec(hook_url: str, smtp_port: int) -> dict[str, Any]:
    return {
        "platform": "watched",
        "sites": [{"name": "jakarta"}, {"name": "surabaya"}, {"name": "witness", "witness": True}],
        "services": [echo_service("accounts", 8000, replicas=1)],
        # The default 5 s scrape and evaluation intervals: a killed instance is back in
        # about 1.5 s, so only the scrape its exit triggers can see it down.
        "alerts": {
            "group_wait": "0s",
            "group_interval": "1s",
            "rules": [
                {
                    "name": "InstanceDown",  # the built-in, with for: 0
                    "expr": 'up{job="instances"} == 0',
                    "for": "0s",
                    "severity": "critical",
                    "summary": "{{ $labels.instance }} does not answer",
                },
                {
                    "name": "AccountsNotReady",
                    "expr": 'alwayson_instance_ready{service="accounts"} == 0',
                    "for": "0s",
                    "severity": "critical",
                    "summary": "{{ $labels.instance }} is not ready",
                },
            ],
        },
        "notifications": [
            {"name": "oncall", "webhook": {"url": hook_url}},
            {
                "name": "mail",
                "email": {"to": "sre@bank.example", "smarthost": f"127.0.0.1:{smtp_port}"},
            },
        ],
    }


def api_get(platform: Platform, path: str, **params: Any) -> Any:
    token = (platform.state_dir / "token").read_text().strip()
    response = httpx.get(
        f"http://{platform.api}{path}",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        trust_env=False,
        timeout=10,
    )
    response.raise_for_status()
    return response.json() if "json" in response.headers.get("content-type", "") else response.text


def test_kill_fires_an_alert_to_webhook_and_email_and_silences_hold_it(
    make_platform: Callable[..., Platform],
    echo_folder: Path,
    hook: Hook,
    mailbox: tuple[Mailbox, int],
) -> None:
    box, smtp_port = mailbox
    platform = make_platform(monitored_spec(hook.url, smtp_port), folder=echo_folder)
    platform.cli("up", "--timeout", "60")

    # Scraped: every instance is up, and the query API sees it.
    def all_up() -> bool:
        got = api_get(platform, "/api/v1/query", expr='sum(up{job="instances"})')
        return bool(got["result"]) and got["result"][0]["value"] == 2

    wait_for("both instances scraped as up", all_up, 30)
    exposition = api_get(platform, "/metrics")
    names = {s.name for f in text_string_to_metric_families(exposition) for s in f.samples}
    assert {"up", "alwayson_instance_ready", "echo_requests_total"} <= names, sorted(names)

    victim = platform.instances(service="accounts", site="jakarta")[0]
    os.kill(victim["pid"], signal.SIGKILL)
    killed = time.monotonic()
    wait_for(
        "the webhook to receive the alert",
        lambda: hook.firing("AccountsNotReady", instance=victim["id"]),
        30,
    )
    wait_for(
        "the webhook to receive InstanceDown (up == 0, seen only by the scrape the exit woke)",
        lambda: hook.firing("InstanceDown", instance=victim["id"]),
        30,
    )
    down_delay = hook.firing("InstanceDown", instance=victim["id"])[0][0] - killed
    delay = hook.firing("AccountsNotReady", instance=victim["id"])[0][0] - killed
    body = hook.firing("AccountsNotReady", instance=victim["id"])[0][1]
    assert body["version"] == "4" and body["receiver"] == "oncall"
    assert body["groupLabels"].get("alertname") == "AccountsNotReady"
    alert = next(a for a in body["alerts"] if a["labels"]["instance"] == victim["id"])
    assert alert["annotations"]["summary"] == f"{victim['id']} is not ready"
    assert alert["endsAt"] == "0001-01-01T00:00:00Z" and alert["fingerprint"]
    # One email per group (alertname, site): InstanceDown's and AccountsNotReady's.
    mails = wait_for(
        "the AccountsNotReady email",
        lambda: [m for m in box.messages if "AccountsNotReady" in m["Subject"]],
        30,
    )
    assert mails[0]["To"] == "sre@bank.example"
    assert mails[0]["Subject"].startswith("[FIRING:1] AccountsNotReady"), mails[0]["Subject"]
    print(
        f"instance kill -> webhook delivery: InstanceDown {down_delay:.2f}s, "
        f"AccountsNotReady {delay:.2f}s"
    )

    # Resolved once the controller restarted it.
    wait_for(
        "a resolved notification",
        lambda: any(
            a["status"] == "resolved" and a["labels"].get("instance") == victim["id"]
            for _, b in hook.bodies
            for a in b["alerts"]
        ),
        30,
    )
    shown = json.loads(platform.cli("alerts", "--all", "--json").stdout)
    assert any(d["receiver"] == "oncall" and d["ok"] for d in shown["deliveries"])

    # A silence on surabaya: the alert is tracked as silenced, and nothing is sent for it.
    made = json.loads(
        platform.cli(
            "silence", "add", "-m", "site=surabaya", "--for", "10m", "-c", "drill", "--json"
        ).stdout
    )
    other = platform.instances(service="accounts", site="surabaya")[0]
    sent_before = len(hook.bodies)
    os.kill(other["pid"], signal.SIGKILL)

    def silenced() -> bool:
        got = json.loads(platform.cli("alerts", "--all", "--json").stdout)["alerts"]
        return any(a["labels"].get("instance") == other["id"] and a.get("silenced_by") for a in got)

    wait_for("the surabaya alert tracked as silenced", silenced, 30)
    assert not hook.firing("AccountsNotReady", instance=other["id"]), "a silenced alert was sent"
    assert len(hook.bodies) == sent_before or all(
        a["labels"].get("site") != "surabaya"
        for _, b in hook.bodies[sent_before:]
        for a in b["alerts"]
    )
    listed = json.loads(platform.cli("silence", "list", "--json").stdout)
    assert [s["id"] for s in listed] == [made["id"]]

    # Alert state, silences and deliveries survive a controller kill -9 and restart.
    before = json.loads(platform.cli("alerts", "--all", "--json").stdout)
    controller = platform.controller_pid()
    assert controller is not None
    os.kill(controller, signal.SIGKILL)
    wait_for(
        "the controller to die",
        lambda: (
            not psutil.pid_exists(controller)
            or psutil.Process(controller).status() == psutil.STATUS_ZOMBIE
        ),
        10,
    )
    platform.cli("up", "--timeout", "60")
    after = json.loads(platform.cli("alerts", "--all", "--json").stdout)
    assert [s["id"] for s in after["silences"]] == [made["id"]]
    kept = {(a["labels"].get("alertname"), a["labels"].get("instance")) for a in after["alerts"]}
    assert ("InstanceDown", victim["id"]) in kept, after["alerts"]
    assert len(after["deliveries"]) >= len(before["deliveries"]) > 0
    platform.cli("silence", "expire", made["id"])

    report = echo_folder / "health.html"
    done = platform.cli("report", "health", "--since", "10m", "--html", str(report), "--json")
    figures = json.loads(done.stdout)
    assert figures and "verdict" in figures
    page = report.read_text()
    assert "data:image/png;base64," in page and "http://" not in page.replace(platform.api, "")


def test_a_load_step_on_a_bank_service_scales_it_out_within_seconds_and_back_in(
    make_platform: Callable[..., Platform], tmp_path: Path
) -> None:
    folder = tmp_path / "bank-platform"
    shutil.copytree(BANK / "bank", folder / "bank", ignore=shutil.ignore_patterns("__pycache__"))
    fx = {
        "name": "fx",
        "version": "1.0.0",
        "run": "python -m bank.fx",
        "port": 8014,
        "replicas": 1,
        "health": {"http": "/healthz", "interval": "500ms", "timeout": "400ms"},
        "routes": [{"path": "/fx"}],
        "stop_grace": "3s",
        "autoscale": {
            "min": 1,
            "max": 3,
            "targets": {"rps": 20},
            "window": "2s",
            "interval": "500ms",
            "scale_down": {"stabilization": "6s"},
        },
    }
    spec = {
        "platform": "scaled",
        "sites": [{"name": "jakarta"}, {"name": "surabaya"}, {"name": "witness", "witness": True}],
        "services": [fx],
        "metrics": {"scrape_interval": "500ms", "scrape_timeout": "400ms"},
    }
    platform = make_platform(spec, folder=folder)
    platform.cli("up", "--timeout", "60")
    first = {i["id"] for i in platform.instances(service="fx")}
    with Stream(platform.front_door, ["/fx/rates"], rate=120) as stream:
        stream.wait_sent(10)
        step = time.monotonic()

        def new_instance_served() -> bool:
            got = httpx.get(f"{platform.front_door}/fx/rates", trust_env=False, timeout=5)
            return got.status_code == 200 and got.headers["x-served-by"] not in first

        wait_for("a new fx instance serving", new_instance_served, 30)
        served_after = time.monotonic() - step
        stream.wait_sent(50)
    assert stream.failures == [], stream.failures[:5]
    print(f"load step -> a new bank fx instance serves: {served_after:.2f}s")
    wait_for(
        "back to one instance per site",
        lambda: len([i for i in platform.instances(service="fx") if i["desired"]]) == 2,
        60,
    )
    history = json.loads(platform.cli("autoscale", "history", "--json", "-n", "500").stdout)
    ups = [d for d in history if d["desired"] > d["current"]]
    downs = [d for d in history if d["desired"] < d["current"]]
    assert ups and downs, history[-5:]
    assert "rps" in ups[0]["reason"] and ups[0]["service"] == "fx"
    assert downs[0]["at"] - ups[-1]["at"] >= 6.0, "scaled down inside the stabilization window"
