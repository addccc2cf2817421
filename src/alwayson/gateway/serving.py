"""Running a gateway: its configuration, its lifecycle, and the blocking ``run`` the CLI calls.

Lifecycle: ``STARTING`` (table loaded, sockets bound) → ``SERVING`` (the admin ``/healthz``
answers 200: this is readiness) → ``DRAINING`` on SIGTERM (listeners closed, idle client
connections closed, in-flight requests finished, bounded by ``drain_timeout``) →
``STOPPED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic

from alwayson.gateway.admin import AdminApp, AdminServer
from alwayson.gateway.balancing import compile_table
from alwayson.gateway.exchanges import CoarseClock, ProxyContext
from alwayson.gateway.metrics import GatewayMetrics
from alwayson.gateway.proxying import ClientConnection
from alwayson.gateway.routes import (
    InvalidRouteTable,
    RouteTable,
    StaleRouteTable,
    empty_table,
    load_table_file,
    save_table_file,
    standalone_table,
)
from alwayson.gateway.upstreams import Upstream
from alwayson.util.addresses import split_hostport
from alwayson.util.errors import PermanentError

log = logging.getLogger(__name__)

_TICK = 0.1  # seconds between refreshes of the coarse clock
_SWEEP_EVERY = 5  # ticks between timeout sweeps


class GatewayState(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(frozen=True)
class GatewayConfig:
    """Everything a gateway process needs; addresses are ``host:port`` strings."""

    listen: tuple[str, ...]
    admin: str
    site: str
    routes_file: Path | None = None
    token_file: Path | None = None
    upstreams: tuple[str, ...] = ()  # standalone mode: one catch-all route to these
    reuse_port: bool = False
    upstream_timeout: float = 30.0
    connect_timeout: float = 3.0
    drain_timeout: float = 10.0
    eject_seconds: float = 5.0
    max_idle_per_backend: int = 256
    client_idle_timeout: float = 60.0
    # Below the 5 s keep-alive of common servers (uvicorn, gunicorn), so the gateway is
    # usually the one to close an idle connection, not the one to race with its close.
    upstream_idle_timeout: float = 4.0
    backlog: int = 2048
    listen_addresses: tuple[tuple[str, int], ...] = field(init=False, repr=False)
    admin_address: tuple[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "listen", tuple(self.listen))
        object.__setattr__(self, "upstreams", tuple(self.upstreams))
        if not self.listen:
            raise PermanentError("a gateway needs at least one --listen address")
        if not self.site:
            raise PermanentError("a gateway needs a --site")
        try:
            listen = tuple(split_hostport(text) for text in self.listen)
            admin = split_hostport(self.admin)
            for text in self.upstreams:
                split_hostport(text)
        except ValueError as exc:
            raise PermanentError(str(exc)) from None
        for name in (
            "upstream_timeout",
            "connect_timeout",
            "drain_timeout",
            "client_idle_timeout",
            "upstream_idle_timeout",
        ):
            if getattr(self, name) <= 0:
                raise PermanentError(f"{name} must be more than zero seconds")
        if self.eject_seconds < 0 or self.max_idle_per_backend < 0:
            raise PermanentError("eject_seconds and max_idle_per_backend cannot be negative")
        object.__setattr__(self, "listen_addresses", listen)
        object.__setattr__(self, "admin_address", admin)


class Gateway:
    """One gateway process's state: route table, upstream pools, listeners, admin."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.state = GatewayState.STARTING
        self.clock = CoarseClock(monotonic())
        self.metrics = GatewayMetrics()
        self.context = ProxyContext(
            metrics=self.metrics, clock=self.clock, eject_seconds=config.eject_seconds
        )
        self.metrics.active_connections = lambda: len(self.context.clients)
        self._table = empty_table(config.site)
        self._upstreams: dict[tuple[str, int], Upstream] = {}
        self._servers: list[asyncio.Server] = []
        self._admin = AdminServer(AdminApp(self, self._read_token))
        self._ticker: asyncio.Task[None] | None = None

    # -- what the admin endpoint sees ----------------------------------------------------

    @property
    def site(self) -> str:
        return self.config.site

    @property
    def generation(self) -> int:
        return self._table.generation

    @property
    def draining(self) -> bool:
        return self.state is not GatewayState.SERVING

    def current_table(self) -> RouteTable:
        return self._table

    def render_metrics(self) -> bytes:
        return self.metrics.render()

    async def push_table(self, table: RouteTable) -> None:
        if table.site != self.site:
            raise InvalidRouteTable(
                f"this table is for site {table.site!r}; this gateway serves {self.site!r}"
            )
        if table.generation < self._table.generation:
            raise StaleRouteTable(table.generation, self._table.generation)
        path = self.config.routes_file
        if path is not None:
            await asyncio.get_running_loop().run_in_executor(None, save_table_file, path, table)
        self.install(table)

    def _read_token(self) -> str | None:
        path = self.config.token_file
        if path is None:
            return None
        token = path.read_text().strip()
        return token or None

    # -- route table ---------------------------------------------------------------------

    def install(self, table: RouteTable) -> None:
        """Swap the table in one assignment; pools of addresses still in use are kept."""
        config = self.config
        kept: dict[tuple[str, int], Upstream] = {}

        def upstream_for(host: str, port: int) -> Upstream:
            key = (host, port)
            upstream = kept.get(key) or self._upstreams.get(key)
            if upstream is None:
                upstream = Upstream(
                    host,
                    port,
                    clock=self.clock,
                    connect_timeout=config.connect_timeout,
                    max_idle=config.max_idle_per_backend,
                )
            kept[key] = upstream
            return upstream

        matcher = compile_table(table, config.site, upstream_for, self.metrics)
        for key, upstream in self._upstreams.items():
            if key not in kept:
                upstream.retire()
        self._upstreams = kept
        self.context.matcher = matcher
        self._table = table
        self.metrics.generation = table.generation
        log.info(
            "installed route table generation %d (%d routes, %d backend addresses)",
            table.generation,
            len(table.routes),
            len(kept),
        )

    def _initial_table(self) -> RouteTable:
        config = self.config
        if config.upstreams:
            return standalone_table(config.site, list(config.upstreams))
        if config.routes_file is None:
            return empty_table(config.site)
        try:
            table = load_table_file(config.routes_file)
        except InvalidRouteTable as exc:
            log.error("starting with an empty table: %s", exc)
            return empty_table(config.site)
        if table is None:
            return empty_table(config.site)
        if table.site != config.site:
            log.error(
                "starting with an empty table: %s holds the table of site %r, not %r",
                config.routes_file,
                table.site,
                config.site,
            )
            return empty_table(config.site)
        return table

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind everything; when this returns the gateway is ready."""
        config = self.config
        loop = asyncio.get_running_loop()
        self.install(self._initial_table())
        context = self.context
        for host, port in config.listen_addresses:
            try:
                server = await loop.create_server(
                    lambda: ClientConnection(context),
                    host,
                    port,
                    reuse_address=True,
                    reuse_port=config.reuse_port or None,
                    backlog=config.backlog,
                )
            except OSError as exc:
                raise PermanentError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
            self._servers.append(server)
        host, port = config.admin_address
        try:
            await self._admin.start(host, port)
        except OSError as exc:
            raise PermanentError(f"cannot listen on {host}:{port} (admin): {exc.strerror}") from exc
        self._ticker = loop.create_task(self._tick())
        self.state = GatewayState.SERVING
        log.info(
            "gateway of site %s serving on %s, admin on %s",
            config.site,
            ", ".join(config.listen),
            config.admin,
        )

    async def drain(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close the rest."""
        if self.state is not GatewayState.SERVING:
            return
        self.state = GatewayState.DRAINING
        context = self.context
        context.draining = True
        for server in self._servers:
            server.close()
        in_flight = len(context.clients)
        for client in list(context.clients):
            client.start_draining()
        deadline = monotonic() + self.config.drain_timeout
        while context.clients and monotonic() < deadline:
            await asyncio.sleep(0.02)
        left = len(context.clients)
        for client in list(context.clients):
            client.transport.abort()
        log.info(
            "drained: %d client connections at the start, %d cut at the deadline", in_flight, left
        )

    async def aclose(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for server in self._servers:
            server.close()
        for client in list(self.context.clients):
            client.transport.abort()
        for upstream in self._upstreams.values():
            await upstream.aclose()
        await self._admin.aclose()
        self.state = GatewayState.STOPPED

    async def _tick(self) -> None:
        """Refresh the coarse clock; every few ticks, enforce timeouts."""
        config = self.config
        ticks = 0
        while True:
            await asyncio.sleep(_TICK)
            now = self.clock.now = monotonic()
            ticks += 1
            if ticks % _SWEEP_EVERY:
                continue
            for client in list(self.context.clients):
                client.check_timeouts(now, config.upstream_timeout, config.client_idle_timeout)
            for upstream in self._upstreams.values():
                upstream.close_idle(now - config.upstream_idle_timeout)


async def serve(
    config: GatewayConfig,
    *,
    ready: Callable[[Gateway], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``), then drain. ``ready`` is called once bound."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    handled: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
            handled.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread: the caller stops us through ``stop``
    gateway = Gateway(config)
    try:
        await gateway.start()
        # Everything allocated so far lives as long as the process: keep it out of the
        # collector's way so collections triggered by request garbage stay short.
        gc.freeze()
        if ready is not None:
            ready(gateway)
        await stop.wait()
        log.info("stopping: draining in-flight requests")
        await gateway.drain()
    finally:
        await gateway.aclose()
        for signum in handled:
            loop.remove_signal_handler(signum)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(config: GatewayConfig) -> None:
    """Serve until SIGTERM, drain, return. Blocking; raises PermanentError on bad setup."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(config))
