"""The drills' routes: start, follow, cancel, history, reports; and the site-loss switch
the drill process uses."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Query
from fastapi.responses import HTMLResponse

from alwayson.api.schemas import ERROR_ANSWERS
from alwayson.drills.scenarios import SCENARIOS
from alwayson.util.errors import PermanentError

if TYPE_CHECKING:
    from alwayson.control.controller import Controller


def mount_drills(app: FastAPI, controller: Controller, guarded: list[Any], actor: Any) -> None:
    ops = controller.drills

    @app.get("/api/v1/drills/scenarios", dependencies=guarded, responses=ERROR_ANSWERS)
    async def scenarios() -> list[dict[str, Any]]:
        return [
            {
                "name": s.name,
                "summary": s.summary,
                "fault": s.fault,
                "target": s.target,
                "hold_seconds": s.hold,
                "needs_database": s.needs_database,
                "max_failed": s.max_failed,
            }
            for s in SCENARIOS.values()
        ]

    @app.post("/api/v1/drills", dependencies=guarded, responses=ERROR_ANSWERS, status_code=201)
    async def start(body: dict[str, Any], who: str = Depends(actor)) -> dict[str, Any]:
        """{scenario, site?, rate?, duration?, journey?}: starts the drill in its own process;
        poll GET /api/v1/drills/{id} for progress and the result."""
        return await ops.start(
            str(body.get("scenario", "")),
            site=_text(body, "site"),
            rate=_number(body, "rate"),
            duration=_number(body, "duration"),
            journey=_text(body, "journey"),
            actor=who,
        )

    @app.get("/api/v1/drills", dependencies=guarded, responses=ERROR_ANSWERS)
    async def history(limit: int = Query(50, ge=1, le=10_000)) -> list[dict[str, Any]]:
        return await ops.history(limit)

    @app.get("/api/v1/drills/{ident}", dependencies=guarded, responses=ERROR_ANSWERS)
    async def show(ident: str) -> dict[str, Any]:
        return await ops.get(ident)

    @app.post("/api/v1/drills/{ident}/cancel", dependencies=guarded, responses=ERROR_ANSWERS)
    async def cancel(ident: str, who: str = Depends(actor)) -> dict[str, Any]:
        return await ops.cancel(ident, who)

    @app.get(
        "/api/v1/drills/{ident}/report",
        dependencies=guarded,
        responses=ERROR_ANSWERS,
        response_class=HTMLResponse,
    )
    async def report(ident: str) -> HTMLResponse:
        path = ops.report(await ops.get(ident))
        return HTMLResponse(path.read_text())

    @app.post("/api/v1/sites/{site}/lose", dependencies=guarded, responses=ERROR_ANSWERS)
    async def lose(site: str, body: dict[str, Any], who: str = Depends(actor)) -> dict[str, Any]:
        """Hold ``site`` down and kill every process in it (a drill's site loss)."""
        return await ops.lose_site(site, str(body.get("drill", "")), who)

    @app.post("/api/v1/sites/{site}/restore", dependencies=guarded, responses=ERROR_ANSWERS)
    async def restore(site: str, body: dict[str, Any], who: str = Depends(actor)) -> dict[str, Any]:
        return await ops.restore_site(site, str(body.get("drill", "")), who)


def _number(body: dict[str, Any], field: str) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise PermanentError(f"{field}: expected a number, got {value!r}")
    return number


def _text(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise PermanentError(f"{field}: expected a string, got {value!r}")
    return value
