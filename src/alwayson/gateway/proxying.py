"""The client side of the proxy: pick a backend, relay, retry, answer errors, drain.

One :class:`ClientConnection` per accepted connection; its parsing half is
:class:`~alwayson.gateway.reading.RequestReader`. Requests are handled one at a time in
arrival order (pipelined ones wait, and reading pauses while they do); the response side
lives in :mod:`alwayson.gateway.upstreams`. Everything here is callbacks on the event
loop: no task, no coroutine and no per-request allocation beyond the
:class:`~alwayson.gateway.exchanges.Exchange` and the bytes it relays.

Closing, the rules that make a drain drop nothing:

- a response carries ``Connection: close`` only if its exchange is marked ``close_after``
  before its head is written; the connection then closes right after it;
- a draining gateway marks the last request it has read whose response has not started;
  when that response already promised keep-alive, the *next* request gets the close;
- an idle connection of a draining gateway closes after ``Limits.drain_grace`` without a
  request, so a client that keeps sending is answered, not cut.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import cast

from httptools import HttpParserError, HttpParserUpgrade

from alwayson.gateway.balancing import choose_target
from alwayson.gateway.exchanges import Exchange, ProxyContext, RetryState
from alwayson.gateway.headers import CONTINUE_RESPONSE, error_response
from alwayson.gateway.reading import (
    BUFFERING,
    PIPELINING,
    REFUSED,
    UPLOADING,
    RequestReader,
)
from alwayson.gateway.retrying import REPLAY_LIMIT, Failure, Retry, decide_retry
from alwayson.gateway.tunnels import Tunnel
from alwayson.gateway.upstreams import UpstreamConnection

log = logging.getLogger(__name__)

_BUFFER_LIMIT = REPLAY_LIMIT


def _rid(exchange: Exchange) -> str:
    return exchange.request_id.decode("latin-1") if exchange.request_id else "-"


class ClientConnection(RequestReader):
    """A client's keep-alive connection to the gateway."""

    __slots__ = ("write_paused",)

    def __init__(self, ctx: ProxyContext) -> None:
        super().__init__(ctx)
        self.write_paused = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        ctx = self.ctx
        if ctx.connection_count >= ctx.limits.max_connections:
            ctx.metrics.rejected_connections += 1
            self.closed = True
            self.transport.abort()
            return
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.set_client_ip(str(peer[0]).encode())
        ctx.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ctx = self.ctx
        ctx.clients.discard(self)
        exchanges = list(self.queue)
        if self.active is not None:
            exchanges.insert(0, self.active)
        self.active = None
        self.current = None
        self.queue.clear()
        for exchange in exchanges:
            self._cancel(exchange)
        ctx.connection_gone()

    def eof_received(self) -> bool:
        """A client may half-close after its request: answer it, then close."""
        self.closing = True
        if self.current is not None:
            return False  # a request cut in the middle can never be answered
        last = self.queue[-1] if self.queue else self.active
        if last is None:
            return False  # nothing in flight: let the transport close
        last.close_after = True
        return True

    def data_received(self, data: bytes) -> None:
        if self.diverted:
            if self.upgrading and not self.paused & REFUSED:
                self.hold(data)
            return
        # Parse; the slow paths (upgrade, refusal, a head cut between packets) are
        # RequestReader methods. This runs for every packet of every request.
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self.upgrade_read(data, exc.args[0])
        except HttpParserError as exc:
            self.parse_failed(exc)
        else:
            if self.reading_head:
                self.count_head_bytes(len(data))
        exchange = self.active
        if exchange is None:
            return
        conn = exchange.conn
        if conn is not None:
            if exchange.unsent:
                conn.send(exchange.take_unsent())
                exchange.touched = self.ctx.clock.now
        elif not exchange.dispatched:
            self._dispatch(exchange)
        elif exchange.unsent_size > _BUFFER_LIMIT:
            self.pause(BUFFERING)

    def pause_writing(self) -> None:
        self.write_paused = True
        exchange = self.active
        if exchange is not None and exchange.conn is not None:
            exchange.conn.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        exchange = self.active
        if exchange is not None and exchange.conn is not None:
            exchange.conn.resume_reading()

    # -- proxying ------------------------------------------------------------------------

    def _dispatch(self, exchange: Exchange) -> None:
        exchange.dispatched = True
        if exchange.local_status:
            self._answer_locally(exchange)
            return
        extras = exchange.extras
        if (
            extras is not None
            and extras.expect is not None
            and not exchange.body_done
            and not exchange.http10
            and not exchange.unsent
        ):
            # The gateway takes the body itself (RFC 9110 §10.1.1 lets a proxy answer);
            # a request refused early (413, 404, 417) never gets here and gets no 100.
            self.transport.write(CONTINUE_RESPONSE)
        self._attempt(exchange)

    def _attempt(self, exchange: Exchange) -> None:
        route = exchange.route
        assert route is not None
        ctx = self.ctx
        if route.stale:
            # Read under an older table: match again so no request goes to a backend the
            # new table removed (the controller stops such a backend soon after).
            matcher = ctx.matcher
            fresh = matcher.match(exchange.routing_host, exchange.url)
            if fresh is None:
                exchange.local_status = 404 if matcher.size else 503
                exchange.local_message = "no route for this host and path"
                self._answer_locally(exchange)
                return
            extras = exchange.extras
            if extras is not None and extras.track is not None:
                fresh = fresh.pinned.get(extras.track, fresh)
            route = exchange.route = fresh
            if exchange.retry is not None:
                exchange.retry.exclude = None
        now = ctx.clock.now
        local = route.local
        retry = exchange.retry
        if retry is not None:
            target = choose_target(route, now, retry.exclude, ctx.outliers, retry.tried)
        elif len(local) == 1 and local[0].upstream.ejected_until <= now:
            target = local[0]  # choose_target's first case, in line
        else:
            target = choose_target(route, now, None, ctx.outliers)
        if target is None:
            exchange.local_status = 503
            exchange.local_message = f"no usable backend for service {route.service}"
            self._answer_locally(exchange)
            return
        exchange.target = target
        upstream = target.upstream
        upstream.outstanding += 1
        exchange.outstanding = True
        exchange.touched = now
        conn = None if retry is not None and retry.fresh_only else upstream.take_idle()
        if conn is not None:
            self._begin(exchange, conn, reused=True)
        else:
            upstream.connect(exchange)
            if exchange.unsent_size > _BUFFER_LIMIT:
                self.pause(BUFFERING)

    def _begin(self, exchange: Exchange, conn: UpstreamConnection, reused: bool) -> None:
        if exchange.unsent:
            payload = b"".join([exchange.head, *exchange.take_unsent()])
        else:
            payload = exchange.head
        conn.begin(exchange, payload, reused)
        if self.write_paused:
            conn.pause_reading()
        if self.paused & BUFFERING:
            self.resume(BUFFERING)

    def connected(self, exchange: Exchange, connection: UpstreamConnection | None) -> None:
        if exchange.cancelled:
            if connection is not None:
                connection.upstream.release(connection)
            return
        if connection is None:
            self.upstream_failed(exchange, Failure.CONNECT_FAILED)
            return
        self._begin(exchange, connection, reused=False)

    def upstream_failed(self, exchange: Exchange, failure: Failure) -> None:
        target = exchange.target
        assert target is not None
        upstream = target.upstream
        if exchange.outstanding:
            upstream.outstanding -= 1
            exchange.outstanding = False
        if exchange.cancelled:
            return
        ctx = self.ctx
        now = ctx.clock.now
        if failure is Failure.CONNECT_FAILED:
            ctx.metrics.count_connect_error(target.service, target.id)
            if ctx.outliers.connect_failed(upstream, now):
                ctx.metrics.count_ejection(target.service, target.id)
        elif failure is not Failure.STALE_CONNECTION and ctx.outliers.failed(upstream, now):
            ctx.metrics.count_ejection(target.service, target.id)
        if exchange.response_started:
            # Part of the response is with the client already: cut the connection so the
            # truncation cannot pass for a complete response.
            log.warning(
                "request %s to %s: %s after the response started",
                _rid(exchange),
                target.id,
                failure.value,
            )
            target.stats.observe(502, monotonic() - exchange.started_at)
            self.transport.abort()
            return
        route = exchange.route
        assert route is not None
        retry = exchange.retry
        if retry is None:
            retry = exchange.retry = RetryState()
        decision = decide_retry(
            exchange.method,
            failure,
            retries_used=retry.retries,
            stale_retries_used=retry.stale_retries,
            body_replayable=exchange.replay is not None,
            connect_retries_used=len(retry.tried) - retry.retries,
            backends_left=route.reach - len(retry.tried) - 1,
        )
        if decision is not Retry.NO:
            ctx.metrics.count_retry(target.service)
            if decision is Retry.FRESH_CONNECTION:
                retry.stale_retries += 1
                retry.fresh_only = True
            else:  # to another backend
                if decision is Retry.ANOTHER_BACKEND:
                    retry.retries += 1
                retry.tried += (target,)
                retry.exclude = target
                retry.fresh_only = False
            exchange.rewind()
            self._attempt(exchange)
            return
        if failure is Failure.TIMEOUT:
            exchange.local_status = 504
        elif failure is Failure.CONNECT_FAILED:
            exchange.local_status = 503  # nothing reached a backend: safe to try again
        else:
            exchange.local_status = 502
        exchange.local_message = f"backend {target.id} of service {target.service}: {failure.value}"
        self._answer_locally(exchange)

    def response_complete(self, exchange: Exchange) -> None:
        target = exchange.target
        assert target is not None
        upstream = target.upstream
        if exchange.outstanding:
            upstream.outstanding -= 1
            exchange.outstanding = False
        status = exchange.status
        target.stats.observe(status, monotonic() - exchange.started_at)
        if status >= 500:
            ctx = self.ctx
            if ctx.outliers.failed(upstream, ctx.clock.now):
                ctx.metrics.count_ejection(target.service, target.id)
        elif upstream.needs_reset:
            self.ctx.outliers.succeeded(upstream, self.ctx.clock.now)
        self._done(exchange)

    def upgraded(self, exchange: Exchange, connection: UpstreamConnection) -> None:
        """The backend answered 101: from now on both connections are one byte tunnel."""
        target = exchange.target
        assert target is not None
        upstream = target.upstream
        if exchange.outstanding:
            upstream.outstanding -= 1
            exchange.outstanding = False
        target.stats.observe(101, monotonic() - exchange.started_at)
        if upstream.needs_reset:
            self.ctx.outliers.succeeded(upstream, self.ctx.clock.now)
        backend = connection.detach()
        ctx = self.ctx
        ctx.clients.discard(self)
        self.closed = True  # the transport belongs to the tunnel now
        self.active = None
        self.current = None
        if self.paused:
            self.paused = 0
            self.transport.resume_reading()
        held, self.held = self.held, []
        Tunnel(ctx, self.transport, backend, held)

    def pause_upload(self) -> None:
        self.pause(UPLOADING)

    def resume_upload(self) -> None:
        self.resume(UPLOADING)

    # -- answers of the gateway itself ---------------------------------------------------

    def _answer_locally(self, exchange: Exchange) -> None:
        if self.closed:
            return
        status = exchange.local_status
        close = not exchange.keep_alive or exchange.close_after or not exchange.body_done
        request_id = exchange.request_id or b"-"
        self.transport.write(
            error_response(
                status, exchange.local_message, request_id, close=close, head_only=exchange.is_head
            )
        )
        if exchange.target is not None:
            stats = exchange.target.stats
        elif exchange.route is not None:
            stats = exchange.route.unavailable_stats
        else:
            stats = self.ctx.no_route_stats
        stats.observe(status, monotonic() - exchange.started_at)
        if status >= 500:
            route = exchange.route
            service = route.service if route is not None else ""
            self.ctx.metrics.count_local_response(service, status)
        (log.warning if status >= 500 else log.info)(
            "request %s %s %s: %d %s",
            _rid(exchange),
            exchange.method.decode("latin-1") or "-",
            exchange.url[:200].decode("latin-1") or "-",
            status,
            exchange.local_message,
        )
        exchange.keep_alive = not close
        self._done(exchange)

    def _refuse_current(self, status: int, message: str) -> None:
        """The request being read is refused: answer it in turn, then close."""
        exchange = self.current
        self.current = None
        self.reading_head = False
        self.closing = True
        self.diverted = True
        self.pause(REFUSED)
        if exchange is None:
            exchange = Exchange(self.owner, self.transport, monotonic())
        if exchange.request_id is None:
            exchange.request_id = self.ctx.request_ids.next()
        exchange.local_status = status
        exchange.local_message = message
        exchange.close_after = True
        exchange.keep_alive = False
        if exchange is self.active:
            if not exchange.dispatched:
                self._dispatch(exchange)
            elif exchange.response_started:
                self.transport.abort()
            else:
                self._cancel(exchange)  # the backend saw part of it: cut that connection
                self._answer_locally(exchange)
        elif exchange not in self.queue:
            self.place(exchange)
            if exchange is self.active:
                self._dispatch(exchange)

    # -- connection lifecycle ------------------------------------------------------------

    def _done(self, exchange: Exchange) -> None:
        """The exchange is over; go on with the next request or close."""
        self.touched = self.ctx.clock.now
        self.active = None
        if self.paused:
            self.resume(UPLOADING)
        if not exchange.keep_alive or exchange.close_after or not exchange.body_done:
            self._close()
            return
        queue = self.queue
        if queue:
            following = queue.popleft()
            self.active = following
            if not queue:
                self.resume(PIPELINING)
            self._dispatch(following)

    def _cancel(self, exchange: Exchange) -> None:
        exchange.cancelled = True
        conn = exchange.conn
        if conn is not None:
            conn.abandon()
        if exchange.outstanding and exchange.target is not None:
            exchange.target.upstream.outstanding -= 1
            exchange.outstanding = False

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def start_draining(self) -> None:
        """Serve what was read, then close: see the module docstring for the rules."""
        self.closing = True
        last = self.current or (self.queue[-1] if self.queue else self.active)
        if last is None:
            self.touched = self.ctx.clock.now  # the grace of an idle connection starts now
        elif not last.response_started:
            last.close_after = True
        # else: its response promised keep-alive already; the next request gets the close

    def check_timeouts(self, now: float) -> None:
        """Called by the gateway's sweeper a few times a second (coarse clock)."""
        limits = self.ctx.limits
        exchange = self.active
        if exchange is None:
            if self.reading_head:
                if now - self.head_started > limits.header_timeout:
                    self._refuse_current(408, "the request head took too long to arrive")
                return
            idle = limits.drain_grace if self.closing else limits.idle_timeout
            if self.current is None and now - self.touched > idle:
                self._close()
            return
        conn = exchange.conn
        if conn is not None and now - exchange.touched > limits.upstream_timeout:
            conn.abandon()
            self.upstream_failed(exchange, Failure.TIMEOUT)
