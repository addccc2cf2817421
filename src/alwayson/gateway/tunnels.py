"""Byte tunnels: what a client connection and its backend connection become after the
backend answered an upgrade request (WebSocket) with ``101 Switching Protocols``.

Both transports get a :class:`TunnelEnd` protocol (``transport.set_protocol``), so the
HTTP protocols are out of the way and the hot path of plain requests carries no check for
this rare case. Bytes are relayed as they come, with flow control both ways (a full write
buffer on one side pauses reading on the other); when either side closes or half-closes,
both are closed. A tunnel with no byte either way for ``Limits.tunnel_idle_timeout`` is
closed by the gateway's sweeper; a draining gateway cuts tunnels at its drain deadline.
"""

from __future__ import annotations

import asyncio
import logging

from alwayson.gateway.exchanges import ProxyContext

log = logging.getLogger(__name__)


class TunnelEnd(asyncio.Protocol):
    """One side of a tunnel: what it reads goes to the other side."""

    __slots__ = ("peer", "transport", "tunnel")

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer: TunnelEnd | None = None

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and not peer.transport.is_closing():
            peer.transport.write(data)
        self.tunnel.touched = self.tunnel.ctx.clock.now

    def eof_received(self) -> bool:
        self.tunnel.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close()

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()


class Tunnel:
    """A client connection and a backend connection relaying bytes to each other."""

    __slots__ = ("backend", "client", "closed", "ctx", "touched")

    def __init__(
        self,
        ctx: ProxyContext,
        client: asyncio.Transport,
        backend: asyncio.Transport,
        held: list[bytes],
    ) -> None:
        """``held``: bytes the client sent after its upgrade request, for the backend."""
        self.ctx = ctx
        self.touched = ctx.clock.now
        self.closed = False
        self.client = TunnelEnd(self, client)
        self.backend = TunnelEnd(self, backend)
        self.client.peer = self.backend
        self.backend.peer = self.client
        ctx.tunnels.add(self)
        client.set_protocol(self.client)
        backend.set_protocol(self.backend)
        if held:
            backend.write(b"".join(held))
        if client.is_closing() or backend.is_closing():
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for end in (self.client, self.backend):
            end.transport.close()
        self.ctx.tunnels.discard(self)
        self.ctx.connection_gone()

    def abort(self) -> None:
        for end in (self.client, self.backend):
            end.transport.abort()
        self.close()

    def check_timeout(self, now: float) -> None:
        if now - self.touched > self.ctx.limits.tunnel_idle_timeout:
            log.info("closing a tunnel idle for %.0f s", now - self.touched)
            self.close()
