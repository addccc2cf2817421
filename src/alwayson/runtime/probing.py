"""HTTP, TCP and exec probes, and the threshold logic that turns results into health."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from alwayson.spec.models import Probe


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    seconds: float


async def run_probe(probe: Probe, host: str, port: int, cwd: str) -> ProbeResult:
    started = time.monotonic()
    try:
        async with asyncio.timeout(probe.timeout):
            if probe.http is not None:
                ok, detail = await _http(host, port, probe.http)
            elif probe.exec is not None:
                ok, detail = await _exec(probe.exec, host, port, cwd)
            else:
                ok, detail = await _tcp(host, port)
    except TimeoutError:
        ok, detail = False, f"timed out after {probe.timeout:g}s"
    except OSError as exc:
        ok, detail = False, exc.strerror or str(exc)
    return ProbeResult(ok, detail, time.monotonic() - started)


async def _tcp(host: str, port: int) -> tuple[bool, str]:
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    return True, "tcp connect ok"


async def _http(host: str, port: int, path: str) -> tuple[bool, str]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: alwayson-probe\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        line = await reader.readline()
    finally:
        writer.close()
    parts = line.decode("latin-1").split()
    if len(parts) < 2 or not parts[1].isdigit():
        return False, f"not an HTTP response: {line[:60]!r}"
    code = int(parts[1])
    return 200 <= code < 400, f"HTTP {code}"


async def _exec(command: str, host: str, port: int, cwd: str) -> tuple[bool, str]:
    env = dict(os.environ, HOST=host, PORT=str(port))
    proc = await asyncio.create_subprocess_shell(
        command,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        code = await proc.wait()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    return code == 0, f"exit {code}"


@dataclass
class Thresholds:
    """Consecutive results against a probe's thresholds (pure; no I/O)."""

    success_threshold: int
    failure_threshold: int
    healthy: bool = False
    successes: int = 0
    failures: int = 0

    def record(self, ok: bool) -> bool | None:
        """Feed one result; return the new health when it flips, else None."""
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if not self.healthy and self.successes >= self.success_threshold:
                self.healthy = True
                return True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.healthy and self.failures >= self.failure_threshold:
                self.healthy = False
                return False
        return None
