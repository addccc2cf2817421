"""L4 relays: the site links between sites, and each site's database endpoint.

A **site link** relays connections from one site to one address in another site. What
the links allow is one small JSON file, ``data/partitions.json``, that a drill (or a test)
writes and every relay of every site reads (:mod:`alwayson.util.sitelinks`): a relay
refuses new connections across a cut and closes the ones it carries within
``SWEEP_INTERVAL``; across a slowed link it holds every chunk back by the link's delay
(plus jitter, never reordering) in both directions and paces it to the link's rate, on
new and open connections alike. A partition or a slow link needs no running controller.

The **endpoint** is a relay whose target follows the current primary; while there is none
it holds new clients (up to ``hold``) instead of refusing them, and when the primary
changes it closes every connection to the old one. When its target is another relay (the
link to the primary's site), the slowness is that link's, applied there and only there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from alwayson.util.addresses import split_hostport
from alwayson.util.clocks import Clock, SystemClock
from alwayson.util.sitelinks import Partitions, Slowness, read_partitions, write_partitions

__all__ = [
    "Partitions",
    "Pipe",
    "Relay",
    "Slowness",
    "Target",
    "read_partitions",
    "sweep_forever",
    "write_partitions",
]

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 0.1
HOLD_POLL = 0.05
CONNECT_TIMEOUT = 2.0
PENDING_LIMIT = 1 << 20  # bytes read before the target answers, then reading pauses
DELAYED_LIMIT = 4 << 20  # bytes held back on a slowed link without a rate, per direction
_EARLY = 0.001  # a timer may fire this much before its time (uvloop counts milliseconds)

# Why a side stopped reading (a bit each): it resumes when none is left.
_PENDING = 1  # the target is not connected yet
_PEER_FULL = 2  # the other side's write buffer is full
_DELAYED = 4  # too much waits on a slowed link


@dataclass(frozen=True)
class Target:
    address: str
    site: str
    """The site the target is in, for the partition check."""


class _Side(asyncio.Protocol):
    """One end of a pipe; what it reads goes to ``peer`` (through ``delay`` when slowed)."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: list[bytes] = []
        self.delay: _Delay | None = None
        self.holds = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.pipe.closed:
            # Refused before the transport existed (a cut link decides at once): without
            # this the client keeps a connection nobody answers, and a walreceiver waits
            # on it forever, long after the link is back.
            transport.close()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
            if sum(map(len, self.pending)) > PENDING_LIMIT:
                self.hold(_PENDING)
            return
        delay = self.delay
        if delay is not None:
            delay.push(data)
        elif not peer.transport.is_closing():
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self._finish()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def _finish(self) -> None:
        delay = self.delay
        if delay is not None and delay.queue and not self.pipe.closed:
            delay.close_when_sent = True  # the end travels behind the bytes before it
        else:
            self.pipe.close()

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.hold(_PEER_FULL)

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.release(_PEER_FULL)

    def hold(self, reason: int) -> None:
        """Stop reading for ``reason`` (until every reason is released)."""
        transport = self.transport
        if not self.holds and transport is not None and not transport.is_closing():
            transport.pause_reading()
        self.holds |= reason

    def release(self, reason: int) -> None:
        if not self.holds & reason:
            return
        self.holds &= ~reason
        transport = self.transport
        if not self.holds and transport is not None and not transport.is_closing():
            transport.resume_reading()


class _Delay:
    """One direction of a slowed pipe: what ``source`` reads reaches its peer in order,
    each chunk at its due time (after the link's rate, delay and jitter).

    With ``slowness`` None the link is no longer slowed: chunks still queued go out at
    their time, new ones follow them at once, and the delay detaches once empty.
    """

    def __init__(self, source: _Side, slowness: Slowness | None, rand: Callable[[], float]) -> None:
        self.source = source
        self.slowness = slowness
        self.rand = rand
        self.loop = asyncio.get_running_loop()
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued = 0
        self.last_due = 0.0  # never release a chunk before the one read before it
        self.busy_until = 0.0  # when the link (at its rate) has sent what it was given
        self.timer: asyncio.TimerHandle | None = None
        self.close_when_sent = False

    def limit(self) -> int:
        slowness = self.slowness
        if slowness is None or slowness.rate is None:
            return DELAYED_LIMIT
        return max(64 << 10, slowness.rate // 4)

    def push(self, data: bytes) -> None:
        now = self.loop.time()
        slowness = self.slowness
        if slowness is None:
            self._append(max(now, self.last_due), data)
        elif slowness.rate is None:
            self._append(now + self._lag(slowness), data)
        else:
            # Slices of 20 ms at the rate, so a big read trickles out at the rate too.
            rate = slowness.rate
            size = max(1024, rate // 50)
            for start in range(0, len(data), size):
                piece = data[start : start + size]
                self.busy_until = max(now, self.busy_until) + len(piece) / rate
                self._append(self.busy_until + self._lag(slowness), piece)
        if self.queued > self.limit():
            self.source.hold(_DELAYED)
        if self.timer is None and self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self._send)

    def _lag(self, slowness: Slowness) -> float:
        if slowness.jitter:
            return slowness.delay + self.rand() * slowness.jitter
        return slowness.delay

    def _append(self, due: float, data: bytes) -> None:
        due = max(due, self.last_due)
        self.last_due = due
        self.queue.append((due, data))
        self.queued += len(data)

    def _send(self) -> None:
        self.timer = None
        queue = self.queue
        now = self.loop.time() + _EARLY
        ready: list[bytes] = []
        while queue and queue[0][0] <= now:
            ready.append(queue.popleft()[1])
        sent = sum(map(len, ready))
        self.queued -= sent
        peer = self.source.peer
        transport = None if peer is None else peer.transport
        if ready and transport is not None and not transport.is_closing():
            transport.write(ready[0] if len(ready) == 1 else b"".join(ready))
        if self.queued <= self.limit() // 2:
            self.source.release(_DELAYED)
        if queue:
            self.timer = self.loop.call_at(queue[0][0], self._send)
        elif self.close_when_sent:
            self.source.pipe.close()
        elif self.slowness is None and self.source.delay is self:
            self.source.delay = None

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.queued = 0


class Pipe:
    """One relayed connection: a client side and a backend side."""

    def __init__(self, relay: Relay, target: Target) -> None:
        self.relay = relay
        self.target = target
        self.client = _Side(self)
        self.backend: _Side | None = None
        self.closed = False
        self.slowness: Slowness | None = None

    def slow(self, slowness: Slowness | None) -> None:
        """Apply the link's (new) slowness to both directions, from the next chunk on;
        chunks already held back keep their time (they are "on the wire")."""
        self.slowness = slowness
        for side in (self.client, self.backend):
            if side is None:
                continue
            delay = side.delay
            if delay is not None:
                delay.slowness = slowness
                if slowness is None and not delay.queue:
                    side.delay = None
                    side.release(_DELAYED)
            elif slowness is not None:
                side.delay = _Delay(side, slowness, self.relay.rand)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for side in (self.client, self.backend):
            if side is None:
                continue
            if side.delay is not None:
                side.delay.cancel()
            if side.transport is not None:
                side.transport.close()
        self.relay.pipes.discard(self)


class Relay:
    """Accepts on ``listen`` and relays to ``choose()`` when ``site`` can reach it.

    ``chained`` holds the listen addresses of the other relays of the same process
    (:func:`sweep_forever` sets it): a target among them is the link to another site,
    whose slowness that relay applies, so this one does not add it a second time.
    """

    def __init__(
        self,
        name: str,
        site: str,
        listen: str,
        choose: Callable[[], Target | None],
        partitions: Partitions,
        hold: float = 0.0,
        rand: Callable[[], float] = random.random,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.clock: Clock = clock or SystemClock()
        self.site = site
        self.listen = listen
        self.choose = choose
        self.partitions = partitions
        self.hold = hold
        self.rand = rand
        self.chained: frozenset[str] = frozenset()
        self.pipes: set[Pipe] = set()
        self.accepting = True
        self.connections = 0
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        host, port = split_hostport(self.listen)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accepted, host, port, reuse_address=True, backlog=1024
        )

    def _accepted(self) -> asyncio.Protocol:
        placeholder = Target("", self.site)
        pipe = Pipe(self, placeholder)
        self.pipes.add(pipe)
        task = asyncio.get_running_loop().create_task(self._connect(pipe))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return pipe.client

    def _usable(self) -> Target | None:
        if not self.accepting:
            return None
        target = self.choose()
        if target is None or not self.partitions.connected(self.site, target.site):
            return None
        return target

    def slowness_to(self, target: Target) -> Slowness | None:
        """The slowness this relay adds on the way to ``target`` (None: none)."""
        if target.address in self.chained:
            return None
        return self.partitions.slowness(self.site, target.site)

    async def _connect(self, pipe: Pipe) -> None:
        loop = asyncio.get_running_loop()
        clock = self.clock
        deadline = clock.monotonic() + self.hold
        while True:
            target = self._usable()
            while target is None and clock.monotonic() < deadline and not pipe.closed:
                await clock.sleep(HOLD_POLL)
                target = self._usable()
            if target is None or pipe.closed:
                self.refused += 1
                pipe.close()
                return
            pipe.target = target
            host, port = split_hostport(target.address)
            try:
                _, backend = await asyncio.wait_for(
                    loop.create_connection(lambda: _Side(pipe), host, port), CONNECT_TIMEOUT
                )
                break
            except (OSError, TimeoutError):
                # A primary that just died: hold the client for the rest of the hold time
                # (the agent will name a new target) instead of closing it at once.
                if clock.monotonic() >= deadline or pipe.closed:
                    self.refused += 1
                    pipe.close()
                    return
                await clock.sleep(HOLD_POLL)
        if pipe.closed:
            backend.transport and backend.transport.close()
            return
        self.connections += 1
        pipe.backend = backend
        backend.peer, pipe.client.peer = pipe.client, backend
        slowness = self.slowness_to(pipe.target)
        if slowness is not None:
            pipe.slow(slowness)
        for side in (pipe.client, backend):
            # What was read before both ends existed (a server may speak first too).
            if side.pending:
                side.data_received(b"".join(side.pending))
                side.pending.clear()
            side.release(_PENDING)

    def sweep(self) -> None:
        """Close what a cut or a new target no longer allows; bring every open pipe to the
        link's current slowness."""
        current = self._usable()
        slowness = None if current is None else self.slowness_to(current)
        for pipe in list(self.pipes):
            if pipe.backend is None:
                continue
            if current is None or current.address != pipe.target.address:
                pipe.close()
            elif pipe.slowness != slowness:
                pipe.slow(slowness)

    def close_all(self) -> None:
        for pipe in list(self.pipes):
            pipe.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.close_all()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def sweep_forever(
    relays: list[Relay], partitions: Partitions, clock: Clock | None = None
) -> None:
    clock = clock or SystemClock()
    addresses = frozenset(relay.listen for relay in relays)
    for relay in relays:
        relay.chained = addresses - {relay.listen}
    while True:
        partitions.refresh()
        for relay in relays:
            relay.sweep()
        await clock.sleep(SWEEP_INTERVAL)
