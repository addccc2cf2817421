"""One request/response pair crossing the gateway, what its owner must answer to, and
the state all client connections share.

An :class:`Exchange` is created when a request line arrives on a client connection and is
finished when the response is relayed (or an error written). The client side
(:mod:`alwayson.gateway.proxying`) owns it; the upstream side
(:mod:`alwayson.gateway.upstreams`) reports back through :class:`ExchangeOwner`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from alwayson.gateway.ejecting import OutlierPolicy
from alwayson.gateway.headers import RequestIds
from alwayson.gateway.matching import RouteMatcher
from alwayson.gateway.retrying import REPLAY_LIMIT, Failure

if TYPE_CHECKING:
    from alwayson.gateway.balancing import RoutePlan, Target
    from alwayson.gateway.metrics import GatewayMetrics
    from alwayson.gateway.proxying import ClientConnection
    from alwayson.gateway.tunnels import Tunnel
    from alwayson.gateway.upstreams import UpstreamConnection


class ExchangeOwner(Protocol):
    """The client connection an exchange belongs to."""

    def response_complete(self, exchange: Exchange) -> None:
        """The whole response was written to the client."""

    def upstream_failed(self, exchange: Exchange, failure: Failure) -> None:
        """The attempt failed; the upstream connection is already detached."""

    def connected(self, exchange: Exchange, connection: UpstreamConnection | None) -> None:
        """A connect started for ``exchange`` ended (``None``: it failed)."""

    def pause_upload(self) -> None:
        """The upstream cannot take more request body for now."""

    def resume_upload(self) -> None: ...

    def upgraded(self, exchange: Exchange, connection: UpstreamConnection) -> None:
        """The backend switched protocols (101, head already relayed): tunnel from now on."""


class RequestExtras:
    """What the rarer request headers ask for: framing, forwarding headers, Expect, Upgrade,
    Connection options, a release pin. An exchange gets one at the first header that is
    neither Host nor an end-to-end header (a hop-by-hop one included), so a plain request
    allocates and checks none of it."""

    __slots__ = (
        "chunked",
        "content_length",
        "expect",
        "extra_drop",
        "forwarded_for",
        "forwarded_host",
        "forwarded_proto",
        "track",
        "upgrade",
    )

    def __init__(self) -> None:
        self.content_length: bytes | None = None
        self.chunked = False
        self.forwarded_for: bytes | None = None  # X-Forwarded-For as received
        self.forwarded_proto = False  # the client sent X-Forwarded-Proto
        self.forwarded_host = False  # the client sent X-Forwarded-Host
        self.expect: bytes | None = None
        self.extra_drop: set[bytes] | None = None  # header names listed by Connection
        self.upgrade: bytes | None = None  # the Upgrade header of a protocol switch request
        self.track: str | None = None  # the release track the request is pinned to


class RetryState:
    """What the failed attempts of a request left, for the next one (see
    :mod:`alwayson.gateway.retrying`); made at the first failure."""

    __slots__ = ("exclude", "fresh_only", "retries", "stale_retries", "tried")

    def __init__(self) -> None:
        self.exclude: Target | None = None  # the target whose attempt just failed
        self.tried: tuple[Target, ...] = ()  # targets that failed, in order: all avoided
        self.fresh_only = False  # the next attempt opens a new connection
        self.retries = 0  # to another backend, after the request may have reached one
        self.stale_retries = 0  # on a fresh connection, after a stale pooled one


# A request without extras reads as this one (never changed).
NO_EXTRAS = RequestExtras()


class Exchange:
    """State of one proxied request; plain slots, touched on every request. What only some
    requests need (:class:`RequestExtras`, :class:`RetryState`) is allocated when needed:
    each slot costs every request its store and its release."""

    __slots__ = (
        "body_done",
        "body_size",
        "cancelled",
        "client_transport",
        "close_after",
        "conn",
        "dispatched",
        "extras",
        "head",
        "head_parts",
        "host",
        "http10",
        "is_head",
        "keep_alive",
        "local_message",
        "local_status",
        "method",
        "outstanding",
        "owner",
        "replay",
        "replay_size",
        "request_id",
        "response_started",
        "retry",
        "route",
        "routing_host",
        "started_at",
        "status",
        "target",
        "touched",
        "unsent",
        "unsent_size",
        "url",
    )

    def __init__(
        self,
        owner: ExchangeOwner,
        client_transport: asyncio.Transport,
        now: float,
        url: bytes = b"",
    ) -> None:
        self.owner = owner
        self.client_transport = client_transport
        self.started_at = now
        self.touched = now
        self.url = url
        self.method = b""
        self.head_parts: list[bytes] = []
        self.head = b""
        self.host: bytes | None = None  # the Host header as sent
        self.routing_host = b""  # lower case, without the port
        self.request_id: bytes | None = None
        # Set by the first header other than Host and the end-to-end ones.
        self.extras: RequestExtras | None = None
        self.keep_alive = True
        self.http10 = False
        self.is_head = False
        self.close_after = False  # the connection closes after this exchange's response
        self.body_done = False
        self.body_size = 0
        # Wire bytes (already framed) received from the client and not yet sent upstream.
        self.unsent: list[bytes] = []
        self.unsent_size = 0
        # Wire bytes sent upstream and kept for a replay; None once too large to keep.
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        self.route: RoutePlan | None = None
        self.target: Target | None = None
        self.conn: UpstreamConnection | None = None
        self.outstanding = False  # counted in target.upstream.outstanding
        self.dispatched = False
        self.retry: RetryState | None = None  # made by the first failed attempt
        self.response_started = False
        self.status = 0
        self.local_status = 0
        self.local_message = ""
        self.cancelled = False

    def take_unsent(self) -> list[bytes]:
        """The body bytes to send now; keeps them for a replay while they are small."""
        data = self.unsent
        self.unsent = []
        replay = self.replay
        if replay is not None:
            size = self.replay_size + self.unsent_size
            if size <= REPLAY_LIMIT:
                replay.extend(data)
                self.replay_size = size
            else:
                self.replay = None
        self.unsent_size = 0
        return data

    def rewind(self) -> None:
        """Put every kept body byte back in front of the unsent ones, for a retry."""
        replay = self.replay or []
        self.unsent = replay + self.unsent
        self.unsent_size += self.replay_size
        self.replay = []
        self.replay_size = 0


class CoarseClock:
    """``now`` is refreshed a few times a second by the gateway's sweeper, so the hot path
    can stamp activity with an attribute read instead of a clock call; it is only used for
    timeouts measured in seconds."""

    __slots__ = ("now",)

    def __init__(self, now: float = 0.0) -> None:
        self.now = now


@dataclass(frozen=True, slots=True)
class Limits:
    """What a client may ask of the gateway, and how long it waits; seconds and bytes."""

    max_header_bytes: int = 32 * 1024  # request line and headers: 431 beyond (414: target)
    max_body_bytes: int = 10 * 1024 * 1024  # for routes without their own max_body_bytes
    header_timeout: float = 10.0  # a request head must be complete by then: 408
    idle_timeout: float = 60.0  # a keep-alive connection with no request in progress
    drain_grace: float = 1.0  # idle connections of a draining gateway close after it
    upstream_timeout: float = 30.0  # no byte from the backend for that long: 504
    tunnel_idle_timeout: float = 300.0  # a WebSocket tunnel with no byte either way
    max_connections: int = 10_000  # client connections (tunnels included)


class ProxyContext:
    """What every client connection of one gateway shares; the gateway swaps ``matcher``
    when a new table is installed, so each request sees exactly one table."""

    __slots__ = (
        "clients",
        "clock",
        "draining",
        "limits",
        "matcher",
        "metrics",
        "no_route_stats",
        "on_drained",
        "outliers",
        "request_ids",
        "tunnels",
    )

    def __init__(
        self,
        *,
        metrics: GatewayMetrics,
        clock: CoarseClock,
        limits: Limits | None = None,
        outliers: OutlierPolicy | None = None,
        request_ids: RequestIds | None = None,
    ) -> None:
        self.matcher: RouteMatcher[RoutePlan] = RouteMatcher(())
        self.metrics = metrics
        self.clock = clock
        self.limits = limits or Limits()
        self.outliers = outliers or OutlierPolicy()
        self.request_ids = request_ids or RequestIds()
        self.clients: set[ClientConnection] = set()
        self.tunnels: set[Tunnel] = set()
        self.draining = False
        # Called when the last connection of a draining gateway is gone.
        self.on_drained: Callable[[], None] | None = None
        self.no_route_stats = metrics.stats_for("", "", "")

    @property
    def connection_count(self) -> int:
        return len(self.clients) + len(self.tunnels)

    def connection_gone(self) -> None:
        if self.draining and self.on_drained is not None and not self.clients and not self.tunnels:
            self.on_drained()
