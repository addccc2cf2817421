"""Throughput and tail latency of the alwayson gateway, measured against HAProxy.

    .venv/bin/python benchmarks/gateway.py [--duration 10] [--connections 50] [--json]

One run measures, with the same wrk settings each time and on loopback only:

- ``direct``   wrk → backend
- ``gateway``  wrk → alwayson gateway (standalone mode, ``--upstream``) → backend
- ``haproxy``  wrk → HAProxy (``nbthread 1``, http mode, keep-alive to the server) → backend

The backend is a minimal uvloop protocol server answering a fixed small response with
keep-alive. wrk and haproxy are installed with apt-get when missing. Every process
started here is stopped by its pid at the end, even on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HOST = "127.0.0.1"
BACKEND_BODY = b"hello from the benchmark backend\n"


# -- the backend (runs in its own process: ``gateway.py --serve-backend PORT``) ----------


def serve_backend(port: int) -> None:
    import asyncio

    import uvloop

    response = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s" % (
        len(BACKEND_BODY),
        BACKEND_BODY,
    )

    class Backend(asyncio.Protocol):
        """Answers each request head (GET, no body) with the fixed response."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.pending = b""

        def data_received(self, data: bytes) -> None:
            data = self.pending + data if self.pending else data
            count = data.count(b"\r\n\r\n")
            self.pending = data[data.rfind(b"\r\n\r\n") + 4 :] if count else data
            if count:
                self.transport.write(response * count)  # type: ignore[attr-defined]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Backend, HOST, port, backlog=4096)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    uvloop.run(main())


# -- tools -----------------------------------------------------------------------------


def ensure_tools() -> None:
    missing = [tool for tool in ("wrk", "haproxy") if shutil.which(tool) is None]
    if not missing:
        return
    print(f"installing {' '.join(missing)} with apt-get", file=sys.stderr)
    install = ["apt-get", "install", "-y", *missing]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)
    haproxy_path = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy_path).exists():
        raise SystemExit("haproxy is still missing after apt-get install")


def haproxy_binary() -> str:
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_accepting(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(
                f"{what} exited early with code {process.returncode}:\n{log.read_text()}"
            )
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not accept connections on {HOST}:{port} within 15 s")


class Processes:
    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as handle:
            process = subprocess.Popen(
                args, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=12)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)


# -- measuring -------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    proxy_cpu_us_per_request: float | None = None  # user + system time of the proxy


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not match:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def run_wrk(url: str, *, duration: float, connections: int, threads: int) -> tuple[Result, str]:
    args = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        url,
    ]
    output = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = 0
    for match in re.finditer(r"(connect|read|write|timeout) (\d+)", output):
        errors += int(match.group(2))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    return Result("", rps, round(p50, 3), round(p99, 3), errors, requests), output


HAPROXY_CONFIG = """\
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always
frontend bench
    bind {host}:{port}
    default_backend backend
backend backend
    server backend1 {host}:{backend_port} maxconn 1000
"""


def median_result(name: str, runs: list[Result]) -> Result:
    """The run with the median requests/s (its latencies come with it)."""
    ordered = sorted(runs, key=lambda result: result.requests_per_second)
    chosen = ordered[len(ordered) // 2]
    cpu = [r.proxy_cpu_us_per_request for r in runs if r.proxy_cpu_us_per_request is not None]
    return Result(
        name,
        chosen.requests_per_second,
        chosen.p50_ms,
        chosen.p99_ms,
        sum(result.errors for result in runs),
        sum(result.requests for result in runs),
        round(sorted(cpu)[len(cpu) // 2], 2) if cpu else None,
    )


def start_everything(group: Processes, work: Path) -> dict[str, tuple[int, int | None]]:
    """Start backend, gateway and HAProxy; returns name → (port, pid of the proxy)."""
    backend_port = free_port()
    backend_log = work / "backend.log"
    backend = group.start(
        [sys.executable, __file__, "--serve-backend", str(backend_port)], backend_log
    )
    wait_accepting(backend_port, backend, "backend", backend_log)

    gateway_port, admin_port = free_port(), free_port()
    gateway_log = work / "gateway.log"
    gateway = group.start(
        [
            sys.executable,
            "-m",
            "alwayson.gateway",
            "--listen",
            f"{HOST}:{gateway_port}",
            "--admin",
            f"{HOST}:{admin_port}",
            "--site",
            "bench",
            "--upstream",
            f"http://{HOST}:{backend_port}",
            "--log-level",
            "WARNING",
        ],
        gateway_log,
    )
    wait_accepting(gateway_port, gateway, "alwayson gateway", gateway_log)

    haproxy_port = free_port()
    config = work / "haproxy.cfg"
    config.write_text(
        HAPROXY_CONFIG.format(host=HOST, port=haproxy_port, backend_port=backend_port)
    )
    haproxy_log = work / "haproxy.log"
    haproxy = group.start([haproxy_binary(), "-db", "-f", str(config)], haproxy_log)
    wait_accepting(haproxy_port, haproxy, "haproxy", haproxy_log)
    return {
        "direct": (backend_port, None),
        "gateway": (gateway_port, gateway.pid),
        "haproxy": (haproxy_port, haproxy.pid),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (same for all)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds (direct, gateway, haproxy); the median round is reported",
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before the rounds")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--serve-backend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_backend:
        serve_backend(args.serve_backend)
        return 0

    ensure_tools()
    group = Processes()
    runs: dict[str, list[Result]] = {"direct": [], "gateway": [], "haproxy": []}
    with tempfile.TemporaryDirectory(prefix="alwayson-bench-") as tmp:
        try:
            targets = start_everything(group, Path(tmp))
            wrk = {"connections": args.connections, "threads": args.threads}
            if args.warmup > 0:
                for port, _ in targets.values():
                    run_wrk(f"http://{HOST}:{port}/", duration=args.warmup, **wrk)
            for _ in range(max(1, args.rounds)):
                for name, (port, pid) in targets.items():
                    cpu_before = cpu_seconds(pid) if pid else 0.0
                    result, _ = run_wrk(f"http://{HOST}:{port}/", duration=args.duration, **wrk)
                    if pid and result.requests:
                        used = cpu_seconds(pid) - cpu_before
                        result.proxy_cpu_us_per_request = used / result.requests * 1e6
                    result.name = name
                    runs[name].append(result)
        finally:
            group.stop_all()

    results = {name: median_result(name, name_runs) for name, name_runs in runs.items()}
    ratio = results["gateway"].requests_per_second / results["haproxy"].requests_per_second
    summary = {
        "duration_s": args.duration,
        "rounds": args.rounds,
        "connections": args.connections,
        "wrk_threads": args.threads,
        "cpus": os.cpu_count(),
        "results": {name: asdict(result) for name, result in results.items()},
        "rounds_requests_per_second": {
            name: [round(run.requests_per_second) for run in name_runs]
            for name, name_runs in runs.items()
        },
        "gateway_to_haproxy_rps_ratio": round(ratio, 3),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s x {args.rounds} "
        f"interleaved rounds (median), loopback, {os.cpu_count()} CPUs"
    )
    print(
        f"{'target':<10}{'requests/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'proxy CPU us/req':>18}   rounds (requests/s)"
    )
    for name, result in results.items():
        cpu = result.proxy_cpu_us_per_request
        rounds = ", ".join(f"{run.requests_per_second:,.0f}" for run in runs[name])
        print(
            f"{name:<10}{result.requests_per_second:>12,.0f}{result.p50_ms:>9.2f}"
            f"{result.p99_ms:>9.2f}{result.errors:>8}{'' if cpu is None else f'{cpu:.1f}':>18}"
            f"   {rounds}"
        )
    print(f"gateway / haproxy (requests/s): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
