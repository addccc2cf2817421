"""Throughput, tail latency and memory of the alwayson gateway, against HAProxy and nginx.

    .venv/bin/python benchmarks/gateway.py [--duration 10] [--rounds 3] [--json]

Every figure comes from the same backend on loopback, through five targets:

- ``direct``         the client talks to the backend itself (the ceiling)
- ``gateway``        the alwayson gateway (standalone mode, ``--upstream``), one process
- ``haproxy``        HAProxy, ``nbthread 1``, http mode, keep-alive to the server, doing
  the gateway's header work: ``option forwardfor``, X-Forwarded-Proto/-Host, a unique
  X-Request-Id sent to the server and returned to the client, Via both ways
- ``haproxy-plain``  the same HAProxy adding no header at all (the issue 2 baseline)
- ``nginx``          nginx as a reverse proxy, one worker, keep-alive to the server
  (``keepalive 64``), the same header work, its default buffering, no temp files

Ratios are printed against each of them; ``haproxy`` is the same job as the gateway's.

Cases, measured with wrk (``-t1``) in interleaved rounds (each round runs every target
once; the round with the median requests/s is reported, with its latencies):

- ``keep-alive``   small responses on ``--connections`` keep-alive connections
- ``new-conn``     the same with ``Connection: close``: one TCP connection per request
- ``1MiB``         a 1 MiB response body, 10 keep-alive connections

Then **p99 at half of the maximum rate**: every target gets the same offered load, half of
the gateway's keep-alive maximum (the gateway at 50 % of its capacity, the others at
less). wrk cannot limit its rate and wrk2 is not in Debian, so this uses ``hey -q``: 50
keep-alive workers each paced at rate/50 per second. hey paces each worker in a closed
loop: a late response delays that worker's next request, which hides queueing
(coordinated omission). At half load responses come back well inside the pacing interval
(1.7 ms at 30,000/s), so the pacing holds; a run that fell more than 5 % short of the
offered rate is flagged, as its latencies would be optimistic. hey has 0.1 ms steps.

Last, **memory**: the gateway's RSS before and after ``--memory-requests`` (1,000,000)
keep-alive requests.

wrk, haproxy, nginx-light and hey are installed with apt-get when missing. Every process
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
from typing import Any

HOST = "127.0.0.1"
SMALL_BODY = b"hello from the benchmark backend\n"
BIG_SIZE = 1024 * 1024
TARGETS = ("direct", "gateway", "haproxy", "haproxy-plain", "nginx")
OTHERS = ("haproxy", "haproxy-plain", "nginx")
CASES = {  # name: (path, connections or None for --connections, extra wrk arguments)
    "keep-alive": ("/", None, []),
    "new-conn": ("/", None, ["-H", "Connection: close"]),
    "1MiB": ("/big", 10, []),
}
TOOLS = {"wrk": "wrk", "haproxy": "haproxy", "nginx": "nginx-light", "hey": "hey"}


# -- the backend (runs in its own process: ``gateway.py --serve-backend PORT``) ----------


def serve_backend(port: int) -> None:
    import asyncio

    import uvloop

    def response(body: bytes, close: bool) -> bytes:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n" % len(body)
        return head + (b"connection: close\r\n\r\n" if close else b"\r\n") + body

    small, big = response(SMALL_BODY, False), response(b"b" * BIG_SIZE, False)
    small_close = response(SMALL_BODY, True)

    class Backend(asyncio.Protocol):
        """Answers each request head (GETs without a body): ``/big`` with 1 MiB, anything
        else with a small body; ``Connection: close`` is honoured."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.pending = b""

        def data_received(self, data: bytes) -> None:
            heads = (self.pending + data).split(b"\r\n\r\n")
            self.pending = heads.pop()
            out: list[bytes] = []
            for head in heads:
                if b"onnection: close" in head or b"onnection: Close" in head:
                    self.transport.write(b"".join(out) + small_close)
                    self.transport.close()
                    return
                out.append(big if head.startswith(b"GET /big") else small)
            if out:
                self.transport.write(b"".join(out))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Backend, HOST, port, backlog=4096)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    uvloop.run(main())


# -- tools and processes ---------------------------------------------------------------


def binary(tool: str) -> str:
    return shutil.which(tool) or f"/usr/sbin/{tool}"


def ensure_tools() -> None:
    missing = [package for tool, package in TOOLS.items() if not Path(binary(tool)).exists()]
    if not missing:
        return
    print(f"installing {' '.join(missing)} with apt-get", file=sys.stderr)
    install = ["apt-get", "install", "-y", *missing]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)
    for tool in TOOLS:
        if not Path(binary(tool)).exists():
            raise SystemExit(f"{tool} is still missing after apt-get install")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_accepting(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited early ({process.returncode}):\n{log.read_text()}")
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


def proc_status(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` field in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


HAPROXY_CONFIG = """\
global
    nbthread 1
    maxconn 8192
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always
frontend bench
    bind {host}:{port}
{headers}    default_backend backend
backend backend
    server backend1 {host}:{backend_port} maxconn 1000
"""
HAPROXY_HEADERS = """\
    option forwardfor
    unique-id-format %{+X}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
    unique-id-header X-Request-Id
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request add-header Via "1.1 haproxy"
    http-response set-header X-Request-Id %[unique-id]
    http-response add-header Via "1.1 haproxy"
"""

NGINX_CONFIG = """\
worker_processes 1;
daemon off;
user root;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body; proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fcgi; uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    upstream backend {{
        server {host}:{backend_port};
        keepalive 64;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Request-Id $request_id;
            proxy_set_header Via "1.1 nginx";
            add_header X-Request-Id $request_id always;
            add_header Via "1.1 nginx" always;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def start_everything(group: Processes, work: Path) -> dict[str, tuple[int, int | None]]:
    """Start the backend and the proxies; name → (port, pid whose CPU and RSS count)."""
    backend_port = free_port()
    log = work / "backend.log"
    backend = group.start([sys.executable, __file__, "--serve-backend", str(backend_port)], log)
    wait_accepting(backend_port, backend, "backend", log)
    targets: dict[str, tuple[int, int | None]] = {"direct": (backend_port, None)}

    port, log = free_port(), work / "gateway.log"
    args = [sys.executable, "-m", "alwayson.gateway", "--listen", f"{HOST}:{port}"]
    args += ["--admin", f"{HOST}:{free_port()}", "--site", "bench", "--log-level", "WARNING"]
    gateway = group.start([*args, "--upstream", f"http://{HOST}:{backend_port}"], log)
    wait_accepting(port, gateway, "alwayson gateway", log)
    targets["gateway"] = (port, gateway.pid)

    for name, headers in (("haproxy", HAPROXY_HEADERS), ("haproxy-plain", "")):
        port, config = free_port(), work / f"{name}.cfg"
        text = HAPROXY_CONFIG.format(
            host=HOST, port=port, backend_port=backend_port, headers=headers
        )
        config.write_text(text)
        log = work / f"{name}.log"
        haproxy = group.start([binary("haproxy"), "-db", "-f", str(config)], log)
        wait_accepting(port, haproxy, name, log)
        targets[name] = (port, haproxy.pid)

    port, config = free_port(), work / "nginx.conf"
    config.write_text(
        NGINX_CONFIG.format(host=HOST, port=port, backend_port=backend_port, work=work)
    )
    log = work / "nginx.log"
    nginx = group.start([binary("nginx"), "-c", str(config), "-p", str(work)], log)
    wait_accepting(port, nginx, "nginx", log)
    children = Path(f"/proc/{nginx.pid}/task/{nginx.pid}/children").read_text().split()
    targets["nginx"] = (port, int(children[0]) if children else nginx.pid)  # the worker
    return targets


# -- measuring -------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    proxy_cpu_us_per_request: float | None = None
    p999_ms: float | None = None  # paced runs only
    short_of_rate: bool = False  # paced: >5 % below the offered rate, latencies optimistic


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not match:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def _number(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise SystemExit(f"unexpected output, no {pattern!r} in:\n{text}")
    return match.group(1)


def run_wrk(
    url: str, duration: float, connections: int, extra: list[str], pid: int | None = None
) -> Result:
    """One wrk run; with ``pid``, also the CPU time that process spent per request."""
    before = cpu_seconds(pid) if pid else 0.0
    args = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency"]
    output = subprocess.run([*args, *extra, url], check=True, capture_output=True, text=True).stdout
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result = Result(
        "",
        float(_number(r"Requests/sec:\s+([\d.]+)", output)),
        round(_ms(_number(r"\s50%\s+(\S+)", output)), 3),
        round(_ms(_number(r"\s99%\s+(\S+)", output)), 3),
        errors + (int(non_2xx.group(1)) if non_2xx else 0),
        int(_number(r"(\d+) requests in", output)),
    )
    if pid and result.requests:
        used = cpu_seconds(pid) - before
        result.proxy_cpu_us_per_request = round(used / result.requests * 1e6, 2)
    return result


def median_result(name: str, runs: list[Result]) -> Result:
    """The run with the median requests/s (its latencies come with it)."""
    chosen = sorted(runs, key=lambda result: result.requests_per_second)[len(runs) // 2]
    median = Result(**{**asdict(chosen), "name": name})
    median.errors, median.requests = sum(r.errors for r in runs), sum(r.requests for r in runs)
    return median


def run_hey(name: str, url: str, rate: int, duration: float, workers: int = 50) -> Result:
    """``rate`` requests/s from ``workers`` paced keep-alive workers; every request's time."""
    per_worker = max(1, round(rate / workers))
    seconds = max(1, round(duration))
    args = ["hey", "-z", f"{seconds}s", "-c", str(workers), "-q", str(per_worker)]
    output = subprocess.run(
        [*args, "-o", "csv", "-disable-compression", url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = [line.split(",") for line in output.splitlines()[1:] if line.count(",") >= 6]
    if not rows:
        raise SystemExit(f"hey measured nothing against {url}:\n{output[:2000]}")
    times = sorted(float(row[0]) * 1000 for row in rows)

    def at(quantile: float) -> float:
        return round(times[min(len(times) - 1, int(quantile * len(times)))], 3)

    achieved = len(times) / seconds
    result = Result(name, round(achieved), at(0.5), at(0.99), sum(r[6] != "200" for r in rows))
    result.requests, result.p999_ms = len(times), at(0.999)
    result.short_of_rate = achieved < 0.95 * per_worker * workers
    return result


def memory_run(url: str, pid: int, requests: int, connections: int) -> dict[str, float]:
    """Gateway RSS before and after ``requests`` keep-alive requests (10 s wrk chunks)."""
    before = proc_status(pid, "VmRSS")
    done = 0
    while done < requests:
        done += run_wrk(url, 10, connections, []).requests
    return {
        "requests": done,
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(proc_status(pid, "VmRSS") / 1024, 1),
        "peak_rss_mib": round(proc_status(pid, "VmHWM") / 1024, 1),
    }


# -- the run -----------------------------------------------------------------------------


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    ensure_tools()
    group = Processes()
    cases: dict[str, dict[str, Result]] = {}
    rounds: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="alwayson-bench-") as tmp:
        try:
            targets = start_everything(group, Path(tmp))
            for port, _ in targets.values():
                if args.warmup > 0:
                    run_wrk(f"http://{HOST}:{port}/", args.warmup, args.connections, [])
            for case in args.cases:
                path, connections, extra = CASES[case]
                runs: dict[str, list[Result]] = {name: [] for name in TARGETS}
                for _ in range(max(1, args.rounds)):
                    for name, (port, pid) in targets.items():
                        url = f"http://{HOST}:{port}{path}"
                        conns = connections or args.connections
                        runs[name].append(run_wrk(url, args.duration, conns, extra, pid))
                cases[case] = {name: median_result(name, r) for name, r in runs.items()}
                rounds[case] = {
                    n: [round(r.requests_per_second) for r in rs] for n, rs in runs.items()
                }
            paced: dict[str, Result] = {}
            rate = 0
            if args.paced and "keep-alive" in cases:
                rate = round(cases["keep-alive"]["gateway"].requests_per_second / 2)
                for name, (port, _) in targets.items():
                    paced[name] = run_hey(name, f"http://{HOST}:{port}/", rate, args.duration)
            memory = {}
            if args.memory_requests > 0:
                port, pid = targets["gateway"]
                assert pid is not None
                url = f"http://{HOST}:{port}/"
                memory = memory_run(url, pid, args.memory_requests, args.connections)
        finally:
            group.stop_all()
    ratios: dict[str, dict[str, float | None]] = {}
    for case, results in cases.items():
        gateway = results["gateway"]
        ratios[case] = {}
        for other in OTHERS:
            theirs, key = results[other], other.replace("-", "_")
            ratios[case][f"gateway_to_{key}_rps"] = ratio(
                gateway.requests_per_second, theirs.requests_per_second
            )
            ratios[case][f"gateway_to_{key}_p99"] = ratio(gateway.p99_ms, theirs.p99_ms)
    if paced:
        ratios["paced"] = {
            f"gateway_minus_{other.replace('-', '_')}_p99_ms": round(
                paced["gateway"].p99_ms - paced[other].p99_ms, 3
            )
            for other in OTHERS
        }
    return {
        "duration_s": args.duration,
        "rounds": args.rounds,
        "connections": args.connections,
        "cpus": os.cpu_count(),
        "cases": {
            case: {n: asdict(r) for n, r in results.items()} for case, results in cases.items()
        },
        "rounds_requests_per_second": rounds,
        "paced_rate": rate,
        "paced": {name: asdict(result) for name, result in paced.items()},
        "memory": memory,
        "ratios": ratios,
    }


def print_report(summary: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"wrk -t1 -c{args.connections} -d{args.duration:g}s, {args.rounds} interleaved rounds "
        f"(median), loopback, {os.cpu_count()} CPUs"
    )
    ratios = summary["ratios"]
    for case, results in summary["cases"].items():
        print(f"\n[{case}]\n{'target':<14}{'requests/s':>12}{'p50 ms':>9}{'p99 ms':>9}", end="")
        print(f"{'errors':>8}{'CPU us/req':>12}")
        for name, r in results.items():
            cpu = r["proxy_cpu_us_per_request"]
            print(
                f"{name:<14}{r['requests_per_second']:>12,.0f}{r['p50_ms']:>9.2f}"
                f"{r['p99_ms']:>9.2f}{r['errors']:>8}{'' if cpu is None else f'{cpu:.1f}':>12}"
            )
        for other in OTHERS:
            key = other.replace("-", "_")
            print(
                f"gateway/{other}: requests/s {ratios[case][f'gateway_to_{key}_rps']}, "
                f"p99 {ratios[case][f'gateway_to_{key}_p99']}"
            )
    if summary["paced"]:
        print(f"\n[p99 at half the gateway's maximum rate: {summary['paced_rate']:,}/s, hey -q]")
        print(f"{'target':<14}{'achieved/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}", end="")
        print(f"{'errors':>8}")
        for name, p in summary["paced"].items():
            print(
                f"{name:<14}{p['requests_per_second']:>12,.0f}{p['p50_ms']:>9.2f}"
                f"{p['p99_ms']:>9.2f}{p['p999_ms']:>10.2f}{p['errors']:>8}"
                + ("  (short of the rate)" if p["short_of_rate"] else "")
            )
        for other in OTHERS:
            gap = ratios["paced"][f"gateway_minus_{other.replace('-', '_')}_p99_ms"]
            print(f"gateway p99 - {other} p99: {gap:+.2f} ms")
    memory = summary["memory"]
    if memory:
        print(
            f"\n[memory] gateway RSS {memory['rss_before_mib']} MiB before, "
            f"{memory['rss_after_mib']} MiB after {memory['requests']:,} requests "
            f"(peak {memory['peak_rss_mib']} MiB)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; median kept")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per target first")
    parser.add_argument(
        "--cases", nargs="+", choices=list(CASES), default=list(CASES), metavar="CASE"
    )
    parser.add_argument("--no-paced", dest="paced", action="store_false")
    parser.add_argument("--memory-requests", type=int, default=1_000_000, metavar="N")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--serve-backend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_backend:
        serve_backend(args.serve_backend)
        return 0
    summary = run(args)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_report(summary, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
