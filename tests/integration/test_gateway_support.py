"""Helpers of the gateway integration tests: a tiny upstream server and process handling.

Run as a script, this module is the upstream server:
``python test_gateway_support.py --listen 127.1.1.1:8000 --name accounts-jakarta-1``.
It answers every request with JSON describing what it received (its name, the method,
path, a few headers and the body size), with keep-alive. Special paths:

- ``/slow/<ms>``        answers after that many milliseconds
- ``/status/<code>``    answers with that status
- ``/chunked``          answers with a chunked body
- ``/close``            answers with ``Connection: close`` and closes
- ``/big/<bytes>``      answers with a body of that many bytes
- ``/garbage``          answers with bytes that are not HTTP
- ``/reset``            resets the connection instead of answering
- an upgrade request (``Connection: Upgrade``) is answered ``101`` and then every byte
  is echoed back until the client closes

The helpers below start processes in their own session, wait for readiness by polling a
condition with a deadline, and stop every process by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client as http_client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

SUPPORT_SCRIPT = Path(__file__).resolve()


# -- the upstream server (runs in its own process) -------------------------------------


class _UpstreamProtocol(asyncio.Protocol):
    def __init__(self, name: str) -> None:
        import httptools

        self.name = name
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body_size = 0
        self.body_hash = 0
        self.echoing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        import httptools

        transport = self.transport
        assert transport is not None
        if self.echoing:
            transport.write(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.echoing = True
            upgrade = self.headers.get("upgrade", "websocket")
            transport.write(
                f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: {upgrade}\r\n"
                f"Connection: Upgrade\r\nX-Upstream: {self.name}\r\n\r\n".encode()
                + data[exc.args[0] :]
            )
            transport.resume_reading()
        except Exception:
            transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body_size = 0
        self.body_hash = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode().lower()
        if key in self.headers:
            self.headers[key] += ", " + value.decode()
        else:
            self.headers[key] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        for byte in body[:16]:
            self.body_hash = (self.body_hash * 31 + byte) % 1_000_003

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade():
            return  # answered in data_received, which gets the bytes after the head
        method = self.parser.get_method().decode()
        keep_alive = self.parser.should_keep_alive()
        path = self.url.decode()
        document = {
            "name": self.name,
            "method": method,
            "path": path,
            "headers": self.headers,
            "body_size": self.body_size,
        }
        asyncio.get_running_loop().create_task(self._respond(path, method, document, keep_alive))
        if self.transport is not None:
            self.transport.pause_reading()

    async def _respond(self, path: str, method: str, document: dict[str, object], ka: bool) -> None:
        transport = self.transport
        assert transport is not None
        status = 200
        body = json.dumps(document).encode()
        chunked = False
        close = not ka
        if path.startswith("/slow/"):
            await asyncio.sleep(int(path.split("/")[2]) / 1000)
        elif path.startswith("/status/"):
            status = int(path.split("/")[2])
        elif path.startswith("/chunked"):
            chunked = True
        elif path.startswith("/close"):
            close = True
        elif path.startswith("/big/"):
            body = b"x" * int(path.split("/")[2])
        elif path.startswith("/garbage"):
            transport.write(b"SPDY/9 whatever\r\n\r\n")
            return
        elif path.startswith("/reset"):
            transport.abort()
            return
        if transport.is_closing():
            return
        head = [f"HTTP/1.1 {status} Whatever", "content-type: application/json"]
        head.append(f"x-upstream: {self.name}")
        if chunked:
            head.append("transfer-encoding: chunked")
        elif status not in (204, 304):
            head.append(f"content-length: {len(body)}")
        if close:
            head.append("connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode()
        if method != "HEAD" and status not in (204, 304):
            if chunked:
                half = len(body) // 2
                for part in (body[:half], body[half:]):
                    data += b"%x\r\n%s\r\n" % (len(part), part)
                data += b"0\r\n\r\n"
            else:
                data += body
        transport.write(data)
        if close:
            transport.close()
        else:
            transport.resume_reading()


async def _serve_upstream(host: str, port: int, name: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _UpstreamProtocol(name), host, port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def _upstream_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    asyncio.run(_serve_upstream(host, int(port), args.name))


# -- process handling for the tests ------------------------------------------------------


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Processes:
    """Every process a test starts; ``stop_all`` kills them by pid (session leaders)."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        handle = log.open("wb")
        try:
            process = subprocess.Popen(
                args, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            handle.close()
        self.started.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)
            try:
                return process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
        return process.wait(timeout=5)

    def stop_all(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)


@contextlib.contextmanager
def processes() -> Iterator[Processes]:
    group = Processes()
    try:
        yield group
    finally:
        group.stop_all()


def start_upstream(
    group: Processes, host: str, name: str, logs: Path, port: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    port = port or free_port(host)
    process = group.start(
        [sys.executable, str(SUPPORT_SCRIPT), "--listen", f"{host}:{port}", "--name", name],
        logs / f"upstream-{name}.log",
    )
    wait_until(lambda: accepts(host, port) or process.poll() is not None, what=f"upstream {name}")
    assert process.poll() is None, (logs / f"upstream-{name}.log").read_text()
    return process, port


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    host: str
    port: int
    admin_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"


def start_gateway(
    group: Processes,
    logs: Path,
    *,
    site: str = "jakarta",
    host: str = "127.1.0.1",
    port: int | None = None,
    admin_port: int | None = None,
    extra: list[str] | None = None,
    name: str = "gateway",
) -> GatewayProcess:
    port = port or free_port(host)
    admin_port = admin_port or free_port(host)
    log = logs / f"{name}.log"
    args = [
        sys.executable,
        "-m",
        "alwayson.gateway",
        "--listen",
        f"{host}:{port}",
        "--admin",
        f"{host}:{admin_port}",
        "--site",
        site,
        *(extra or []),
    ]
    process = group.start(args, log)
    gateway = GatewayProcess(process, host, port, admin_port, log)

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"gateway exited early:\n{log.read_text()}")
        return http("GET", gateway.admin_url + "/healthz")[0] == 200

    wait_until(healthy, what=f"{name} /healthz")
    return gateway


def start_successor(
    group: Processes,
    logs: Path,
    previous: GatewayProcess,
    *,
    extra: list[str],
    site: str = "jakarta",
    name: str = "successor",
) -> GatewayProcess:
    """A gateway on the same addresses as ``previous`` (it takes them over: pass
    ``--takeover``); returns at once, since ``/healthz`` may still be the old one's."""
    log = logs / f"{name}.log"
    args = [
        sys.executable,
        "-m",
        "alwayson.gateway",
        "--listen",
        f"{previous.host}:{previous.port}",
        "--admin",
        f"{previous.host}:{previous.admin_port}",
        "--site",
        site,
        *extra,
    ]
    process = group.start(args, log)
    return GatewayProcess(process, previous.host, previous.port, previous.admin_port, log)


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request with urllib (a new connection each time); (0, {}, b"") if it failed."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, _lower(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, _lower(exc.headers.items()), exc.read()
    except (OSError, urllib.error.URLError):
        return 0, {}, b""


class SteadyLoad:
    """Client threads sending requests (GETs unless told) back to back until stopped;
    counts every outcome.

    With ``new_connections`` each request opens its own connection (what a load balancer
    in front of the front door sees); otherwise each thread keeps one keep-alive
    connection and reconnects only after a failure.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        threads: int = 4,
        path: str = "/",
        new_connections: bool = False,
        method: str = "GET",
        body: bytes | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.method = method
        self.body = body
        self.new_connections = new_connections
        self.ok = 0
        self.failures: list[str] = []
        self.seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    @property
    def total(self) -> int:
        with self._lock:
            return self.ok + len(self.failures)

    def _run(self) -> None:
        conn: http_client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None:
                conn = http_client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                conn.request(self.method, self.path, body=self.body)
                response = conn.getresponse()
                body = response.read()
                outcome = None if response.status == 200 else f"{response.status} {body!r}"
                name = json.loads(body).get("name", "?") if outcome is None else ""
            except (OSError, http_client.HTTPException, ValueError) as exc:
                outcome, name = repr(exc), ""
            with self._lock:
                if outcome is None:
                    self.ok += 1
                    self.seen[name] += 1
                else:
                    self.failures.append(outcome)
            if outcome is not None or self.new_connections:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        """Block until ``count`` more requests have completed (either way)."""
        target = self.total + count
        wait_until(lambda: self.total >= target, timeout=timeout, what=f"{count} requests")


class KeepAliveLoad:
    """``connections`` keep-alive connections sending GETs and POSTs back to back, from an
    event loop in its own thread; counts every outcome.

    A response with ``Connection: close`` ends its connection normally; the client then
    reconnects (``reconnect=True``) or that connection stops. Anything else is a failure:
    a refused connect, a reset or an early close before a whole response, a non-2xx.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connections: int = 8,
        body_size: int = 2000,
        reconnect: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.connections = connections
        self.body = b"p" * body_size
        self.reconnect = reconnect
        self.ok = 0
        self.closes = 0  # responses with Connection: close
        self.failures: list[str] = []
        self.by_method: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> KeepAliveLoad:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=20)

    @property
    def total(self) -> int:
        with self._lock:
            return self.ok + len(self.failures)

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        target = self.total + count
        wait_until(lambda: self.total >= target, timeout=timeout, what=f"{count} requests")

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._started.set()
        workers = [asyncio.create_task(self._connection(n)) for n in range(self.connections)]
        await self._stopping.wait()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    def _record(self, method: str, failure: str | None) -> None:
        with self._lock:
            if failure is None:
                self.ok += 1
                self.by_method[method] += 1
            else:
                self.failures.append(f"{method}: {failure}")

    async def _connection(self, number: int) -> None:
        assert self._stopping is not None
        sent = 0
        while not self._stopping.is_set():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError as exc:
                self._record("CONNECT", f"connect failed: {exc!r}")
                await asyncio.sleep(0.01)  # a refused connect: do not spin
                continue
            try:
                while not self._stopping.is_set():
                    post = sent % 2 == 1
                    sent += 1
                    method = "POST" if post else "GET"
                    failure, closing = await self._exchange(reader, writer, post, number)
                    self._record(method, failure)
                    if failure is not None or closing:
                        break
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if not self.reconnect:
                return

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        post: bool,
        number: int,
    ) -> tuple[str | None, bool]:
        if post:
            head = (
                f"POST /pay/{number} HTTP/1.1\r\nHost: load\r\n"
                f"Content-Length: {len(self.body)}\r\n\r\n"
            ).encode()
            writer.write(head + self.body)
        else:
            writer.write(f"GET /item/{number} HTTP/1.1\r\nHost: load\r\n\r\n".encode())
        try:
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if headers.get("transfer-encoding") == "chunked":
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                await reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            return repr(exc), True
        except TimeoutError:
            return "no response within 15 s", True
        closing = headers.get("connection", "").lower() == "close"
        if closing:
            with self._lock:
                self.closes += 1
        if not 200 <= status < 300:
            return f"HTTP {status}", closing
        return None, closing


def write_table(path: Path, document: dict[str, object]) -> Path:
    path.write_text(json.dumps(document))
    return path


def route_table(site: str, generation: int, *routes: dict[str, object]) -> dict[str, object]:
    return {"generation": generation, "site": site, "routes": list(routes)}


def backend_entry(
    name: str, host: str, port: int, site: str = "jakarta", weight: int = 100
) -> dict[str, object]:
    address = f"{host}:{port}"
    return {"id": name, "address": address, "site": site, "version": "1.0.0", "weight": weight}


def peak_rss_kib(pid: int) -> int:
    """The highest resident set size a process has had (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


def metric_value(text: str, prefix: str) -> float:
    """Sum of the samples whose line starts with ``prefix`` (name and some labels)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _lower(items: object) -> dict[str, str]:
    return {str(name).lower(): str(value) for name, value in items}  # type: ignore[attr-defined]


if __name__ == "__main__":
    _upstream_main()
