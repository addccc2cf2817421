"""Delivering notifications: Alertmanager's webhook (payload version 4), email over SMTP,
Slack-compatible webhooks; retried with capped exponential backoff, every attempt logged.

:class:`Dispatcher` owns one background task per delivery, so alert evaluation never
waits on a receiver; :meth:`Dispatcher.drain` waits for them and
:meth:`Dispatcher.close` cancels what is still retrying. The payload builders
(:func:`webhook_payload`, :func:`slack_payload`, :func:`email_message`) are pure.

Failures are sorted at this boundary: a connect error, a timeout, HTTP 408/429/5xx or an
SMTP 4xx reply is :class:`DeliveryRetryable` (a :class:`TemporaryError`, retried after
the backoff or the receiver's ``Retry-After``, whichever is longer); any other HTTP 4xx
or an SMTP 5xx reply is :class:`DeliveryRejected` (a :class:`PermanentError`, not
retried: sending the same thing again cannot succeed). Either way the attempt is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any
from urllib.parse import quote

import aiosmtplib
import httpx

from alwayson.observe.alerting import Notification, NotifiedAlert, label_set_text
from alwayson.observe.rules import go_float
from alwayson.spec.observing import Email, Receiver
from alwayson.util.addresses import split_hostport
from alwayson.util.certs import web_context
from alwayson.util.errors import PermanentError, TemporaryError

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
AttemptHook = Callable[[dict[str, Any]], None]

ZERO_TIME = "0001-01-01T00:00:00Z"
BASE_DELAY = 1.0
MAX_DELAY = 60.0


class DeliveryRetryable(TemporaryError):
    """The receiver may take it later: connect error, timeout, 408/429/5xx, SMTP 4xx."""

    def __init__(self, message: str, status: int | None = None, retry_after: float = 0.0):
        super().__init__(message, retry_after)
        self.status = status


class DeliveryRejected(PermanentError):
    """The receiver refused it for good: HTTP 4xx, SMTP 5xx."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def backoff_delay(failures: int, base: float = BASE_DELAY, cap: float = MAX_DELAY) -> float:
    """Seconds to wait after the ``failures``-th failed attempt: base, then doubling,
    never more than ``cap``."""
    if failures <= 0:
        return 0.0
    return min(cap, base * 2.0 ** min(failures - 1, 62))


# -- payloads ---------------------------------------------------------------------------


def rfc3339(seconds: float | None) -> str:
    """UTC RFC 3339 time as Go prints it (fraction only when there is one); ``None`` is
    Go's zero time, which Alertmanager's webhook shows as the end of a firing alert."""
    if seconds is None:
        return ZERO_TIME
    text = datetime.fromtimestamp(seconds, UTC).isoformat()
    stamp, _, _ = text.partition("+")
    if "." in stamp:
        stamp = stamp.rstrip("0").rstrip(".")
    return stamp + "Z"


def generator_url(external_url: str, alert: NotifiedAlert) -> str:
    """Where a reader can see the alert: the controller's alerts page for its fingerprint."""
    if not external_url:
        return ""
    return f"{external_url.rstrip('/')}/alerts?fingerprint={quote(alert.fingerprint)}"


def webhook_payload(notification: Notification, external_url: str = "") -> dict[str, Any]:
    """Alertmanager's webhook body, version 4, for ``notification``."""
    return {
        "version": "4",
        "groupKey": notification.group_key,
        "truncatedAlerts": 0,
        "status": notification.status,
        "receiver": notification.receiver,
        "groupLabels": dict(notification.group_labels),
        "commonLabels": notification.common_labels,
        "commonAnnotations": notification.common_annotations,
        "externalURL": external_url,
        "alerts": [
            {
                "status": alert.status,
                "labels": dict(alert.labels),
                "annotations": dict(alert.annotations),
                "startsAt": rfc3339(alert.starts_at),
                "endsAt": rfc3339(alert.ends_at),
                "generatorURL": generator_url(external_url, alert),
                "fingerprint": alert.fingerprint,
            }
            for alert in notification.alerts
        ],
    }


def headline(notification: Notification) -> str:
    """``[FIRING:2] InstanceDown HighErrorRate (site jakarta)``: status, names, sites."""
    firing = notification.firing
    status = f"FIRING:{len(firing)}" if firing else "RESOLVED"
    names = sorted({a.labels.get("alertname", "?") for a in notification.alerts})
    sites = sorted({a.labels["site"] for a in notification.alerts if a.labels.get("site")})
    where = f" ({'sites' if len(sites) > 1 else 'site'} {', '.join(sites)})" if sites else ""
    return f"[{status}] {' '.join(names)}{where}"


def _alert_lines(alert: NotifiedAlert) -> list[str]:
    name = alert.labels.get("alertname", "?")
    severity = alert.labels.get("severity", "")
    if alert.status == "firing":
        when = f"since {rfc3339(alert.starts_at)}"
    else:
        when = f"from {rfc3339(alert.starts_at)} to {rfc3339(alert.ends_at)}"
    shown = {k: v for k, v in alert.labels.items() if k != "alertname"}
    lines = [f"[{alert.status.upper()}] {name}{f' ({severity})' if severity else ''} {when}"]
    summary = alert.annotations.get("summary", "")
    if summary:
        lines.append(f"  {summary}")
    lines.append(f"  labels: {label_set_text(shown)}")
    lines.append(f"  value: {go_float(alert.value)}")
    return lines


def text_body(notification: Notification, external_url: str = "") -> str:
    """The plain-text report of a notification: one block per alert, firing first."""
    firing, resolved = notification.firing, notification.resolved
    lines = [
        f"{len(firing)} firing, {len(resolved)} resolved in group "
        f"{label_set_text(notification.group_labels)}",
        "",
    ]
    for alert in notification.alerts:
        lines += [*_alert_lines(alert), ""]
    if external_url:
        lines.append(f"Alerts: {external_url.rstrip('/')}/alerts")
    return "\n".join(lines).rstrip("\n") + "\n"


def _one_line(text: str) -> str:
    """Label values may hold line breaks; a header may not."""
    return " ".join(text.splitlines())


def email_message(notification: Notification, email: Email, external_url: str = "") -> EmailMessage:
    """The email of a notification: subject from :func:`headline`, plain-text body."""
    message = EmailMessage()
    message["From"] = email.sender
    message["To"] = email.to
    message["Subject"] = _one_line(headline(notification))
    message["Date"] = format_datetime(datetime.fromtimestamp(notification.at, UTC))
    message["Message-ID"] = make_msgid(domain="alwayson")
    message["X-Alwayson-Group-Key"] = _one_line(notification.group_key)
    message["X-Alwayson-Status"] = notification.status
    message.set_content(text_body(notification, external_url))
    return message


def slack_payload(
    notification: Notification, channel: str | None = None, external_url: str = ""
) -> dict[str, Any]:
    """A Slack-compatible incoming-webhook body: text, optional channel, and one
    attachment per status (firing ``danger``, resolved ``good``)."""
    payload: dict[str, Any] = {"text": headline(notification)}
    if channel:
        payload["channel"] = channel
    attachments = []
    for status, color, alerts in (
        ("firing", "danger", notification.firing),
        ("resolved", "good", notification.resolved),
    ):
        if not alerts:
            continue
        text = "\n".join(line for alert in alerts for line in _alert_lines(alert))
        attachment: dict[str, Any] = {
            "color": color,
            "title": f"{len(alerts)} {status}",
            "text": text,
            "fallback": f"{len(alerts)} {status}: "
            + ", ".join(a.labels.get("alertname", "?") for a in alerts),
        }
        if external_url:
            attachment["title_link"] = f"{external_url.rstrip('/')}/alerts"
        attachments.append(attachment)
    payload["attachments"] = attachments
    return payload


# -- delivery ---------------------------------------------------------------------------


class Dispatcher:
    """Sends notifications in background tasks, with retries; keeps the last attempts.

    ``sleep`` and ``monotonic`` are injected so tests of the backoff need not wait;
    ``on_attempt`` sees every attempt's record (to persist it) and must not block.
    """

    def __init__(
        self,
        *,
        external_url: str = "",
        sleep: Sleep = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        on_attempt: AttemptHook | None = None,
        base_delay: float = BASE_DELAY,
        max_delay: float = MAX_DELAY,
        keep_attempts: int = 1000,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.external_url = external_url
        self._sleep = sleep
        self._monotonic = monotonic
        self._on_attempt = on_attempt
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._attempts: deque[dict[str, Any]] = deque(maxlen=keep_attempts)
        self._tasks: set[asyncio.Task[bool]] = set()
        self._http = httpx.AsyncClient(
            transport=transport, follow_redirects=False, verify=web_context()
        )
        self._closed = False

    def send(
        self, notification: Notification, receiver: Receiver, now: float
    ) -> asyncio.Task[bool]:
        """Start delivering in the background; the task's result says if it got through.
        ``now`` is the wall time of the first attempt (later ones add elapsed time)."""
        if self._closed:
            raise RuntimeError("the dispatcher is closed")
        task = asyncio.get_running_loop().create_task(
            self.deliver(notification, receiver, now),
            name=f"notify {receiver.name} {notification.group_key}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def deliver(self, notification: Notification, receiver: Receiver, now: float) -> bool:
        """Deliver with up to ``receiver.max_attempts`` attempts; True once one succeeds."""
        started = self._monotonic()
        for attempt in range(1, receiver.max_attempts + 1):
            begun = started if attempt == 1 else self._monotonic()
            record: dict[str, Any] = {
                "receiver": receiver.name,
                "kind": receiver.kind,
                "group_key": notification.group_key,
                "alert_status": notification.status,
                "alerts": len(notification.alerts),
                "attempt": attempt,
                "max_attempts": receiver.max_attempts,
                "at": now + (begun - started),
                "ok": False,
                "status": None,
                "error": None,
                "duration": 0.0,
                "final": False,
                "retry_in": None,
            }
            delay: float | None = None
            try:
                record["status"] = await self._attempt(notification, receiver)
                record["ok"] = record["final"] = True
            except DeliveryRejected as exc:
                record.update(status=exc.status, error=str(exc), final=True)
            except DeliveryRetryable as exc:
                record.update(status=exc.status, error=str(exc))
                if attempt == receiver.max_attempts:
                    record["final"] = True
                    record["error"] = f"{exc}; gave up after {attempt} attempts"
                else:
                    backoff = backoff_delay(attempt, self._base_delay, self._max_delay)
                    delay = min(self._max_delay, max(backoff, exc.retry_after))
                    record["retry_in"] = delay
            except Exception as exc:  # a bug here must still end in a logged attempt
                log.exception("notifying %s failed unexpectedly", receiver.name)
                record.update(error=f"{type(exc).__name__}: {exc}", final=True)
            record["duration"] = self._monotonic() - begun
            self._record(record)
            if delay is None:
                return bool(record["ok"])
            await self._sleep(delay)
        return False  # pragma: no cover - the loop returns on its last attempt

    def attempts(self) -> list[dict[str, Any]]:
        """The latest attempts, oldest first (copies)."""
        return [dict(record) for record in self._attempts]

    @property
    def pending(self) -> int:
        """Deliveries still running or waiting to retry."""
        return len(self._tasks)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every delivery started so far has ended (or ``timeout`` passes)."""
        tasks = set(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def close(self) -> None:
        """Cancel deliveries still running, wait for them, and close the HTTP client."""
        self._closed = True
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.aclose()

    def _record(self, record: dict[str, Any]) -> None:
        self._attempts.append(record)
        (log.info if record["ok"] else log.warning)(
            "notify %s (%s) %s attempt %d: %s",
            record["receiver"],
            record["kind"],
            record["group_key"],
            record["attempt"],
            "ok" if record["ok"] else record["error"],
        )
        if self._on_attempt is not None:
            try:
                self._on_attempt(dict(record))
            except Exception:  # a broken hook must not stop deliveries
                log.exception("the attempt hook failed")

    async def _attempt(self, notification: Notification, receiver: Receiver) -> int | None:
        if receiver.webhook is not None:
            body = webhook_payload(notification, self.external_url)
            return await self._post(receiver.webhook.url, body, receiver.webhook.timeout)
        if receiver.slack is not None:
            slack = receiver.slack
            body = slack_payload(notification, slack.channel, self.external_url)
            return await self._post(slack.url, body, slack.timeout)
        assert receiver.email is not None
        return await _send_email(
            email_message(notification, receiver.email, self.external_url), receiver.email
        )

    async def _post(self, url: str, body: dict[str, Any], timeout: float) -> int:
        try:
            response = await self._http.post(url, json=body, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise DeliveryRetryable(f"timed out after {timeout:g}s ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise DeliveryRetryable(
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            ) from exc
        except httpx.InvalidURL as exc:
            raise DeliveryRejected(f"invalid URL {url!r}: {exc}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return status
        reason = f"HTTP {status} {response.reason_phrase}".rstrip()
        if status in (408, 429) or status >= 500:
            retry_after = _retry_after(response.headers.get("retry-after"))
            raise DeliveryRetryable(reason, status, retry_after)
        raise DeliveryRejected(reason, status)


def _retry_after(value: str | None) -> float:
    if value is None:
        return 0.0
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    return 0.0


async def _send_email(message: EmailMessage, email: Email) -> int:
    host, port = split_hostport(email.smarthost)
    try:
        await aiosmtplib.send(
            message,
            hostname=host,
            port=port,
            timeout=email.timeout,
            start_tls=email.starttls,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [refused.code for refused in exc.recipients]
        text = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        if codes and all(code >= 500 for code in codes):
            raise DeliveryRejected(f"recipients refused: {text}", codes[0]) from exc
        raise DeliveryRetryable(f"recipients refused: {text}", codes[0] if codes else None) from exc
    except aiosmtplib.SMTPResponseException as exc:
        reason = f"SMTP {exc.code} {exc.message}"
        if exc.code >= 500:
            raise DeliveryRejected(reason, exc.code) from exc
        raise DeliveryRetryable(reason, exc.code) from exc
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise DeliveryRetryable(f"{type(exc).__name__}: {exc}") from exc
    return 250
