"""The lease keeper: a small HTTP service in the witness site over the controller's store.

``python -m alwayson.data.keeper --listen 127.3.0.10:7400 --state-dir DIR``

It judges leases (one compare-and-set each, on its own clock) and keeps what agents
report. It is deliberately separate from the controller: the controller may be down or
restarting and the agents still renew, fence and fail over. Every route but ``/healthz``
needs the platform's bearer token.

- ``GET  /v1/db/{db}?sites=a,b``           lease, keeper time, site statuses, request
- ``POST /v1/db/{db}/lease/{op}``          op: renew | acquire | release | handover
- ``PUT  /v1/db/{db}/site/{site}``         an agent's status
- ``PUT  /v1/db/{db}/record/{kind}/{id}``  a failover/backup record (kind: record | backup)
- ``DELETE /v1/db/{db}/request/{id}``      an agent finished a request
- ``POST /v1/events``                      an event for ``alwayson events``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from alwayson.data import leases
from alwayson.data.keeping import change_lease, database_view, request_key
from alwayson.data.leases import Lease, LeaseRefused
from alwayson.store.base import Event, StateStore
from alwayson.store.sqlite import SQLiteStore
from alwayson.util.addresses import split_hostport
from alwayson.util.clocks import Clock, SystemClock

log = logging.getLogger("alwayson.keeper")


class LeaseOp(BaseModel):
    site: str
    epoch: int = 0
    ttl: float = 6.0
    to: str | None = None
    sync: str | None = None
    synchronous: bool = False
    why: str = ""
    fault_at: float | None = None


class EventIn(BaseModel):
    kind: str
    subject: str
    message: str
    data: dict[str, Any] = {}


def create_keeper_app(store: StateStore, token: str, clock: Clock) -> FastAPI:
    app = FastAPI(title="alwayson lease keeper", docs_url=None, redoc_url=None)

    # async: FastAPI runs a plain ``def`` dependency on a worker thread, which cost a
    # thread hop per request (16 a second from two idle agents) for a string comparison.
    async def authorize(authorization: str = Header(default="")) -> None:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), token):
            raise HTTPException(401, "missing or wrong bearer token")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "now": clock.wall()}

    @app.get("/v1/db/{db}", dependencies=[Depends(authorize)])
    async def view(db: str, sites: str = "") -> dict[str, Any]:
        return await database_view(store, db, [s for s in sites.split(",") if s], clock)

    @app.post("/v1/db/{db}/lease/{op}", dependencies=[Depends(authorize)])
    async def lease_op(db: str, op: str, body: LeaseOp) -> JSONResponse:
        def change(current: Lease | None, now: float) -> Lease:
            if op == "renew":
                return leases.renew(
                    current, body.site, body.epoch, body.ttl, now, body.synchronous, body.sync
                )
            if op == "acquire":
                return leases.acquire(current, body.site, body.ttl, now, body.synchronous)
            if op == "release":
                return leases.release(current, body.site, body.epoch, now, body.why, body.fault_at)
            if op == "handover" and body.to:
                return leases.hand_over(
                    current, body.site, body.epoch, body.to, body.ttl, now, body.fault_at
                )
            raise HTTPException(404, f"no lease operation {op!r}")

        try:
            lease = await change_lease(store, db, clock, change)
        except LeaseRefused as exc:
            document = {"refused": exc.reason, "lease": exc.lease.to_json() if exc.lease else None}
            return JSONResponse(document, status_code=409)
        if op != "renew":
            log.info(
                "%s: %s by %s → holder %s epoch %d", db, op, body.site, lease.holder, lease.epoch
            )
        return JSONResponse({"lease": lease.to_json(), "now": clock.wall()})

    @app.put("/v1/db/{db}/site/{site}", dependencies=[Depends(authorize)])
    async def report(db: str, site: str, body: dict[str, Any]) -> dict[str, str]:
        await store.put(f"db/{db}/site/{site}", {**body, "reported_at": clock.wall()})
        return {"status": "ok"}

    @app.put("/v1/db/{db}/record/{kind}/{ident}", dependencies=[Depends(authorize)])
    async def record(db: str, kind: str, ident: str, body: dict[str, Any]) -> dict[str, str]:
        if kind not in ("record", "backup", "restore"):
            raise HTTPException(404, f"no record kind {kind!r}")
        await store.put(f"db/{db}/{kind}/{ident}", body)
        return {"status": "ok"}

    @app.delete("/v1/db/{db}/request/{ident}", dependencies=[Depends(authorize)])
    async def finish(db: str, ident: str) -> dict[str, str]:
        found = await store.get(request_key(db))
        if found and found.value.get("id") == ident:
            await store.compare_and_set(request_key(db), found.version, {})
        return {"status": "ok"}

    @app.post("/v1/events", dependencies=[Depends(authorize)])
    async def event(body: EventIn) -> dict[str, str]:
        await store.append_event(
            Event(
                at=clock.wall(),
                kind=body.kind,
                subject=body.subject,
                message=body.message,
                data=body.data,
            )
        )
        return {"status": "ok"}

    return app


async def serve(listen: str, state_dir: Path) -> None:
    token = (state_dir / "token").read_text().strip()
    store = await SQLiteStore(state_dir / "state.db").open()
    host, port = split_hostport(listen)
    config = uvicorn.Config(
        create_keeper_app(store, token, SystemClock()),
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
    )
    try:
        await uvicorn.Server(config).serve()
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alwayson.data.keeper")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    logging.Formatter.converter = time.gmtime
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(args.listen, args.state_dir.resolve()))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: the keeper answers every agent several times a second, and
    uvloop's loop and transports cost a fraction of asyncio's per request."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


if __name__ == "__main__":
    main()
