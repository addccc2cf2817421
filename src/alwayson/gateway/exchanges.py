"""One request/response pair crossing the gateway, what its owner must answer to, and
the state all client connections share.

An :class:`Exchange` is created when a request line arrives on a client connection and is
finished when the response is relayed (or an error written). The client side
(:mod:`alwayson.gateway.proxying`) owns it; the upstream side
(:mod:`alwayson.gateway.upstreams`) reports back through :class:`ExchangeOwner`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from alwayson.gateway.headers import RequestIds
from alwayson.gateway.matching import RouteMatcher
from alwayson.gateway.retrying import REPLAY_LIMIT, Failure

if TYPE_CHECKING:
    from alwayson.gateway.balancing import RoutePlan, Target
    from alwayson.gateway.metrics import GatewayMetrics
    from alwayson.gateway.proxying import ClientConnection
    from alwayson.gateway.upstreams import UpstreamConnection


class ExchangeOwner(Protocol):
    """The client connection an exchange belongs to."""

    closing: bool

    def response_complete(self, exchange: Exchange) -> None:
        """The whole response was written to the client."""

    def upstream_failed(self, exchange: Exchange, failure: Failure) -> None:
        """The attempt failed; the upstream connection is already detached."""

    def connected(self, exchange: Exchange, connection: UpstreamConnection | None) -> None:
        """A connect started for ``exchange`` ended (``None``: it failed)."""

    def pause_upload(self) -> None:
        """The upstream cannot take more request body for now."""

    def resume_upload(self) -> None: ...


class Exchange:
    """State of one proxied request; plain slots, touched on every request."""

    __slots__ = (
        "body_done",
        "cancelled",
        "chunked",
        "client_transport",
        "close_after",
        "conn",
        "content_length",
        "dispatched",
        "exclude",
        "expect_continue",
        "extra_drop",
        "forwarded_for",
        "fresh_only",
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
        "retries",
        "route",
        "stale_retries",
        "started_at",
        "status",
        "target",
        "touched",
        "unsent",
        "unsent_size",
        "upgrade",
        "url",
    )

    def __init__(
        self, owner: ExchangeOwner, client_transport: asyncio.Transport, now: float
    ) -> None:
        self.owner = owner
        self.client_transport = client_transport
        self.started_at = now
        self.touched = now
        self.url = b""
        self.method = b""
        self.head_parts: list[bytes] = []
        self.head = b""
        self.host = b""
        self.forwarded_for: bytes | None = None
        self.request_id: bytes | None = None
        self.extra_drop: set[bytes] | None = None
        self.content_length: bytes | None = None
        self.chunked = False
        self.expect_continue = False
        self.upgrade = False  # an Upgrade header was sent
        self.keep_alive = True
        self.http10 = False
        self.is_head = False
        self.close_after = False
        self.body_done = False
        # Wire bytes (already framed) received from the client and not yet sent upstream.
        self.unsent: list[bytes] = []
        self.unsent_size = 0
        # Wire bytes sent upstream and kept for a replay; None once too large to keep.
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        self.route: RoutePlan | None = None
        self.target: Target | None = None
        self.exclude: Target | None = None
        self.conn: UpstreamConnection | None = None
        self.outstanding = False  # counted in target.upstream.outstanding
        self.dispatched = False
        self.fresh_only = False
        self.retries = 0
        self.stale_retries = 0
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


class ProxyContext:
    """What every client connection of one gateway shares; the gateway swaps ``matcher``
    when a new table is installed, so each request sees exactly one table."""

    __slots__ = (
        "clients",
        "clock",
        "draining",
        "eject_seconds",
        "matcher",
        "metrics",
        "no_route_stats",
        "request_ids",
    )

    def __init__(
        self,
        *,
        metrics: GatewayMetrics,
        clock: CoarseClock,
        eject_seconds: float = 5.0,
        request_ids: RequestIds | None = None,
    ) -> None:
        self.matcher: RouteMatcher[RoutePlan] = RouteMatcher(())
        self.metrics = metrics
        self.clock = clock
        self.eject_seconds = eject_seconds
        self.request_ids = request_ids or RequestIds()
        self.clients: set[ClientConnection] = set()
        self.draining = False
        self.no_route_stats = metrics.stats_for("", "", "")
