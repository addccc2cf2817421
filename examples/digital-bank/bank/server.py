"""The HTTP/1.1 server under every service: keep-alive, pipelining, graceful SIGTERM.

``run(app)`` binds ``HOST:PORT`` from the environment, serves until SIGTERM or SIGINT, then
stops accepting, closes idle keep-alive connections, lets in-flight requests finish (at
most ``BANK_DRAIN_SECONDS``, default 2) and exits 0.

``BANK_PURE_PYTHON=1`` runs without ``httptools`` and ``uvloop`` even when installed.

Two flags make a bad version of any service, for release drills (see
:meth:`bank.web.App.inject_faults`): ``--fail-rate F`` answers 500 to that share of
requests, ``--delay SECONDS`` holds each request that long first.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from bank.parser import HAVE_HTTPTOOLS, ParsedRequest, ParseError, make_parser
from bank.web import REASONS, App, HTTPError, Response

if TYPE_CHECKING:
    import argparse
    from fractions import Fraction

KEEPALIVE_SECONDS = 60.0
MAX_PIPELINE = 32
LINGER_SECONDS = 1.0


class Connection(asyncio.Protocol):
    """One client connection; requests are answered in order, one at a time."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.app = server.app
        self.transport: asyncio.Transport | None = None
        self.parser = make_parser(self._on_request, self._on_continue, pure=server.pure)
        self.queue: deque[ParsedRequest] = deque()
        self.busy = False
        self.paused = False
        self.rejected = False
        self.error: ParseError | None = None
        self.last_active = time.monotonic()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.rejected:
            return  # lingering after an error: discard what the client is still sending
        try:
            self.parser.feed(data)
        except ParseError as exc:
            self._reject(exc)

    def _reject(self, exc: ParseError) -> None:
        """Answer a malformed request, then close gently (the client may still be sending:
        closing with unread data would reset the connection and lose our answer)."""
        self.rejected = True
        self.error = exc
        if not self.busy:  # else _work answers it after the requests before it, in order
            self._answer_error()

    def _answer_error(self) -> None:
        assert self.error is not None
        response = self.app.error(HTTPError(self.error.status, self.error.message))
        self._write(response, keep_alive=False, head_only=False)
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, self.close)

    # parser callbacks
    def _on_continue(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _on_request(self, request: ParsedRequest) -> None:
        if self.rejected:
            return
        self.queue.append(request)
        if len(self.queue) > MAX_PIPELINE and self.transport is not None and not self.paused:
            self.transport.pause_reading()
            self.paused = True
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        try:
            while self.queue:
                request = self.queue.popleft()
                response = await self.app.handle(request)
                keep_alive = request.keep_alive and not self.server.stopping
                self._write(response, keep_alive, head_only=request.method == "HEAD")
                if not keep_alive:
                    self.close()
                    return
                if self.paused and len(self.queue) <= MAX_PIPELINE // 2:
                    self.paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
            if self.error is not None:
                self._answer_error()
        finally:
            self.busy = False
            self.last_active = time.monotonic()

    def _write(self, response: Response, keep_alive: bool, head_only: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        reason = REASONS.get(response.status, "Unknown")
        lines = [
            f"HTTP/1.1 {response.status} {reason}",
            f"content-type: {response.content_type}",
            f"content-length: {len(response.body)}",
        ]
        lines += [f"{name}: {value}" for name, value in response.headers.items()]
        lines.append("connection: keep-alive" if keep_alive else "connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
        transport.write(head if head_only else head + response.body)

    @property
    def idle(self) -> bool:
        return not self.busy and not self.queue

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class Server:
    def __init__(self, app: App, host: str, port: int, *, pure: bool, drain: float) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.pure = pure
        self.drain = drain
        self.connections: set[Connection] = set()
        self.stopping = False
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self.stopping = True
        self.app.draining = True
        self._stop.set()

    async def serve(self, started: float, engine: str) -> None:
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(
            lambda: Connection(self), self.host, self.port, reuse_address=True, backlog=1024
        )
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        ready_ms = (time.perf_counter() - started) * 1000
        self.app.log(f"listening on {self.host}:{self.port} ({engine}, ready in {ready_ms:.0f} ms)")
        sweeper = loop.create_task(self._sweep())
        for hook in self.app.on_startup:
            await hook()
        await self._stop.wait()
        listener.close()
        sweeper.cancel()
        await self._drain()
        for hook in self.app.on_shutdown:
            await hook()
        self.app.log("stopped")

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.drain
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        while self.connections and time.monotonic() < deadline:
            for conn in list(self.connections):
                if conn.idle:
                    conn.close()
            await asyncio.sleep(0.01)
        if self.connections:
            self.app.log(f"cutting {len(self.connections)} connection(s) still busy after drain")
            for conn in list(self.connections):
                conn.close()
            await asyncio.sleep(0)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            cutoff = time.monotonic() - KEEPALIVE_SECONDS
            for conn in list(self.connections):
                if conn.idle and conn.last_active < cutoff:
                    conn.close()


def _fail_rate(text: str) -> Fraction:
    import argparse
    from fractions import Fraction

    try:
        rate = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, not {text!r}") from None
    if not 0 <= rate <= 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, not {text!r}")
    return rate


def _delay(text: str) -> float:
    import argparse

    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (0 <= seconds <= 3600):
        raise argparse.ArgumentTypeError(f"must be seconds from 0 to 3600, not {text!r}")
    return seconds


def parse_flags(app: App, argv: Sequence[str]) -> argparse.Namespace:
    """The command line of every service; a bad value exits 2 with a message naming it."""
    import argparse  # imported here: a service started without flags skips its cost

    parser = argparse.ArgumentParser(
        prog=f"python -m bank.{app.service}",
        description=app.description,
        epilog="HOST, PORT and the ALWAYSON_* variables come from the environment.",
    )
    parser.add_argument(
        "--fail-rate",
        type=_fail_rate,
        default=0,
        metavar="F",
        help="answer 500 to this share (0..1) of requests, evenly spread "
        "(never GET /, /healthz or /metrics)",
    )
    parser.add_argument(
        "--delay",
        type=_delay,
        default=0.0,
        metavar="SECONDS",
        help="hold each request this long before handling it (same exceptions)",
    )
    return parser.parse_args(list(argv))


def run(app: App, argv: Sequence[str] | None = None) -> None:
    """Serve ``app`` on ``HOST:PORT`` until SIGTERM; exits the process with 0 on a clean stop.

    ``argv`` (default ``sys.argv[1:]``) may hold ``--fail-rate`` and ``--delay``.
    """
    started = time.perf_counter()
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        flags = parse_flags(app, argv)
        app.inject_faults(flags.fail_rate, flags.delay)
    env = os.environ
    host = env.get("HOST", "127.0.0.1")
    try:
        port = int(env.get("PORT", "8000"))
        drain = float(env.get("BANK_DRAIN_SECONDS", "2"))
    except ValueError as exc:
        print(f"{app.service}: bad PORT or BANK_DRAIN_SECONDS: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    pure = env.get("BANK_PURE_PYTHON") == "1"
    loop_factory = None
    engine = "asyncio"
    if not pure:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
            engine = "uvloop"
        except ImportError:
            pass
    engine += "+httptools" if HAVE_HTTPTOOLS and not pure else "+pure-python"
    server = Server(app, host, port, pure=pure, drain=drain)
    if app.fail_rate or app.delay:
        app.log(f"injecting faults: --fail-rate {float(app.fail_rate):g} --delay {app.delay:g}")
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(server.serve(started, engine))
    except OSError as exc:
        app.log(f"cannot serve on {host}:{port}: {exc}")
        raise SystemExit(1) from None
    raise SystemExit(0)
