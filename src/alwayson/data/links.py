"""L4 relays: the site links between sites, and each site's database endpoint.

A **site link** relays connections from one site to one address in another site. Whether
two sites can talk is one small JSON file, ``data/partitions.json``
(``{"cut": [["jakarta", "witness"], ...]}``), that a drill (or a test) writes: a relay
refuses new connections across a cut and closes the ones it carries within
``SWEEP_INTERVAL``. Every relay of every site reads the same file, so a partition needs
no running controller, and cutting a site off is one write.

The **endpoint** is a relay whose target follows the current primary; while there is none
it holds new clients (up to ``hold``) instead of refusing them, and when the primary
changes it closes every connection to the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alwayson.util.addresses import split_hostport

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 0.1
CONNECT_TIMEOUT = 2.0


class Partitions:
    """The cut site pairs, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._cut: frozenset[frozenset[str]] = frozenset()

    def refresh(self) -> None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._cut = None, frozenset()
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            pairs = json.loads(self.path.read_text()).get("cut", [])
            if not isinstance(pairs, list):
                raise ValueError("'cut' must be a list of [site, site] pairs")
            self._cut = frozenset(
                frozenset(p)
                for p in pairs
                if isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
            )
            self._stamp = stamp
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            log.warning("%s: unreadable (%s); keeping the previous partitions", self.path, exc)

    def connected(self, a: str, b: str) -> bool:
        return a == b or frozenset((a, b)) not in self._cut


def write_partitions(path: Path, cut: list[tuple[str, str]]) -> None:
    """Replace the cut pairs atomically (what drills and tests call)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"cut": [list(p) for p in cut]}))
    tmp.replace(path)


@dataclass(frozen=True)
class Target:
    address: str
    site: str
    """The site the target is in, for the partition check."""


class _Side(asyncio.Protocol):
    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.pipe.closed:
            # Refused before the transport existed (a cut link decides at once): without
            # this the client keeps a connection nobody answers, and a walreceiver waits
            # on it forever, long after the link is back.
            transport.close()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
            if self.transport is not None and sum(map(len, self.pending)) > 1 << 20:
                self.transport.pause_reading()
            return
        if not peer.transport.is_closing():
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.pipe.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.resume_reading()


class Pipe:
    """One relayed connection: a client side and a backend side."""

    def __init__(self, relay: Relay, target: Target) -> None:
        self.relay = relay
        self.target = target
        self.client = _Side(self)
        self.backend: _Side | None = None
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for side in (self.client, self.backend):
            if side is not None and side.transport is not None:
                side.transport.close()
        self.relay.pipes.discard(self)


class Relay:
    """Accepts on ``listen`` and relays to ``choose()`` when ``site`` can reach it."""

    def __init__(
        self,
        name: str,
        site: str,
        listen: str,
        choose: Callable[[], Target | None],
        partitions: Partitions,
        hold: float = 0.0,
    ) -> None:
        self.name = name
        self.site = site
        self.listen = listen
        self.choose = choose
        self.partitions = partitions
        self.hold = hold
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

    async def _connect(self, pipe: Pipe) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.hold
        while True:
            target = self._usable()
            while target is None and loop.time() < deadline and not pipe.closed:
                await asyncio.sleep(0.05)
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
                if loop.time() >= deadline or pipe.closed:
                    self.refused += 1
                    pipe.close()
                    return
                await asyncio.sleep(0.05)
        if pipe.closed:
            backend.transport and backend.transport.close()
            return
        self.connections += 1
        pipe.backend = backend
        backend.peer, pipe.client.peer = pipe.client, backend
        if pipe.client.pending and backend.transport is not None:
            backend.transport.write(b"".join(pipe.client.pending))
            pipe.client.pending.clear()
            if pipe.client.transport is not None:
                pipe.client.transport.resume_reading()

    def sweep(self) -> None:
        """Close what a cut or a new target no longer allows."""
        current = self._usable()
        for pipe in list(self.pipes):
            if pipe.backend is None:
                continue
            if current is None or current.address != pipe.target.address:
                pipe.close()

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


async def sweep_forever(relays: list[Relay], partitions: Partitions) -> None:
    while True:
        partitions.refresh()
        for relay in relays:
            relay.sweep()
        await asyncio.sleep(SWEEP_INTERVAL)
