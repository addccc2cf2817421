"""Calls from one service to another, always through the site's gateway (``ALWAYSON_GATEWAY``).

A failed hop becomes an :class:`~bank.web.HTTPError` that names the hop: the hop's own 4xx
is passed on (its status and message), anything else is a 502 (504 on a timeout).
"""

from __future__ import annotations

import os
from typing import Any

from bank.client import HttpClient, UpstreamError
from bank.web import App, HTTPError, Request

_clients: dict[int, HttpClient] = {}


def gateway(app: App) -> HttpClient:
    """The app's pooled client to its gateway, created on first use."""
    client = _clients.get(id(app))
    if client is None:
        if not app.gateway:
            raise HTTPError(503, "ALWAYSON_GATEWAY is not set: cannot call other services")
        timeout = float(os.environ.get("BANK_HOP_TIMEOUT", "2"))
        client = HttpClient(app.gateway, timeout=timeout, agent=f"bank-{app.service}")
        _clients[id(app)] = client
        app.on_shutdown.append(client.close)
    return client


async def call(
    request: Request,
    hop: str,
    method: str,
    path: str,
    *,
    json: Any = None,
    idempotency_key: str | None = None,
) -> tuple[Any, str]:
    """Call ``hop`` (a service name, for errors and metrics); return (JSON body, served by)."""
    app = request.app
    outcomes = app.metrics.counter(
        "bank_upstream_requests_total", "Calls to other services, by hop and outcome."
    )
    headers = {"x-request-id": request.request_id}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    try:
        client = gateway(app)
    except HTTPError as exc:
        exc.details["hop"] = hop
        raise
    try:
        response = await client.request(method, path, json=json, headers=headers)
    except UpstreamError as exc:
        outcomes.inc(hop=hop, outcome=exc.kind)
        status = 504 if exc.kind == "timeout" else 502
        raise HTTPError(status, f"{hop}: {exc.message}", hop=hop, kind=exc.kind) from None
    served_by = response.headers.get("x-served-by", "unknown")
    outcomes.inc(hop=hop, outcome=str(response.status))
    try:
        body = response.json()
    except UpstreamError:
        body = None
    if response.status < 400 and body is not None:
        return body, served_by
    if isinstance(body, dict):
        upstream_error = str(body.get("error", f"status {response.status}"))
    else:
        upstream_error = response.body[:200].decode("utf-8", "replace") or "empty body"
    details: dict[str, Any] = {
        "hop": hop,
        "upstream_status": response.status,
        "upstream_error": upstream_error,
        "served_by": served_by,
    }
    if isinstance(body, dict):
        details.update({k: v for k, v in body.items() if k in ("fields", "reasons", "account")})
    # A 4xx from the service itself is the caller's problem and is passed on; a 4xx the
    # gateway made up (no route: no x-served-by), a 5xx or a non-JSON answer is a bad hop.
    from_service = served_by != "unknown" and body is not None
    status = response.status if 400 <= response.status < 500 and from_service else 502
    raise HTTPError(status, f"{hop}: {upstream_error}", **details)
