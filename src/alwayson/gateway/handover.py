"""Handing the listening sockets over to a successor process: restarts and upgrades of a
gateway without one refused connection.

The exchange, over a Unix stream socket at the running gateway's ``--handover PATH``:

1. the successor, started with ``--takeover PATH``, connects before it binds anything;
2. the running gateway sends one message with :func:`socket.send_fds`: the payload
   ``b"alwayson-listeners N\\n"`` and N descriptors, each ``--listen`` socket in argument
   order, then the admin listener;
3. the successor checks each socket's ``getsockname()`` against its own ``--listen`` and
   ``--admin`` (refusing any mismatch), serves on them, and answers ``b"ready\\n"``;
4. the running gateway closes its copies of the listeners and drains. The kernel sockets
   stay open in the successor all along, so a connection waiting in the accept queue is
   accepted by one process or the other, never refused; there is no SO_REUSEPORT race.

The successor then offers the same sockets at its own ``--handover PATH``. If it never
answers ``ready`` (it refused, crashed or timed out), the running gateway goes on serving
and offering. If nobody offers at ``--takeover PATH`` (no file, nobody listening, no
answer within :data:`TAKEOVER_TIMEOUT`), the successor binds its addresses itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

READY = b"ready\n"
GREETING = b"alwayson-listeners"
TAKEOVER_TIMEOUT = 5.0  # the successor's wait for the running gateway's offer
READY_TIMEOUT = 30.0  # the running gateway's wait for the successor's ``ready``


class HandoverOffer:
    """The running gateway's side: offers its listeners at ``path`` until one successor
    takes them.

    ``listeners`` returns the descriptors to send; ``prepare`` runs before they are sent
    (the gateway stops taking route pushes, so the successor's copy of the routes file is
    final), ``resume`` when a successor did not take them, ``handed_over`` when it did.
    """

    def __init__(
        self,
        path: Path,
        *,
        listeners: Callable[[], list[int]],
        prepare: Callable[[], Awaitable[None]],
        resume: Callable[[], None],
        handed_over: Callable[[], None],
    ) -> None:
        self.path = path
        self._listeners = listeners
        self._prepare = prepare
        self._resume = resume
        self._handed_over = handed_over
        self._sock: socket.socket | None = None
        self._identity: tuple[int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket file, or the predecessor's (it no longer needs it)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o600)
            sock.listen(4)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        stat = path.stat()
        self._identity = (stat.st_dev, stat.st_ino)
        self._sock = sock
        self._task = asyncio.get_running_loop().create_task(self._serve())
        log.info("offering the listening sockets to a successor at %s", path)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            with conn:
                if await self._offer(loop, conn):
                    self._close_socket(unlink=False)  # the successor binds the path itself
                    return

    async def _offer(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bool:
        conn.setblocking(False)
        await self._prepare()
        answer = b""
        try:
            fds = self._listeners()
            # A few bytes on a fresh Unix socket: this cannot block.
            socket.send_fds(conn, [b"%s %d\n" % (GREETING, len(fds))], fds)
            async with asyncio.timeout(READY_TIMEOUT):
                while not answer.endswith(b"\n") and len(answer) < 64:
                    chunk = await loop.sock_recv(conn, 64)
                    if not chunk:
                        break
                    answer += chunk
        except (OSError, TimeoutError) as exc:
            log.warning("handover to a successor failed: %r", exc)
        if answer == READY:
            log.info("a successor took the listening sockets: draining")
            self._handed_over()
            return True
        log.warning("the successor did not take the listening sockets (%r): serving on", answer)
        self._resume()
        return False

    def _close_socket(self, *, unlink: bool) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if unlink and self._identity is not None:
            # Only our own file: a successor may have put its socket there already.
            with contextlib.suppress(OSError):
                stat = self.path.stat()
                if (stat.st_dev, stat.st_ino) == self._identity:
                    self.path.unlink()
        self._identity = None

    async def aclose(self) -> None:
        """Stop offering (SIGTERM, or the gateway stops)."""
        task = self._task
        self._task = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._close_socket(unlink=True)


@dataclass
class TakenListeners:
    """The sockets a successor received; ``confirm`` tells the predecessor to let go."""

    listeners: list[socket.socket]
    admin: socket.socket
    channel: socket.socket

    def confirm(self) -> None:
        try:
            self.channel.sendall(READY)
        except OSError as exc:
            # The predecessor is gone: nothing to tell, and the sockets are ours anyway.
            log.warning("could not confirm the takeover: %r", exc)
        finally:
            self.channel.close()


def take_over(
    path: Path,
    listen: Sequence[tuple[str, int]],
    admin: tuple[str, int],
    timeout: float = TAKEOVER_TIMEOUT,
) -> TakenListeners | None:
    """Receive the listeners offered at ``path``; None when there is nothing to take (the
    caller binds instead). Blocking: run it in a thread."""
    if not path.exists():
        log.info("takeover: nothing at %s, binding the addresses", path)
        return None
    expected = [*listen, admin]
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    channel.settimeout(timeout)
    try:
        channel.connect(str(path))
        message, fds, flags, _ = socket.recv_fds(channel, 256, len(expected) + 8)
    except (OSError, TimeoutError) as exc:
        channel.close()
        log.warning("takeover: no offer from %s (%r), binding the addresses", path, exc)
        return None
    sockets = [socket.socket(fileno=fd) for fd in fds]
    problem = _problem(message, flags, sockets, expected)
    if problem is not None:
        for sock in sockets:
            sock.close()
        channel.close()
        log.error("takeover: refusing the sockets offered at %s: %s", path, problem)
        return None
    log.info("takeover: received %d listening sockets from %s", len(sockets), path)
    return TakenListeners(sockets[:-1], sockets[-1], channel)


def _problem(
    message: bytes, flags: int, sockets: list[socket.socket], expected: list[tuple[str, int]]
) -> str | None:
    if not message.startswith(GREETING):
        return f"unexpected greeting {message[:40]!r}"
    if flags & socket.MSG_CTRUNC:
        return "more descriptors than expected"
    if len(sockets) != len(expected):
        return f"{len(sockets)} sockets offered, {len(expected)} expected (--listen + --admin)"
    for sock, (host, port) in zip(sockets, expected, strict=True):
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return f"socket {sock.fileno()} is not a TCP socket"
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return f"socket {sock.fileno()} is not listening"
        bound_host, bound_port = sock.getsockname()[:2]
        if (port and bound_port != port) or not _same_host(host, bound_host):
            return f"offered {bound_host}:{bound_port} where this gateway wants {host}:{port}"
    return None


def _same_host(wanted: str, bound: str) -> bool:
    """Whether a socket bound to ``bound`` (an address) is one ``wanted`` would bind."""
    wanted = wanted.strip("[]")
    try:
        address = ipaddress.ip_address(bound.split("%", 1)[0])
    except ValueError:
        return False
    if not wanted:
        return address.is_unspecified
    try:
        return ipaddress.ip_address(wanted) == address
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(wanted, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return any(str(info[4][0]).split("%", 1)[0] == str(address) for info in infos)
