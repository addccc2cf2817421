"""A controller in every site: one leads, elected on etcd; the others follow.

A spec with databases runs an etcd member and a controller in each of its three sites
(``controller@<site>``, started by ``alwayson up`` and then supervised by whichever
leads). Every controller is a candidate (``control/leadership.py``):

- **The leader** builds a :class:`~alwayson.control.controller.Controller` for its term:
  it loads the desired state, the releases, drills, alerts and silences from etcd (the
  ``EtcdStore`` under ``<root>/control/``, every write guarded by the term), adopts the
  running processes and reconciles, serving the whole API. When its term ends (it lost
  etcd, or another controller was elected) it stops acting and becomes a follower.
- **A follower** answers ``/healthz``, ``/api/v1/leader``, and ``audit`` and ``events``
  (read from etcd) itself, and passes every other request to the leader, so the CLI and
  the dashboard work against any controller. While no controller leads (a term changes
  hands, or no etcd quorum is reachable) it answers those with 503 and says why.

Nothing a leader acknowledged lives in its memory only: every change is written to etcd
(a majority of the three sites) before the API answers, so the next leader continues a
release or a drill from its stored step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.types import Receive, Scope, Send

from alwayson import __version__
from alwayson.api.app import answer_errors, bearer_check, create_app
from alwayson.api.client import NO_LEADER_HEADER
from alwayson.api.limits import BodyLimit
from alwayson.api.records import Cluster
from alwayson.api.schemas import ERROR_ANSWERS
from alwayson.api.tokens import TokenBook, ensure_token
from alwayson.control.boards import EtcdBoards
from alwayson.control.controller import Controller
from alwayson.control.desired import controller_id
from alwayson.control.leadership import Leadership
from alwayson.control.pushing import RoutePusher
from alwayson.runtime.local import LocalRuntime, forget_record
from alwayson.runtime.local_processes import LocalProcesses
from alwayson.runtime.users import check_user_can_run
from alwayson.store.base import Event
from alwayson.store.etcd import Etcd
from alwayson.store.etcd_store import EtcdStore
from alwayson.util.addresses import split_hostport
from alwayson.util.certs import CLIENT, leaf_paths, web_context
from alwayson.util.clocks import Clock, SystemClock
from alwayson.util.credentials import GATEWAY_TOKEN_FILE, ensure_secret

log = logging.getLogger("alwayson.controller")

STAND_DOWN_DEADLINE = 20.0
PROXY_TIMEOUT = httpx.Timeout(connect=2.0, read=600.0, write=30.0, pool=5.0)
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class _Parts:
    """What one term runs: its controller, the drivers it owns, and its API."""

    controller: Controller
    runtime: LocalRuntime
    pusher: RoutePusher
    boards: EtcdBoards
    app: FastAPI

    async def close(self) -> None:
        await self.runtime.close()
        await self.boards.close()
        await self.pusher.close()


class Candidacy:
    """A controller's candidacy, run on a thread with its own event loop and etcd client.

    Renewing must not wait behind the controller's own work: a turn that starts sixty
    processes keeps its event loop busy for seconds, and a lease renewed on that loop
    would lapse while the controller still believes it leads. On its own thread the
    renewal needs a millisecond of CPU a second, which the machine gives it however busy
    it is. The controller reads :meth:`Leadership.leads` before every act, so it stops
    acting on time even when its loop is late."""

    def __init__(self, leadership: Leadership) -> None:
        self.leadership = leadership
        self._quit = threading.Event()
        self._resign = True
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop, changed: Callable[[], None]) -> None:
        def tell() -> None:
            loop.call_soon_threadsafe(changed)

        def main() -> None:
            asyncio.run(self._run(tell))

        self._thread = threading.Thread(target=main, name="candidacy", daemon=True)
        self._thread.start()

    async def _run(self, changed: Callable[[], None]) -> None:
        leadership = self.leadership
        try:
            while not self._quit.is_set():
                before = (leadership.leads(), leadership.term)
                await leadership.step()
                if (leadership.leads(), leadership.term) != before or leadership.term:
                    changed()
                await asyncio.to_thread(self._quit.wait, leadership.every)
            if self._resign:
                await leadership.resign()
        finally:
            await leadership.etcd.close()

    def stop(self, resign: bool) -> None:
        """End the candidacy (handing leadership on at once when ``resign``)."""
        self._resign = resign
        self._quit.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


class SiteController:
    """One site's controller process: a candidate, the leader for a term, else a follower
    that passes requests on. It is itself the ASGI application uvicorn serves."""

    def __init__(
        self,
        state_dir: Path,
        api: str,
        site: str,
        cluster: Cluster,
        default_user: str | None,
        clock: Clock | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.api = api
        self.site = site
        self.cluster = cluster
        self.default_user = default_user
        self.clock = clock or SystemClock()
        self.token = ensure_token(state_dir)
        self.book = TokenBook(state_dir, self.token)
        self.gateway_token = ensure_secret(state_dir / GATEWAY_TOKEN_FILE)
        endpoints = cluster.endpoints_from(site)
        tls = leaf_paths(state_dir, CLIENT)
        # The candidacy has a client, a thread and an event loop of its own (Candidacy).
        self.leadership = Leadership(
            Etcd(endpoints, tls),
            site,
            api,
            os.getpid(),
            self.clock,
            key=f"{cluster.root}/control/leader",
        )
        self.candidacy = Candidacy(self.leadership)
        self.etcd = Etcd(endpoints, tls)
        self.store = EtcdStore(self.etcd, f"{cluster.root}/control", guard=self.leadership.guard)
        self.controller: Controller | None = None
        """The controller of this term, while this one leads and has loaded its state."""
        self._leader_app: FastAPI | None = None
        self._term_task: asyncio.Task[None] | None = None
        self._prepared: _Parts | None = None
        self._unsent: list[Event] = []  # kept across terms (Controller's unsent events)
        self._term = 0
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self._downed = False
        self._server: uvicorn.Server | None = None
        self._proxy = httpx.AsyncClient(
            timeout=PROXY_TIMEOUT, trust_env=False, verify=web_context()
        )
        self._follower_app = self._make_follower_app()

    # ------------------------------------------------------------ the process

    async def serve(self) -> None:
        host, port = split_hostport(self.api)
        config = uvicorn.Config(self, host=host, port=port, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        self._server = server
        log.info("controller of %s at %s: a candidate for leader", self.site, self.api)
        self.candidacy.start(asyncio.get_running_loop(), self._changed.set)
        try:
            async with asyncio.TaskGroup() as group:
                roles = group.create_task(self._roles())
                await server.serve()
                self._stop.set()
                await roles
        finally:
            await self._stand_down("it stops")
            if self._prepared is not None:
                await self._prepared.close()
            await asyncio.to_thread(self.candidacy.stop, not self._downed)
            await self._proxy.aclose()
            await self.store.close()
            if self._downed:
                self._forget_own_record()

    def _forget_own_record(self) -> None:
        """After ``down`` the leader, which stopped everything but itself, leaves no record
        of itself behind (the runtime removes the others' as it stops them)."""
        forget_record(self.state_dir, controller_id(self.site), os.getpid())

    async def _roles(self) -> None:
        """Begin or end a term as the candidacy's answer changes: woken by each of its
        steps, and in time to stop acting should renewing fail."""
        while not self._stop.is_set():
            self._changed.clear()
            if self._term_task is not None and self._term_task.done():
                self._term_task = None  # it failed (logged): the next turn begins it again
            leads = self.leadership.leads()
            term = self.leadership.term
            downing = self.controller is not None and self.controller.downing
            if self._term_task is not None and (not leads or term != self._term) and not downing:
                await self._stand_down(self.leadership.last_error or "another controller leads")
            if leads and self._term_task is None and not self._stop.is_set():
                self._term = term
                self._term_task = asyncio.create_task(self._lead(term))
            elif self._term_task is None and self._prepared is None:
                self._prepared = self._prepare()
            pause = self.leadership.every
            until = self.leadership.acts_until()
            if until is not None:
                pause = max(0.02, min(pause, until - self.clock.monotonic()))
            waits = [asyncio.ensure_future(e.wait()) for e in (self._stop, self._changed)]
            await asyncio.wait(waits, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()

    def _prepare(self) -> _Parts:
        """A term's controller and its API, built before the term begins: a follower has
        them ready, so taking over costs only reading the state and adopting processes."""
        runtime = LocalRuntime(self.state_dir)
        pusher = RoutePusher(self.gateway_token)
        boards = EtcdBoards(self.state_dir, self.clock, site=self.site)
        controller = Controller(
            self.store,
            runtime,
            LocalProcesses(),
            self.state_dir,
            self.clock,
            pusher,
            self.default_user,
            can_run=check_user_can_run,
            boards=boards,
            itself=controller_id(self.site),
            may_act=lambda: self._may_act(controller),
            unsent=self._unsent,
        )
        controller.leader_view = self.leader_view
        controller.drills.serve_at(self.api, self.token)
        app = create_app(controller, self.book, on_down=self._on_down)
        return _Parts(controller, runtime, pusher, boards, app)

    def _may_act(self, controller: Controller) -> bool:
        """Whether ``controller`` may still start or stop a process: while its term lasts
        (on this process's clock), or while ``down`` stops everything."""
        if controller.downing:
            return True
        return (
            controller is self.controller
            and self.leadership.leads()
            and self.leadership.term == self._term
        )

    async def _lead(self, term: int) -> None:
        parts, self._prepared = self._prepared or self._prepare(), None
        controller, runtime = parts.controller, parts.runtime
        try:
            await controller.load()
            adopted = await runtime.adopt()
            self._leader_app = parts.app
            self.controller = controller
            log.info("term %d: adopted %d running processes", term, len(adopted))
            await controller.record_event(
                "leader",
                controller_id(self.site),
                f"leads from term {term}; adopted {len(adopted)} running processes",
                {"site": self.site, "term": term, "pid": os.getpid()},
            )
            await controller.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the term ends; the next one starts afresh
            log.warning("term %d ended: %s", term, exc)
        finally:
            self._leader_app = None
            self.controller = None
            await parts.close()

    async def _stand_down(self, why: str) -> None:
        task, self._term_task = self._term_task, None
        if task is None:
            return
        log.info("term %d: stops acting (%s)", self._term, why)
        self._leader_app = None
        controller = self.controller
        if controller is not None:
            controller.shutdown()
        try:
            await asyncio.wait_for(task, timeout=STAND_DOWN_DEADLINE)
        except TimeoutError:
            log.warning("term %d: the loop did not stop in %.0fs", self._term, STAND_DOWN_DEADLINE)
        except Exception as exc:
            log.warning("term %d: %s", self._term, exc)

    def _on_down(self) -> None:
        """``alwayson down`` stopped every process, the other controllers and etcd
        included: this one exits too."""
        self._downed = True
        self._stop.set()
        if self._server is not None:
            self._server.should_exit = True

    # ------------------------------------------------------------ what it answers

    def leader_view(self) -> dict[str, Any]:
        leader = self.leadership.leader
        return {
            "site": self.site,
            "api": self.api,
            "role": "leader" if self.controller is not None else "follower",
            "leader": leader.json() if leader is not None else None,
            "controllers": self.cluster.apis,
            "last_error": self.leadership.last_error,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._leader_app
        if scope["type"] == "http" and scope["path"] in ("/healthz", "/api/v1/leader"):
            app = self._follower_app
        await (app or self._follower_app)(scope, receive, send)

    def _make_follower_app(self) -> FastAPI:
        # /docs is the leader's (passed on); FastAPI's own would load Swagger UI from a CDN.
        app = FastAPI(
            title="alwayson (site controller)",
            version=__version__,
            docs_url=None,
            redoc_url=None,
        )
        app.add_middleware(BodyLimit)

        @app.get("/healthz")
        async def healthz() -> dict[str, Any]:
            controller = self.controller
            verdict = controller.verdict if controller is not None else ""
            return {"status": "ok", "version": __version__, "verdict": verdict} | (
                self.leader_view()
            )

        @app.get("/api/v1/leader")
        async def leader() -> dict[str, Any]:
            return self.leader_view()

        authorize = bearer_check(self.book)
        answer_errors(app)

        # What happened is read from etcd by any controller, even while none leads.
        @app.get("/api/v1/audit", dependencies=[Depends(authorize)], responses=ERROR_ANSWERS)
        async def audit(limit: int = Query(100, ge=1, le=10_000)) -> list[dict[str, Any]]:
            return [e.__dict__ for e in await self.store.list_audit(limit)]

        @app.get("/api/v1/events", dependencies=[Depends(authorize)], responses=ERROR_ANSWERS)
        async def events(
            limit: int = Query(100, ge=1, le=10_000), kind: str | None = None
        ) -> list[dict[str, Any]]:
            return [e.__dict__ for e in await self.store.list_events(limit, kind)]

        @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
        async def passed_on(request: Request, path: str) -> Response:
            return await self._pass_on(request)

        return app

    async def _pass_on(self, request: Request) -> Response:
        leader = self.leadership.leader
        if leader is None or leader.api == self.api or not leader.api:
            why = self.leadership.last_error or "a leader is being elected"
            return JSONResponse(
                {
                    "error": f"no controller leads now ({why}); the controllers of "
                    f"{', '.join(self.cluster.apis)} elect one as soon as a majority of the "
                    "etcd members answer"
                },
                status_code=503,
                headers={"Retry-After": "1", NO_LEADER_HEADER: "1"},
            )
        url = httpx.URL(f"http://{leader.api}{request.url.path}", query=request.url.query.encode())
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        upstream = self._proxy.build_request(
            request.method, url, headers=headers, content=await request.body()
        )
        try:
            answer = await self._proxy.send(upstream, stream=True)
        except httpx.TransportError as exc:
            return JSONResponse(
                {"error": f"the leader ({leader.site}, {leader.api}) does not answer: {exc}"},
                status_code=503,
                headers={"Retry-After": "1"},
            )
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS}
        kept["X-Alwayson-Leader"] = leader.site
        return StreamingResponse(
            answer.aiter_raw(),
            status_code=answer.status_code,
            headers=kept,
            background=BackgroundTask(answer.aclose),
        )
