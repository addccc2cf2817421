"""In-memory harness for the gateway's protocols: fake transports, a fake upstream pool
that connects only when told, and a :class:`Harness` wiring a client connection to a
compiled route table. No sockets, no event loop. Imported by the other gateway unit tests.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from alwayson.gateway.balancing import RoutePlan, compile_table
from alwayson.gateway.ejecting import OutlierPolicy
from alwayson.gateway.exchanges import CoarseClock, Exchange, Limits, ProxyContext
from alwayson.gateway.headers import RequestIds
from alwayson.gateway.metrics import GatewayMetrics
from alwayson.gateway.proxying import ClientConnection
from alwayson.gateway.routes import Backend, Route, RouteTable
from alwayson.gateway.upstreams import Upstream, UpstreamConnection


class FakeTransport:
    def __init__(self, peer: tuple[str, int] = ("10.9.8.7", 40000)) -> None:
        self.data = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True
        self.peer = peer
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.data += data

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


class FakeUpstream(Upstream):
    """Connects only when the test says so."""

    __slots__ = ("pending",)

    def __init__(self, host: str, port: int, clock: CoarseClock) -> None:
        super().__init__(host, port, clock=clock)
        self.pending: list[Exchange] = []

    def connect(self, exchange: Exchange) -> None:
        self.pending.append(exchange)


class Harness:
    def __init__(
        self,
        table: RouteTable,
        site: str = "jakarta",
        limits: Limits | None = None,
        outliers: OutlierPolicy | None = None,
    ) -> None:
        self.clock = CoarseClock(100.0)
        self.metrics = GatewayMetrics()
        self.site = site
        self.ctx = ProxyContext(
            metrics=self.metrics,
            clock=self.clock,
            limits=limits,
            outliers=outliers or OutlierPolicy(slow_start_seconds=0),
            request_ids=RequestIds(b"rid-"),
        )
        self.pools: dict[str, FakeUpstream] = {}
        self.plans: list[RoutePlan] = []
        self.install(table)

    def install(self, table: RouteTable) -> None:
        """What Gateway.install does: swap the matcher, mark the old plans stale."""
        matcher, plans = compile_table(table, self.site, self._upstream_for, self.metrics)
        for plan in self.plans:
            plan.mark_stale()
        self.plans = plans
        self.ctx.matcher = matcher

    def _upstream_for(self, host: str, port: int) -> Upstream:
        address = f"{host}:{port}"
        if address not in self.pools:
            self.pools[address] = FakeUpstream(host, port, self.clock)
        return self.pools[address]

    def idle(self, address: str) -> tuple[UpstreamConnection, FakeTransport]:
        conn, transport = self.fresh(address)
        self.pools[address].idle.append(conn)
        return conn, transport

    def fresh(self, address: str) -> tuple[UpstreamConnection, FakeTransport]:
        conn = UpstreamConnection(self.pools[address])
        transport = FakeTransport(peer=("127.0.0.1", 1))
        conn.connection_made(transport)  # type: ignore[arg-type]
        return conn, transport

    def client(self) -> tuple[ClientConnection, FakeTransport]:
        client = ClientConnection(self.ctx)
        transport = FakeTransport()
        client.connection_made(transport)  # type: ignore[arg-type]
        return client, transport


def backend(
    name: str,
    address: str,
    site: str = "jakarta",
    weight: int = 100,
    track: Literal["stable", "candidate"] = "stable",
) -> Backend:
    version = "2.0" if track == "candidate" else "1.0"
    return Backend(id=name, address=address, site=site, version=version, weight=weight, track=track)


A = "127.1.1.1:8000"
B = "127.1.1.2:8000"


def table(*backends: Backend, **route: Any) -> RouteTable:
    return RouteTable(
        generation=1,
        site="jakarta",
        routes=[Route(service="accounts", backends=list(backends), **route)],
    )


def split(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    first, *lines = head.decode().split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return first, headers, body


OK_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-app: yes\r\n\r\nhello"


def error_of(raw: bytes) -> tuple[int, dict[str, Any]]:
    first, headers, body = split(raw)
    assert headers["content-type"] == "application/json"
    return int(first.split()[1]), json.loads(body)
