"""The REST API: every route but ``/healthz`` needs the bearer token."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from alwayson import __version__
from alwayson.api.dashboard import mount_dashboard
from alwayson.api.drilling import mount_drills
from alwayson.api.limits import BodyLimit
from alwayson.api.observing import mount_observing
from alwayson.api.reference import mount_reference
from alwayson.api.schemas import (
    ERROR_ANSWERS,
    ChangesOut,
    CredentialsBody,
    DeployBody,
    MessageOut,
    PromoteBody,
    ReplacedOut,
    RollbackBody,
    ScaleBody,
    SiteBody,
    SpecBody,
)
from alwayson.api.tokens import Principal, TokenBook, needed_role
from alwayson.control.controller import Controller
from alwayson.release.model import Release
from alwayson.util.errors import (
    ConflictError,
    NotFoundError,
    PermanentError,
    SpecError,
    TemporaryError,
)

LOG_POLL = 0.2


def bearer_check(book: TokenBook) -> Callable[..., Principal]:
    """A FastAPI dependency: 401 unless the request carries ``Bearer <token>`` of a token
    the book knows, 403 unless its role may make this request (``needed_role``). The
    principal is kept on the request for :func:`actor`."""

    def authorize(request: Request, authorization: str = Header(default="")) -> Principal:
        scheme, _, given = authorization.partition(" ")
        principal = book.authenticate(given.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            raise HTTPException(401, "missing or wrong bearer token (see .alwayson/token)")
        needed = needed_role(request.method, request.url.path)
        if not principal.may(needed):
            raise HTTPException(
                403,
                f"token {principal.name!r} has role {principal.role}; this request needs "
                f"{needed} (`alwayson token create NAME --role {needed}` makes such a token)",
            )
        request.state.principal = principal
        return principal

    return authorize


COMMAND = re.compile(r"^[a-z][a-z -]{0,39}$")


def actor(request: Request, x_alwayson_command: str = Header(default="api")) -> str:
    """Who the audit log names: the authenticated token's name, then in brackets the
    command the client says it ran (a label only, and only plain words)."""
    principal: Principal = request.state.principal
    command = x_alwayson_command if COMMAND.match(x_alwayson_command) else "api"
    return f"{principal.name} ({command})"


def answer_errors(app: FastAPI) -> None:
    """Each kind of error as its status code, with the reason as JSON in one shape
    (``schemas.ErrorOut``): ``{"error": ...}``, plus ``problems`` for a spec's faults."""

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": invalid_input(exc)}, status_code=422)

    @app.exception_handler(SpecError)
    async def _spec_error(_: Request, exc: SpecError) -> JSONResponse:
        problems = [dataclasses.asdict(p) for p in exc.problems]
        return JSONResponse({"error": str(exc), "problems": problems}, status_code=422)

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=409)

    @app.exception_handler(PermanentError)
    async def _permanent(_: Request, exc: PermanentError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(TemporaryError)
    async def _temporary(_: Request, exc: TemporaryError) -> JSONResponse:
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
        return JSONResponse({"error": str(exc)}, status_code=503, headers=headers)


def invalid_input(exc: RequestValidationError) -> str:
    """One sentence per fault, each naming its field: ``duration: Field required``."""
    faults = []
    for error in exc.errors():
        source, *inside = [str(part) for part in error.get("loc", ())] or ["request"]
        if error.get("type") == "json_invalid":
            faults.append(f"body: not valid JSON ({error.get('ctx', {}).get('error', '')})")
            continue
        where = ".".join(inside) or source
        if source in ("query", "path", "header"):
            where = f"{where} ({source})"
        faults.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(faults) or "the request does not validate"


def create_app(
    controller: Controller, book: TokenBook, on_down: Callable[[], None] | None = None
) -> FastAPI:
    app = FastAPI(
        title="alwayson",
        version=__version__,
        description="Control plane of an alwayson platform. Send `Authorization: Bearer "
        "<token>`: the owner's token is in the state directory (`.alwayson/token`, mode "
        "0600); `alwayson token create NAME --role read|operate|admin` makes others (403 "
        "when a token's role may not make a request). "
        'Request bodies are capped at 1 MiB (413); every error answers `{"error": ...}`.',
        docs_url=None,  # Swagger UI and ReDoc load from a CDN: /docs is served by reference.py
        redoc_url=None,
    )
    app.add_middleware(BodyLimit)

    authorize = bearer_check(book)
    answer_errors(app)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "verdict": controller.verdict}

    guarded = [Depends(authorize)]

    @app.get("/api/v1/status", dependencies=guarded, responses=ERROR_ANSWERS)
    async def status() -> dict[str, Any]:
        return controller.status()

    @app.post("/api/v1/plan", dependencies=guarded, responses=ERROR_ANSWERS)
    async def plan(body: SpecBody) -> ChangesOut:
        changes = await controller.plan(body.text, body.path, body.secrets)
        return ChangesOut(changes=[str(c) for c in changes])

    @app.post("/api/v1/apply", dependencies=guarded, responses=ERROR_ANSWERS)
    async def apply(body: SpecBody, who: str = Depends(actor)) -> ChangesOut:
        result = await controller.apply(body.text, body.path, who, body.allow_destroy, body.secrets)
        return ChangesOut(changes=[str(c) for c in result.changes], digest=result.digest)

    @app.post("/api/v1/scale", dependencies=guarded, responses=ERROR_ANSWERS)
    async def scale(body: ScaleBody, who: str = Depends(actor)) -> MessageOut:
        return MessageOut(
            message=await controller.scale(body.service, body.replicas, body.site, who)
        )

    @app.post("/api/v1/gateways/restart", dependencies=guarded, responses=ERROR_ANSWERS)
    async def restart_gateways(body: SiteBody, who: str = Depends(actor)) -> list[ReplacedOut]:
        results = await controller.restart_gateways(body.site, who)
        return [ReplacedOut.model_validate(r) for r in results]

    async def shown(release: Release) -> dict[str, Any]:
        data = release.model_dump(mode="json")
        if release.phase.active:
            data["totals"] = await controller.releases.live_totals(release)
        data["rollback_seconds"] = release.rollback_seconds
        data["summary"] = release.summary()
        return data

    @app.get("/api/v1/databases", dependencies=guarded, responses=ERROR_ANSWERS)
    async def databases() -> list[dict[str, Any]]:
        """Every database: lease, per-site role, lag, endpoint, alerts, recent records."""
        return await controller.databases.status()

    @app.post("/api/v1/databases/{db}/credentials", dependencies=guarded, responses=ERROR_ANSWERS)
    async def db_credentials(
        db: str, body: CredentialsBody, who: str = Depends(actor)
    ) -> dict[str, Any]:
        """The endpoint, user and password of a database's role, for an operator's psql
        (admin tokens only; audited, never with the password)."""
        return await controller.databases.credentials(db, body.role, body.site, who)

    @app.get("/api/v1/databases/{db}/records", dependencies=guarded, responses=ERROR_ANSWERS)
    async def db_records(db: str, limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        controller.databases.database(db)
        return await controller.databases.records(db, limit)

    @app.get(
        "/api/v1/databases/{db}/records/{ident}", dependencies=guarded, responses=ERROR_ANSWERS
    )
    async def db_record(db: str, ident: str) -> dict[str, Any]:
        found = await controller.databases.result(db, ident)
        if found is None:
            raise HTTPException(404, f"request {ident} has no result yet")
        return found

    @app.post("/api/v1/databases/{db}/failover", dependencies=guarded, responses=ERROR_ANSWERS)
    async def db_failover(
        db: str, body: dict[str, Any], who: str = Depends(actor)
    ) -> dict[str, Any]:
        return await controller.databases.failover(db, str(body.get("to", "")), who)

    @app.post("/api/v1/databases/{db}/requests", dependencies=guarded, responses=ERROR_ANSWERS)
    async def db_request(
        db: str, body: dict[str, Any], who: str = Depends(actor)
    ) -> dict[str, Any]:
        """switchover {to}, failback, backup {verify}, verify {backup}, restore {to_time,
        into}, drop-restore {into}: carried out by a site agent; poll records/{id}."""
        op = str(body.pop("op", ""))
        return await controller.databases.request(db, op, who, **_db_params(op, body))

    @app.get("/api/v1/databases/{db}/backups", dependencies=guarded, responses=ERROR_ANSWERS)
    async def db_backups(db: str) -> list[dict[str, Any]]:
        controller.databases.database(db)
        return await controller.databases.backups(db)

    @app.post("/api/v1/releases", dependencies=guarded, responses=ERROR_ANSWERS)
    async def deploy(body: DeployBody, who: str = Depends(actor)) -> dict[str, Any]:
        release = await controller.deploy(
            body.service, body.version, body.run, body.strategy, body.settings, who
        )
        return await shown(release)

    @app.get("/api/v1/releases", dependencies=guarded, responses=ERROR_ANSWERS)
    async def releases(service: str | None = None) -> list[dict[str, Any]]:
        """The running releases, and the last one of every service that has none running."""
        spec = controller.spec()
        names = [service] if service else [s.name for s in spec.services]
        out = []
        for name in names:
            running = controller.releases.running(name)
            if running is not None:
                out.append(await shown(running))
                continue
            history = await controller.releases.history(name)
            if history:
                last = Release.model_validate(history[-1])
                out.append(await shown(last))
        return out

    @app.get("/api/v1/releases/history", dependencies=guarded, responses=ERROR_ANSWERS)
    async def release_history(service: str | None = None) -> list[dict[str, Any]]:
        items = await controller.releases.history(service)
        return [await shown(Release.model_validate(item)) for item in items]

    @app.post("/api/v1/releases/{service}/promote", dependencies=guarded, responses=ERROR_ANSWERS)
    async def promote(service: str, body: PromoteBody, who: str = Depends(actor)) -> dict[str, Any]:
        release = await controller.releases.promote(service, body.full)
        await controller.record_event("release", service, f"promoted by {who}")
        return await shown(release)

    @app.post("/api/v1/releases/{service}/abort", dependencies=guarded, responses=ERROR_ANSWERS)
    async def abort(service: str, who: str = Depends(actor)) -> dict[str, Any]:
        return await shown(await controller.releases.abort(service, who))

    @app.post("/api/v1/releases/{service}/rollback", dependencies=guarded, responses=ERROR_ANSWERS)
    async def rollback(
        service: str, body: RollbackBody, who: str = Depends(actor)
    ) -> dict[str, Any]:
        return await shown(await controller.rollback(service, body.to, who))

    @app.post("/api/v1/upgrade/gateway", dependencies=guarded, responses=ERROR_ANSWERS)
    async def upgrade_gateway(body: SiteBody, who: str = Depends(actor)) -> dict[str, Any]:
        return await controller.upgrade_gateways(body.site, who)

    @app.post("/api/v1/down", dependencies=guarded, responses=ERROR_ANSWERS)
    async def down(who: str = Depends(actor)) -> MessageOut:
        message = await controller.down(who)
        if on_down is not None:
            asyncio.get_running_loop().call_later(0.2, on_down)
        return MessageOut(message=message)

    @app.get("/api/v1/audit", dependencies=guarded, responses=ERROR_ANSWERS)
    async def audit(limit: int = Query(100, ge=1, le=10_000)) -> list[dict[str, Any]]:
        return [e.__dict__ for e in await controller.store.list_audit(limit)]

    @app.get("/api/v1/events", dependencies=guarded, responses=ERROR_ANSWERS)
    async def events(
        limit: int = Query(100, ge=1, le=10_000), kind: str | None = None
    ) -> list[dict[str, Any]]:
        # The agents' events wait on etcd until filed: file them first, so what was done
        # before this request is listed (etcd out of reach: list what is filed).
        with contextlib.suppress(TemporaryError):
            await controller.databases.file_events()
        return [e.__dict__ for e in await controller.store.list_events(limit, kind)]

    mount_observing(app, controller, guarded, actor)
    mount_drills(app, controller, guarded, actor)
    mount_dashboard(app, controller, guarded)
    mount_reference(app)

    @app.get("/api/v1/logs", dependencies=guarded, responses=ERROR_ANSWERS)
    async def logs(
        service: str,
        site: str | None = None,
        tail: int = Query(50, ge=0, le=100_000),
        follow: bool = False,
    ) -> StreamingResponse:
        files = _log_files(controller, service, site)
        if not files:
            raise NotFoundError(
                f"no logs for service {service!r}"
                + (f" in site {site!r}" if site else "")
                + "; `alwayson status` lists services and sites"
            )
        return StreamingResponse(_stream(files, tail, follow), media_type="text/plain")

    return app


DB_REQUESTS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "switchover": (frozenset({"to"}), frozenset()),
    "failback": (frozenset(), frozenset()),
    "backup": (frozenset(), frozenset({"verify"})),
    "verify": (frozenset({"backup"}), frozenset()),
    "restore": (frozenset({"into"}), frozenset({"to_time"})),
    "drop-restore": (frozenset({"into"}), frozenset()),
}
"""Each database request: the fields it needs, and those it may have."""
_DB_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "to": (str,),
    "backup": (str,),
    "into": (str,),
    "verify": (bool,),
    "to_time": (int, float),
}


def _db_params(op: str, body: dict[str, Any]) -> dict[str, Any]:
    """The fields of a database request, checked (400 naming the field otherwise)."""
    if op not in DB_REQUESTS:
        raise PermanentError(
            f"op: unknown database request {op!r} (one of {', '.join(DB_REQUESTS)})"
        )
    needed, optional = DB_REQUESTS[op]
    missing = sorted(needed - body.keys())
    if missing:
        raise PermanentError(f"{missing[0]}: a {op} request needs it")
    for field, value in body.items():
        if field not in needed | optional:
            allowed = ", ".join(sorted(needed | optional)) or "no other field"
            raise PermanentError(f"{field}: not a field of a {op} request (it takes {allowed})")
        wanted = _DB_FIELD_TYPES[field]
        if value is None and field in optional:
            continue
        not_finite = isinstance(value, float) and not math.isfinite(value)
        if (
            not isinstance(value, wanted)
            or (bool not in wanted and isinstance(value, bool))
            or not_finite
        ):
            kind = " or ".join(t.__name__ for t in wanted)
            raise PermanentError(f"{field}: expected {kind}, got {value!r}")
    return body


def _log_files(controller: Controller, service: str, site: str | None) -> dict[str, Path]:
    known = {i.service for i in controller.desired().values()} | {
        s.spec.service for s in controller.runtime.statuses()
    }
    if service not in known:
        raise NotFoundError(f"unknown service {service!r} (services: {', '.join(sorted(known))})")
    root = controller.state_dir / "logs"
    files: dict[str, Path] = {}
    for folder in sorted(root.iterdir()) if root.exists() else []:
        if site is not None and folder.name != site:
            continue
        for path in sorted(folder.glob(f"{service}-{folder.name}-*.log")):
            files[path.stem] = path
        if service in ("gateway", "frontdoor"):
            for path in sorted(folder.glob(f"{service}@*.log")):
                files[path.stem] = path
    return files


async def _stream(files: dict[str, Path], tail: int, follow: bool) -> AsyncIterator[bytes]:
    offsets: dict[str, int] = {}
    for name, path in files.items():
        data = path.read_bytes()
        offsets[name] = len(data)
        lines = data.splitlines()[-tail:] if tail else []
        for line in lines:
            yield f"[{name}] ".encode() + line + b"\n"
    while follow:
        await asyncio.sleep(LOG_POLL)
        for name, path in files.items():
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size < offsets[name]:
                offsets[name] = 0
            if size > offsets[name]:
                with path.open("rb") as handle:
                    handle.seek(offsets[name])
                    chunk = handle.read(size - offsets[name])
                offsets[name] = size
                complete, _, rest = chunk.rpartition(b"\n")
                offsets[name] -= len(rest)
                for line in complete.splitlines():
                    yield f"[{name}] ".encode() + line + b"\n"
