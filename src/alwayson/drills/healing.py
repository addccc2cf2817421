"""After the undo: waiting for the platform to be whole again, and failing back.

Whole means every instance ready (the controller says ``converged``) and every database
replicating again: a synchronous one with its sync standby streaming, an asynchronous one
with a standby. A site the fault fenced (the old primary) rejoins as a standby by itself
(pg_rewind or a fresh base backup; nothing is asked of it). A scenario that moves the
primary (``site-loss``) then moves it back where it was before the fault, by a
switchover, so the platform ends the drill as it began.

The drill's own bookkeeping (the timeline, the phase, interruptible polling) is reached
through ``Progress``, which ``running.Drill`` provides.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from alwayson.drills.model import DatabaseTarget, DrillContext
from alwayson.drills.remote import ControllerApi
from alwayson.drills.scenarios import Scenario

HEAL_TIMEOUT = 120.0


class Progress(Protocol):
    def mark(self, kind: str, label: str, at: float | None = None) -> None:
        """Put a moment on the drill's timeline (``at`` defaults to now)."""
        ...

    def enter(self, phase: str, message: str) -> None:
        """Start a phase of the drill (written to its progress file)."""
        ...

    async def until(
        self, check: Callable[[], Awaitable[bool]], timeout: float, what: str
    ) -> float | None:
        """Poll ``check`` until true (returns when, wall clock) or ``timeout`` (None);
        raises when the drill is interrupted."""
        ...


async def heal(
    api: ControllerApi,
    ctx: DrillContext,
    scenario: Scenario,
    home: dict[str, str],
    progress: Progress,
) -> bool:
    """Wait until the platform is whole again (and, for a site loss, fail back); True when
    it is. ``home``: each database's primary site before the fault."""
    progress.enter("heal", "waiting for every instance to be ready again")

    async def converged() -> bool:
        status = await api.status()
        return bool(status.get("converged"))

    whole = True
    at = await progress.until(converged, HEAL_TIMEOUT, "the platform whole again after the undo")
    if at is not None:
        progress.mark("restored", "every instance ready again", at)
    whole = whole and at is not None
    for db in ctx.databases:
        asked: list[str] = []
        at = await progress.until(
            functools.partial(_rejoined, api, db, asked, progress),
            HEAL_TIMEOUT,
            f"{db.name} replicating again",
        )
        if at is not None:
            progress.mark("replicating", f"{db.name}: standby streaming again", at)
        whole = whole and at is not None
    if scenario.failback:
        whole = await failback(api, ctx, home, progress) and whole
    return whole


async def database(api: ControllerApi, name: str) -> dict[str, Any]:
    """The controller's view of database ``name`` (empty when it does not list it)."""
    return next((d for d in await api.databases() if d.get("name") == name), {})


async def _rejoined(
    api: ControllerApi, db: DatabaseTarget, asked: list[str], progress: Progress
) -> bool:
    """Replicating again; a site fenced by the fault (the old primary) rejoins as a
    standby by itself: its fencing is put on the timeline once."""
    if await replicating(api, db):
        return True
    found = await database(api, db.name)
    fenced = [
        r["site"]
        for r in found.get("sites", [])
        if r.get("role") == "fenced" and not r.get("stale")
    ]
    if fenced and not asked:
        asked.extend(fenced)
        progress.mark(
            "rejoin", f"{db.name}: {', '.join(fenced)} fenced; rejoining as a standby by itself"
        )
    return False


async def replicating(api: ControllerApi, db: DatabaseTarget) -> bool:
    found = await database(api, db.name)
    lease = found.get("lease") or {}
    roles = {r["site"]: r.get("role") for r in found.get("sites", []) if not r.get("stale")}
    standby = [s for s, r in roles.items() if r == "standby"]
    if db.replication == "synchronous":
        return bool(lease.get("holder") and lease.get("sync_standby") in standby)
    return bool(lease.get("holder") and standby)


async def failback(
    api: ControllerApi, ctx: DrillContext, home: dict[str, str], progress: Progress
) -> bool:
    """Every database's primary back in its site of before the fault; True when done."""
    done = True
    for db in ctx.databases:
        site = home.get(db.name, db.primary_site)
        holder = ((await database(api, db.name)).get("lease") or {}).get("holder")
        if holder == site:
            continue
        progress.enter("failback", f"moving {db.name}'s primary back to {site}")
        request = await api.db_request(db.name, "switchover", to=site)
        progress.mark(
            "failback-start", f"{db.name}: switchover to {site} ({request.get('id', '')})"
        )

        async def back_home(db: DatabaseTarget = db, site: str = site) -> bool:
            found = await database(api, db.name)
            return (found.get("lease") or {}).get("holder") == site and await replicating(api, db)

        at = await progress.until(back_home, HEAL_TIMEOUT, f"{db.name} failed back to {site}")
        if at is not None:
            progress.mark("failback", f"{db.name}: primary back in {site}", at)
        done = done and at is not None
    return done
