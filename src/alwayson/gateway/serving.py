"""Running a gateway: its configuration, its lifecycle, and the blocking ``run`` the CLI calls.

Lifecycle: ``STARTING`` (table loaded; listeners bound, or taken over from a predecessor
with ``--takeover``) → ``SERVING`` (the admin ``/healthz`` answers 200: this is readiness)
→ ``DRAINING`` on SIGTERM or once a successor took the listeners over (``--handover``):
listeners closed, every request already read is answered, keep-alive connections close
after their next response or after ``drain_grace`` idle, bounded by ``drain_timeout`` →
``STOPPED``.

Site partitions: with ``--partitions`` the gateway re-reads the site links' state
(:mod:`alwayson.util.sitelinks`) on its 0.1 s tick and, when the set of sites cut off from
its own changes, compiles its plans again without them (:mod:`alwayson.gateway.balancing`).
A request costs nothing more for it. Only cuts apply: a slowed link delays the site links'
L4 relays (database traffic), not the HTTP requests a gateway sends to another site.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import gc
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from time import monotonic

from alwayson.gateway.admin import AdminApp, AdminServer
from alwayson.gateway.balancing import RoutePlan, compile_table
from alwayson.gateway.exchanges import CoarseClock, ProxyContext
from alwayson.gateway.handover import HandoverOffer, TakenListeners, take_over
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
from alwayson.gateway.settings import GatewayConfig
from alwayson.gateway.upstreams import Upstream
from alwayson.util.errors import PermanentError
from alwayson.util.sitelinks import Partitions

__all__ = ["Gateway", "GatewayConfig", "GatewayState", "run", "serve"]

log = logging.getLogger(__name__)

_TICK = 0.1  # seconds between refreshes of the coarse clock
_SWEEP_EVERY = 5  # ticks between timeout sweeps


class GatewayState(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


class Gateway:
    """One gateway process's state: route table, upstream pools, listeners, admin."""

    def __init__(self, config: GatewayConfig, request_stop: Callable[[], None]) -> None:
        self.config = config
        self.state = GatewayState.STARTING
        self.clock = CoarseClock(monotonic())
        self.metrics = GatewayMetrics()
        self.context = ProxyContext(
            metrics=self.metrics,
            clock=self.clock,
            limits=config.limits(),
            outliers=config.outlier_policy(),
        )
        self.metrics.active_connections = lambda: len(self.context.clients)
        self.metrics.active_tunnels = lambda: len(self.context.tunnels)
        self._request_stop = request_stop
        self._table = empty_table(config.site)
        self._plans: list[RoutePlan] = []
        self._upstreams: dict[tuple[str, int], Upstream] = {}
        self._servers: list[asyncio.Server] = []
        self._admin_app = AdminApp(self, self._read_token)
        self._admin = AdminServer(self._admin_app)
        self._offer: HandoverOffer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._accepting_pushes = True
        self.handed_over = False
        self._partitions = Partitions(config.partitions_file) if config.partitions_file else None
        self._cut_seen: frozenset[frozenset[str]] = frozenset()
        self.cut_off: frozenset[str] = frozenset()  # sites this one cannot reach now

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

    @property
    def accepting_pushes(self) -> bool:
        return self._accepting_pushes and self.state is GatewayState.SERVING

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
        """Swap the table in one assignment; pools of addresses still in use are kept, the
        others are retired: their idle connections close now and none is used again."""
        self._compile(table)
        log.info(
            "installed route table generation %d (%d routes, %d backend addresses)",
            table.generation,
            len(table.routes),
            len(self._upstreams),
        )

    def _compile(self, table: RouteTable) -> None:
        config = self.config
        context = self.context
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
                context.outliers.start_ramp(upstream, self.clock.now)
            kept[key] = upstream
            return upstream

        matcher, plans = compile_table(
            table, config.site, upstream_for, self.metrics, config.max_body_bytes, self.cut_off
        )
        for key, upstream in self._upstreams.items():
            if key not in kept:
                upstream.retire()
        for plan in self._plans:
            plan.mark_stale()
        self._upstreams = kept
        self._plans = plans
        context.matcher = matcher
        self._table = table
        self.metrics.generation = table.generation

    def follow_partitions(self) -> bool:
        """Re-read the partitions file; when the sites cut off from this one changed,
        compile the current table again without them. True when it did."""
        partitions = self._partitions
        if partitions is None:
            return False
        partitions.refresh()
        cut = partitions.cut
        if cut is self._cut_seen:
            return False
        self._cut_seen = cut
        site = self.config.site
        cut_off = frozenset(other for pair in cut if site in pair for other in pair - {site})
        if cut_off == self.cut_off:
            return False
        self.cut_off = cut_off
        self._compile(self._table)
        if cut_off:
            log.warning(
                "site %s is cut off from %s: their backends are not used",
                site,
                ", ".join(sorted(cut_off)),
            )
        else:
            log.warning("site %s reaches every site again: all backends are used", site)
        return True

    def _initial_table(self) -> RouteTable:
        config = self.config
        if config.upstreams:
            return standalone_table(config.site, list(config.upstreams))
        return self._table_file() or empty_table(config.site)

    def _table_file(self) -> RouteTable | None:
        config = self.config
        if config.routes_file is None:
            return None
        try:
            table = load_table_file(config.routes_file)
        except InvalidRouteTable as exc:
            log.error("ignoring the routes file: %s", exc)
            return None
        if table is not None and table.site != config.site:
            log.error(
                "ignoring the routes file: %s holds the table of site %r, not %r",
                config.routes_file,
                table.site,
                config.site,
            )
            return None
        return table

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind (or take over) everything; when this returns the gateway is ready."""
        config = self.config
        loop = asyncio.get_running_loop()
        self.follow_partitions()
        self.install(self._initial_table())
        taken: TakenListeners | None = None
        if config.takeover is not None:
            taken = await loop.run_in_executor(
                None, take_over, config.takeover, config.listen_addresses, config.admin_address
            )
        if taken is not None:
            await self._serve_taken(taken)
        else:
            await self._bind()
        self._ticker = loop.create_task(self._tick())
        if taken is not None:
            taken.confirm()
            # The predecessor stopped taking pushes before it sent the sockets, so its
            # last accepted table is in the routes file now.
            latest = self._table_file()
            if latest is not None and latest.generation > self._table.generation:
                self.install(latest)
        if config.handover is not None:
            await self._offer_handover(config.handover)
        self.state = GatewayState.SERVING
        log.info(
            "gateway of site %s serving on %s, admin on %s%s",
            config.site,
            ", ".join(config.listen),
            config.admin,
            " (taken over)" if taken is not None else "",
        )

    async def _bind(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
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

    async def _serve_taken(self, taken: TakenListeners) -> None:
        loop = asyncio.get_running_loop()
        context = self.context
        for sock in taken.listeners:
            server = await loop.create_server(
                lambda: ClientConnection(context), sock=sock, backlog=self.config.backlog
            )
            self._servers.append(server)
        await self._admin.start(sock=taken.admin)

    async def _offer_handover(self, path: Path) -> None:
        def listeners() -> list[int]:
            fds = [server.sockets[0].fileno() for server in self._servers]
            return [*fds, self._admin.listening_fd()]

        async def prepare() -> None:
            async with self._admin_app.push_lock:  # a push in progress ends first
                self._accepting_pushes = False

        def resume() -> None:
            self._accepting_pushes = True

        offer = HandoverOffer(
            path,
            listeners=listeners,
            prepare=prepare,
            resume=resume,
            handed_over=self._handed_over,
        )
        try:
            await offer.start()
        except OSError as exc:
            raise PermanentError(f"cannot offer a handover at {path}: {exc}") from exc
        self._offer = offer

    def _handed_over(self) -> None:
        """A successor serves on our listeners: close our copies, then drain and exit."""
        self.handed_over = True
        for server in self._servers:
            server.close()
        self._admin.close_listener()
        self._request_stop()

    async def drain(self) -> None:
        """Stop accepting, answer every request already read, close (bounded)."""
        if self.state is not GatewayState.SERVING:
            return
        self.state = GatewayState.DRAINING
        context = self.context
        context.draining = True
        if self._offer is not None:
            await self._offer.aclose()
        for server in self._servers:
            server.close()
        self._admin.close_listener()
        at_start = context.connection_count
        drained = asyncio.Event()
        context.on_drained = drained.set
        for client in list(context.clients):
            client.start_draining()
        context.connection_gone()  # nothing open at all: drained already
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.drain_timeout):
                await drained.wait()
        left = context.connection_count
        for client in list(context.clients):
            client.transport.abort()
        for tunnel in list(context.tunnels):
            tunnel.abort()
        log.info(
            "drained: %d client connections at the start, %d cut at the deadline",
            at_start,
            left,
        )

    async def aclose(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._offer is not None:
            await self._offer.aclose()
        for server in self._servers:
            server.close()
        for client in list(self.context.clients):
            client.transport.abort()
        for tunnel in list(self.context.tunnels):
            tunnel.abort()
        for upstream in self._upstreams.values():
            await upstream.aclose()
        await self._admin.aclose()
        self.state = GatewayState.STOPPED

    async def _tick(self) -> None:
        """Refresh the coarse clock; every few ticks (each tick when draining), enforce
        timeouts."""
        config = self.config
        context = self.context
        ticks = 0
        while True:
            await asyncio.sleep(_TICK)
            now = self.clock.now = monotonic()
            ticks += 1
            try:
                self.follow_partitions()
            except Exception:  # the clock must keep ticking whatever the file holds
                log.exception("following the partitions file %s", config.partitions_file)
            if ticks % _SWEEP_EVERY and not context.draining:
                continue
            for client in list(context.clients):
                client.check_timeouts(now)
            for tunnel in list(context.tunnels):
                tunnel.check_timeout(now)
            for upstream in self._upstreams.values():
                upstream.close_idle(now - config.upstream_idle_timeout)


async def serve(
    config: GatewayConfig,
    *,
    ready: Callable[[Gateway], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``, or a successor took over), then drain.
    ``ready`` is called once serving."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    handled: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
            handled.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread: the caller stops us through ``stop``
    gateway = Gateway(config, stop.set)
    try:
        await gateway.start()
        # Everything allocated so far lives as long as the process: keep it out of the
        # collector's way so collections triggered by request garbage stay short.
        gc.freeze()
        if ready is not None:
            ready(gateway)
        await stop.wait()
        log.info(
            "stopping (%s): draining in-flight requests",
            "handed over to a successor" if gateway.handed_over else "signal",
        )
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


def _keep_freed_memory() -> None:
    """Big bodies are read 256 KiB at a time; by default glibc hands such blocks back to
    the kernel as soon as they are freed (heap trimming, mmap), which costs two system
    calls and fresh page faults per read. Keep up to 16 MiB of freed heap instead."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 4 * 1024 * 1024)
    mallopt(m_trim_threshold, 16 * 1024 * 1024)


def run(config: GatewayConfig) -> None:
    """Serve until SIGTERM, drain, return. Blocking; raises PermanentError on bad setup."""
    _keep_freed_memory()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(config))
