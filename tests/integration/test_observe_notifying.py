"""Notifications over real sockets on loopback: an SMTP server (aiosmtpd) receives the
email, an HTTP server receives Alertmanager's webhook and Slack payloads, receivers that
fail or cannot be reached are retried with backoff and every attempt is logged.

Every server a test starts is stopped by its fixture, even when the test fails.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from alwayson.metrics.model import Point
from alwayson.observe.alerting import AlertBook, Notification, fingerprint
from alwayson.observe.notifying import Dispatcher
from alwayson.spec.observing import AlertRule, Alerts, Receiver
from alwayson.util.addresses import free_port

T0 = 1_767_323_045.5  # 2026-01-02T03:04:05.5Z
EXTERNAL = "http://127.0.0.1:7070"
DOWN = 'up{job="instances"} == 0'


# -- servers -----------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpReceiver:
    """A real HTTP server in a thread; answers each path with its scripted statuses."""

    server: ThreadingHTTPServer
    script: dict[str, list[int]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    holder: list[HttpReceiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state = holder[0]
            with state.lock:
                state.received.append(
                    Received(self.path, dict(self.headers.items()), body, time.monotonic())
                )
                statuses = state.script.get(self.path, [])
                status = statuses.pop(0) if statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(HttpReceiver(server))
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class Mailbox:
    """aiosmtpd handler: keeps every message; answers with scripted replies first."""

    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, EmailMessage]] = []
        self.replies: list[str] = []
        self.tries = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.tries += 1
        if self.replies:
            return self.replies.pop(0)
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((envelope, parsed))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()  # returns once the server answers
    try:
        yield mailbox, port
    finally:
        controller.stop()


# -- helpers -----------------------------------------------------------------------------


def webhook(url: str, name: str = "oncall", attempts: int = 6) -> Receiver:
    return Receiver.model_validate(
        {"name": name, "webhook": {"url": url}, "max_attempts": attempts}
    )


def firing_notifications(receivers: list[Receiver]) -> list[Notification]:
    """Two instances of jakarta down, evaluated and grouped by a real AlertBook."""
    book = AlertBook()
    rule = AlertRule.model_validate(
        {
            "name": "InstanceDown",
            "expr": DOWN,
            "for": 0,
            "summary": "{{ $labels.instance }} in {{ $labels.site }} is down",
        }
    )

    def query(expr: str, at: float) -> list[Point]:
        return [
            Point({"__name__": "up", "instance": f"accounts@jakarta#{n}", "site": "jakarta"}, 0.0)
            for n in range(2)
        ]

    book.evaluate([rule], query, T0)
    return book.due_notifications(receivers, Alerts(), T0)


async def no_wait(seconds: float) -> None:
    await asyncio.sleep(0)


# -- tests -------------------------------------------------------------------------------


async def test_webhook_gets_alertmanagers_v4_payload(http_receiver: HttpReceiver) -> None:
    receiver = webhook(http_receiver.url("/alerts"))
    (note,) = firing_notifications([receiver])
    dispatcher = Dispatcher(external_url=EXTERNAL)
    try:
        assert await dispatcher.send(note, receiver, T0) is True
    finally:
        await dispatcher.close()
    (got,) = http_receiver.on("/alerts")
    assert got.headers["Content-Type"] == "application/json"
    labels = [
        {
            "alertname": "InstanceDown",
            "instance": f"accounts@jakarta#{n}",
            "severity": "warning",
            "site": "jakarta",
        }
        for n in range(2)
    ]
    fingerprints = [fingerprint(one) for one in labels]
    assert got.json() == {
        "version": "4",
        "groupKey": '{}:{alertname="InstanceDown", site="jakarta"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "oncall",
        "groupLabels": {"alertname": "InstanceDown", "site": "jakarta"},
        "commonLabels": {"alertname": "InstanceDown", "severity": "warning", "site": "jakarta"},
        "commonAnnotations": {},
        "externalURL": EXTERNAL,
        "alerts": [
            {
                "status": "firing",
                "labels": labels[n],
                "annotations": {"summary": f"accounts@jakarta#{n} in jakarta is down"},
                "startsAt": "2026-01-02T03:04:05.5Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": f"{EXTERNAL}/alerts?fingerprint={fingerprints[n]}",
                "fingerprint": fingerprints[n],
            }
            for n in range(2)
        ],
    }
    (attempt,) = dispatcher.attempts()
    assert (attempt["ok"], attempt["status"], attempt["attempt"]) == (True, 200, 1)


async def test_a_failing_receiver_gets_the_third_attempt_after_backoff(
    http_receiver: HttpReceiver,
) -> None:
    http_receiver.script["/flaky"] = [500, 500]
    receiver = webhook(http_receiver.url("/flaky"), attempts=5)
    (note,) = firing_notifications([receiver])
    logged: list[dict[str, Any]] = []
    dispatcher = Dispatcher(base_delay=0.05, max_delay=1.0, on_attempt=logged.append)
    try:
        assert await dispatcher.send(note, receiver, T0) is True
    finally:
        await dispatcher.close()
    got = http_receiver.on("/flaky")
    assert len(got) == 3
    assert got[0].body == got[1].body == got[2].body
    attempts = dispatcher.attempts()
    assert attempts == logged
    assert [(a["attempt"], a["ok"], a["status"], a["retry_in"]) for a in attempts] == [
        (1, False, 500, 0.05),
        (2, False, 500, 0.1),
        (3, True, 200, None),
    ]
    assert attempts[0]["error"] == "HTTP 500 Internal Server Error"
    # the backoff really waited between the attempts the server saw
    assert got[1].at - got[0].at >= 0.05
    assert got[2].at - got[1].at >= 0.1
    assert attempts[0]["at"] == T0 and attempts[2]["at"] - attempts[0]["at"] >= 0.15
    assert all(a["duration"] >= 0 for a in attempts)


async def test_an_unreachable_receiver_gives_up_after_max_attempts() -> None:
    receiver = webhook(f"http://127.0.0.1:{free_port()}/nobody", name="gone", attempts=4)
    (note,) = firing_notifications([receiver])
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    dispatcher = Dispatcher(sleep=sleep, base_delay=2.0, max_delay=5.0)
    try:
        assert await dispatcher.send(note, receiver, T0) is False
    finally:
        await dispatcher.close()
    assert waits == [2.0, 4.0, 5.0]
    attempts = dispatcher.attempts()
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]
    assert all(not a["ok"] and a["status"] is None for a in attempts)
    assert all(a["error"].startswith("ConnectError") for a in attempts)
    assert [a["final"] for a in attempts] == [False, False, False, True]
    assert "gave up after 4 attempts" in attempts[-1]["error"]
    assert {(a["receiver"], a["kind"], a["group_key"]) for a in attempts} == {
        ("gone", "webhook", note.group_key)
    }


async def test_a_refusing_receiver_is_not_retried(http_receiver: HttpReceiver) -> None:
    http_receiver.script["/refuse"] = [400]
    receiver = webhook(http_receiver.url("/refuse"), attempts=5)
    (note,) = firing_notifications([receiver])
    dispatcher = Dispatcher(sleep=no_wait)
    try:
        assert await dispatcher.send(note, receiver, T0) is False
    finally:
        await dispatcher.close()
    assert len(http_receiver.on("/refuse")) == 1
    (attempt,) = dispatcher.attempts()
    assert (attempt["status"], attempt["final"]) == (400, True)


async def test_slack_payload_is_received(http_receiver: HttpReceiver) -> None:
    receiver = Receiver.model_validate(
        {"name": "chat", "slack": {"url": http_receiver.url("/slack"), "channel": "#sre"}}
    )
    (note,) = firing_notifications([receiver])
    dispatcher = Dispatcher(external_url=EXTERNAL)
    try:
        assert await dispatcher.send(note, receiver, T0) is True
    finally:
        await dispatcher.close()
    (got,) = http_receiver.on("/slack")
    payload = got.json()
    assert payload["text"] == "[FIRING:2] InstanceDown (site jakarta)"
    assert payload["channel"] == "#sre"
    (attachment,) = payload["attachments"]
    assert attachment["color"] == "danger"
    assert attachment["title"] == "2 firing"
    assert attachment["title_link"] == f"{EXTERNAL}/alerts"
    assert "accounts@jakarta#0 in jakarta is down" in attachment["text"]
    assert "accounts@jakarta#1 in jakarta is down" in attachment["text"]
    assert dispatcher.attempts()[0]["kind"] == "slack"


async def test_email_reaches_a_real_smtp_server(smtp_server: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp_server
    receiver = Receiver.model_validate(
        {
            "name": "sre-mail",
            "email": {
                "to": "sre@bank.example",
                "from": "alwayson@bank.example",
                "smarthost": f"127.0.0.1:{port}",
            },
        }
    )
    (note,) = firing_notifications([receiver])
    dispatcher = Dispatcher(external_url=EXTERNAL)
    try:
        assert await dispatcher.send(note, receiver, T0) is True
    finally:
        await dispatcher.close()
    ((envelope, message),) = mailbox.messages
    assert envelope.mail_from == "alwayson@bank.example"
    assert envelope.rcpt_tos == ["sre@bank.example"]
    assert message["Subject"] == "[FIRING:2] InstanceDown (site jakarta)"
    assert message["From"] == "alwayson@bank.example"
    assert message["To"] == "sre@bank.example"
    assert message["X-Alwayson-Group-Key"] == '{}:{alertname="InstanceDown", site="jakarta"}'
    assert message["Date"] == "Fri, 02 Jan 2026 03:04:05 +0000"
    assert message.get_content_type() == "text/plain"
    body = message.get_content().replace("\r\n", "\n")
    assert body.startswith(
        '2 firing, 0 resolved in group {alertname="InstanceDown", site="jakarta"}'
    )
    for n in range(2):
        assert f"  accounts@jakarta#{n} in jakarta is down\n" in body
    assert body.count("[FIRING] InstanceDown (warning) since 2026-01-02T03:04:05.5Z") == 2
    assert f"Alerts: {EXTERNAL}/alerts" in body
    (attempt,) = dispatcher.attempts()
    assert (attempt["kind"], attempt["ok"], attempt["status"]) == ("email", True, 250)


async def test_smtp_temporary_refusal_is_retried_and_permanent_is_not(
    smtp_server: tuple[Mailbox, int],
) -> None:
    mailbox, port = smtp_server
    receiver = Receiver.model_validate(
        {"name": "mail", "email": {"to": "a@b.example", "smarthost": f"127.0.0.1:{port}"}}
    )
    (note,) = firing_notifications([receiver])
    dispatcher = Dispatcher(sleep=no_wait)
    try:
        mailbox.replies = ["451 4.3.0 try again later"]
        assert await dispatcher.send(note, receiver, T0) is True
        assert len(mailbox.messages) == 1 and mailbox.tries == 2
        mailbox.replies = ["554 5.7.1 rejected"]
        assert await dispatcher.send(note, receiver, T0) is False
        assert len(mailbox.messages) == 1 and mailbox.tries == 3
    finally:
        await dispatcher.close()
    assert [(a["status"], a["ok"], a["final"]) for a in dispatcher.attempts()] == [
        (451, False, False),
        (250, True, True),
        (554, False, True),
    ]


async def test_background_deliveries_do_not_hold_up_the_caller(
    http_receiver: HttpReceiver,
) -> None:
    http_receiver.script["/slow-start"] = [503] * 3
    receivers = [
        webhook(http_receiver.url("/slow-start"), "a"),
        webhook(http_receiver.url("/ok"), "b"),
    ]
    notes = firing_notifications(receivers)
    gate = asyncio.Event()

    async def held(seconds: float) -> None:
        await gate.wait()

    dispatcher = Dispatcher(sleep=held)
    try:
        tasks = [dispatcher.send(n, r, T0) for n, r in zip(notes, receivers, strict=True)]
        assert dispatcher.pending == 2  # send returned at once; both run in the background
        await asyncio.wait_for(tasks[1], timeout=10)
        assert not tasks[0].done()  # still waiting to retry
        gate.set()
        await asyncio.wait_for(dispatcher.drain(), timeout=10)
        assert dispatcher.pending == 0 and tasks[0].result() is True
    finally:
        await dispatcher.close()
    assert len(http_receiver.on("/slow-start")) == 4 and len(http_receiver.on("/ok")) == 1
