"""Monitoring routes: metrics for Prometheus, queries, alerts, silences, autoscaling,
reports."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query
from fastapi.responses import HTMLResponse, PlainTextResponse
from pydantic import BaseModel, Field

from alwayson.api.schemas import ERROR_ANSWERS
from alwayson.control.controller import Controller
from alwayson.metrics.promql import QueryError
from alwayson.observe.alerting import MAX_SILENCE
from alwayson.observe.reporting import render_html
from alwayson.util.durations import parse_duration
from alwayson.util.errors import PermanentError

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
MAX_LOOKBACK = 366 * 86400.0
"""The furthest back a range query or a report looks (``since``): a year."""


class SilenceBody(BaseModel):
    matchers: dict[str, str] = Field(
        min_length=1,
        max_length=32,
        description="label: value, or label: ~regex (whole value), e.g. {alertname: InstanceDown}.",
    )
    duration: str = Field(
        default="2h", max_length=32, description="How long, e.g. '30m', '2h'; at most 30d."
    )
    comment: str = Field(default="", max_length=1000)


def _seconds(text: str, what: str, most: float) -> float:
    """``text`` as seconds, or a PermanentError (400) naming the field ``what`` and its
    bound ``most``."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise PermanentError(f"{what}: {exc}") from None
    if seconds > most:
        days = most / 86400
        raise PermanentError(
            f"{what}: {text!r} is more than {days:g} days; ask for {days:g}d or less"
        )
    return seconds


def mount_observing(app: FastAPI, controller: Controller, guarded: list[Any], actor: Any) -> None:
    obs = controller.observatory

    @app.get(
        "/metrics", dependencies=guarded, responses=ERROR_ANSWERS, response_class=PlainTextResponse
    )
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(obs.exposition(time.time()), media_type=PROMETHEUS_TEXT)

    @app.get("/api/v1/query", dependencies=guarded, responses=ERROR_ANSWERS)
    async def query(
        expr: str, at: float | None = Query(None, allow_inf_nan=False)
    ) -> dict[str, Any]:
        try:
            got = obs.engine.instant(expr, at if at is not None else time.time())
        except QueryError as exc:
            raise PermanentError(f"query: {exc}") from None
        if isinstance(got, float):
            return {"type": "scalar", "value": got}
        return {"type": "vector", "result": [{"labels": p.labels, "value": p.value} for p in got]}

    @app.get("/api/v1/query_range", dependencies=guarded, responses=ERROR_ANSWERS)
    async def query_range(
        expr: str, since: str = "1h", step: float = Query(15.0, gt=0, allow_inf_nan=False)
    ) -> dict[str, Any]:
        end = time.time()
        start = end - _seconds(since, "since", MAX_LOOKBACK)
        if (end - start) / step > 11_000:
            raise PermanentError("too many points: use a larger step or a shorter range")
        try:
            lines = obs.engine.range(expr, start, end, step)
        except QueryError as exc:
            raise PermanentError(f"query: {exc}") from None
        return {"result": [{"labels": x.labels, "points": x.points} for x in lines]}

    @app.get("/api/v1/alerts", dependencies=guarded, responses=ERROR_ANSWERS)
    async def alerts(deliveries: int = Query(50, ge=0, le=500)) -> dict[str, Any]:
        now = time.time()
        return {
            "alerts": obs.alerts(now),
            "silences": obs.book.silences(now),
            "deliveries": obs.deliveries[-deliveries:] if deliveries else [],
            "rules": [r.name for r in obs.rules(controller.spec())],
        }

    @app.get("/api/v1/silences", dependencies=guarded, responses=ERROR_ANSWERS)
    async def silences() -> list[dict[str, Any]]:
        return list(obs.book.silences(time.time()))

    @app.post("/api/v1/silences", dependencies=guarded, responses=ERROR_ANSWERS)
    async def add_silence(body: SilenceBody, who: str = Depends(actor)) -> dict[str, Any]:
        seconds = _seconds(body.duration, "duration", MAX_SILENCE)
        if seconds <= 0:
            raise PermanentError(f"duration: {body.duration!r} is no time; ask for e.g. '2h'")
        try:
            made = obs.silence(body.matchers, obs.clock.wall() + seconds, body.comment, who)
        except ValueError as exc:  # the duration is checked above: the matchers are wrong
            raise PermanentError(
                f"matchers: {exc}; write each as label: value or label: ~regex"
            ) from None
        await obs.save()
        return _plain(made)

    @app.delete("/api/v1/silences/{ident}", dependencies=guarded, responses=ERROR_ANSWERS)
    async def expire_silence(ident: str) -> dict[str, Any]:
        made = obs.expire(ident)
        await obs.save()
        return _plain(made)

    @app.get("/api/v1/autoscale/history", dependencies=guarded, responses=ERROR_ANSWERS)
    async def autoscale_history(
        service: str | None = None, limit: int = Query(50, ge=1, le=10_000)
    ) -> list[dict[str, Any]]:
        return await obs.history(service, limit)

    @app.get(
        "/api/v1/reports/{kind}", dependencies=guarded, responses=ERROR_ANSWERS, response_model=None
    )
    async def report(
        kind: Literal["utilisation", "health"], since: str = "24h", html: bool = False
    ) -> dict[str, Any] | HTMLResponse:
        made = await obs.report(kind, _seconds(since, "since", MAX_LOOKBACK))
        if html:
            return HTMLResponse(render_html(made))
        data: dict[str, Any] = made.to_json()
        return data


def _plain(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        out: dict[str, Any] = to_json()
        return out
    return dict(vars(value))
