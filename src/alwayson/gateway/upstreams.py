"""Connections to backends: one keep-alive pool per backend address (the protocol of one
connection, which relays responses, is :mod:`alwayson.gateway.relaying`).

An :class:`Upstream` outlives route table swaps (it is keyed by address), so its idle
connections, its count of outstanding requests and its passive ejection survive a push
that keeps the backend.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from alwayson.gateway.exchanges import CoarseClock, Exchange
from alwayson.gateway.relaying import UpstreamConnection

__all__ = ["Upstream", "UpstreamConnection"]

log = logging.getLogger(__name__)


class Upstream:
    """A backend address: its idle connections, its load and its ejection."""

    __slots__ = (
        "_connecting",
        "clock",
        "connect_timeout",
        "consecutive_connect_failures",
        "consecutive_failures",
        "ejected_count",
        "ejected_until",
        "ejections",
        "host",
        "idle",
        "last_ejection_seconds",
        "max_idle",
        "needs_reset",
        "outstanding",
        "port",
        "ramp_start",
        "ramp_until",
        "retired",
    )

    def __init__(
        self,
        host: str,
        port: int,
        *,
        clock: CoarseClock,
        connect_timeout: float = 3.0,
        max_idle: int = 256,
    ) -> None:
        self.host = host
        self.port = port
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle: list[UpstreamConnection] = []
        self.outstanding = 0
        self.retired = False
        # Passive health, driven by alwayson.gateway.ejecting.OutlierPolicy.
        self.ejected_until = 0.0
        self.consecutive_failures = 0
        self.consecutive_connect_failures = 0
        self.ejections = 0  # in a row, for the doubling of the ejection time
        self.last_ejection_seconds = 0.0
        self.needs_reset = False  # a good answer has counters to reset
        self.ejected_count = 0  # ever, for the metrics
        # Slow start: the weight ramps from ramp_start to ramp_until (set by the policy).
        self.ramp_start = 0.0
        self.ramp_until = 0.0
        self._connecting: set[asyncio.Task[UpstreamConnection]] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def take_idle(self) -> UpstreamConnection | None:
        """The most recently used idle connection (LIFO keeps few connections warm)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and not self.retired:
                return conn
            conn.close()
        return None

    def release(self, conn: UpstreamConnection) -> None:
        if conn.closed or self.retired or len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = self.clock.now
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def connect(self, exchange: Exchange) -> None:
        """Open a new connection for ``exchange``; its owner hears through ``connected``."""
        task = asyncio.get_running_loop().create_task(self._open())
        self._connecting.add(task)
        task.add_done_callback(partial(self._opened, exchange))

    async def _open(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            _, conn = await loop.create_connection(
                partial(UpstreamConnection, self), self.host, self.port
            )
        return conn

    def _opened(self, exchange: Exchange, task: asyncio.Task[UpstreamConnection]) -> None:
        self._connecting.discard(task)
        conn: UpstreamConnection | None = None
        if not task.cancelled():
            error = task.exception()
            if error is None:
                conn = task.result()
                if conn.closed:
                    # The backend closed it (died) before this callback ran: nothing was
                    # sent, so to the exchange it is a failed connect (retried anywhere),
                    # not a write on a closed transport that would strand it.
                    conn = None
            elif not isinstance(error, OSError | TimeoutError):
                log.error("connect to %s failed unexpectedly: %r", self.address, error)
        exchange.owner.connected(exchange, conn)

    def close_idle(self, idle_before: float) -> None:
        """Close idle connections unused since ``idle_before`` (coarse clock time)."""
        keep = []
        for conn in self.idle:
            if conn.idle_since < idle_before or conn.closed:
                conn.close()
            else:
                keep.append(conn)
        self.idle = keep

    def retire(self) -> None:
        """No route uses this address any more: close idle connections now, busy ones when
        their response is done."""
        self.retired = True
        for conn in self.idle:
            conn.close()
        self.idle = []

    async def aclose(self) -> None:
        self.retire()
        tasks = list(self._connecting)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
