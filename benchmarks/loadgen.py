"""Load generators compared: requests per CPU-second of alwayson loadtest, Locust and wrk.

    .venv/bin/python benchmarks/loadgen.py [--rate 30000] [--window 10] [--rounds 3] [--json]

One fast target on loopback: nginx (one worker, ``return 200`` of a 32-byte body,
keep-alive without a request limit), pinned to CPU 0 with ``sched_setaffinity``. Each
generator runs alone, pinned to CPU 1, against the same URL, in interleaved rounds:

- ``alwayson``  ``alwayson loadtest URL --rate R`` (open model, one process, the CLI as a
  user runs it, ``--max-in-flight 200``)
- ``locust``    Locust headless, one process, ``FastHttpUser`` with ``constant(0)`` wait,
  ``--users 50`` (installed with pip into its own venv, ``.tools/locust``, when missing:
  a benchmark-only tool whose gevent stack stays out of the project's environment)
- ``wrk``       ``wrk -t1 -c50`` (installed with apt-get when missing)

For each: after ``--warmup`` seconds (start-up, imports, spawning users) the target's
request count (nginx ``stub_status``) and the generator's CPU time (user + system, psutil,
the process and its children) are read, and again ``--window`` seconds later. The figure
is requests served in the window per CPU-second the generator spent in it; requests/s is
shown as well. The round with the median figure is reported per tool, and the ratios
alwayson/Locust (target >= 3) and alwayson/wrk (target >= 0.3) from those medians.

A generator pinned to one core at its limit measures its cost per request; one that is
not at its limit (wrk, when nginx on the other core is the bottleneck) still does: its
CPU time per request is what the figure is. The machine is shared, so other load can move
a figure; rounds are interleaved so all tools see the same conditions.

Every process started here is stopped by its pid at the end, even on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
from reporting import finish

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
ALWAYSON = ROOT / ".venv" / "bin" / "alwayson"
LOCUST_VENV = ROOT / ".tools" / "locust"
LOCUST = LOCUST_VENV / "bin" / "locust"
TOOLS = ("alwayson", "locust", "wrk")
TARGETS = {"locust": 3.0, "wrk": 0.3}
NGINX_CONFIG = """\
worker_processes 1;
daemon off;
user root;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
    server {{
        listen {host}:{port} backlog=4096;
        location = /nginx-status {{ stub_status; }}
        location / {{ return 200 "hello from the benchmark target\\n"; }}
    }}
}}
"""
LOCUSTFILE = """\
from locust import FastHttpUser, constant, task


class Bench(FastHttpUser):
    wait_time = constant(0)

    @task
    def index(self):
        self.client.get("/")
"""


# -- tools ------------------------------------------------------------------------------


def apt_install(*packages: str) -> None:
    print(f"installing {' '.join(packages)} with apt-get", file=sys.stderr)
    install = ["apt-get", "install", "-y", *packages]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def ensure_tools() -> None:
    if not shutil.which("wrk"):
        apt_install("wrk")
    if not Path(nginx_binary()).exists():
        apt_install("nginx-light")
    if not LOCUST.exists():
        print(f"installing locust into {LOCUST_VENV} (benchmark only)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(LOCUST_VENV)], check=True)
        pip = [str(LOCUST_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "locust"]
        subprocess.run(pip, check=True)
    for tool in ("wrk", nginx_binary()):
        if not shutil.which(tool) and not Path(tool).exists():
            raise SystemExit(f"{tool} is still missing after apt-get install")


def locust_binary() -> str:
    return str(LOCUST)


def machine() -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    return {
        "nproc": os.cpu_count(),
        "lscpu": lscpu[:12],
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def tool_versions() -> dict[str, str]:
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    nginx = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True)
    locust = subprocess.run([locust_binary(), "-V"], capture_output=True, text=True)
    return {
        "wrk": (wrk.stdout + wrk.stderr).splitlines()[0],
        "nginx": nginx.stderr.strip(),
        "locust": locust.stdout.strip() or locust.stderr.strip(),
    }


# -- processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(cpu: int) -> Callable[[], None]:
    def pin() -> None:
        os.sched_setaffinity(0, {cpu})
        os.setsid()

    return pin


def start(args: list[str], log: Path, cpu: int) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, preexec_fn=pinned(cpu)
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def served(port: int) -> int:
    """Requests nginx has served so far (``stub_status``)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", "/nginx-status")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    match = re.search(r"\n\s*(\d+)\s+(\d+)\s+(\d+)", text)
    if match is None:
        raise SystemExit(f"unexpected stub_status answer: {text!r}")
    return int(match.group(3))


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (alive ones), in seconds."""
    proc = psutil.Process(pid)
    total = 0.0
    for one in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = one.cpu_times()
            total += times.user + times.system
    return total


# -- one measurement -------------------------------------------------------------------


@dataclass
class Measure:
    tool: str
    requests: int  # served by the target in the window
    cpu_seconds: float  # spent by the generator in the window
    window_s: float
    requests_per_cpu_second: float
    requests_per_second: float
    note: str = ""


def command(tool: str, url: str, seconds: int, rate: int, work: Path) -> list[str]:
    if tool == "alwayson":
        binary = str(ALWAYSON) if ALWAYSON.exists() else "alwayson"
        return [
            binary, "loadtest", url, "--rate", str(rate), "--duration", f"{seconds}s",
            "--max-in-flight", "200", "--json", "--save", str(work / "alwayson.json"),
        ]  # fmt: skip
    if tool == "locust":
        locustfile = work / "locustfile.py"
        locustfile.write_text(LOCUSTFILE)
        return [
            locust_binary(), "-f", str(locustfile), "--headless", "--users", "50",
            "--spawn-rate", "50", "--run-time", f"{seconds}s", "--host", url.rstrip("/"),
            "--only-summary", "--loglevel", "WARNING",
        ]  # fmt: skip
    return ["wrk", "-t1", "-c50", f"-d{seconds}s", url]


def measure(tool: str, port: int, args: argparse.Namespace, work: Path) -> Measure:
    url = f"http://{HOST}:{port}/"
    seconds = round(args.warmup + args.window + 3)
    log = work / f"{tool}.log"
    process = start(command(tool, url, seconds, args.rate, work), log, cpu=1)
    try:
        time.sleep(args.warmup)
        if process.poll() is not None:
            raise SystemExit(f"{tool} exited early ({process.returncode}):\n{log.read_text()}")
        count0, cpu0, at0 = served(port), cpu_seconds(process.pid), time.monotonic()
        time.sleep(args.window)
        count1, cpu1, at1 = served(port), cpu_seconds(process.pid), time.monotonic()
        process.wait(timeout=seconds + 60)
    finally:
        stop(process)
    requests, cpu, window = count1 - count0 - 1, cpu1 - cpu0, at1 - at0  # less our own read
    note = ""
    if tool == "alwayson":
        with contextlib.suppress(OSError, ValueError, KeyError):
            result = json.loads((work / "alwayson.json").read_text())
            it = result["iterations"]
            note = f"sent {it['sent']:,}, dropped {it['dropped']:,}, failed {it['failed']:,}"
    return Measure(
        tool,
        requests,
        round(cpu, 3),
        round(window, 3),
        round(requests / cpu) if cpu > 0 else 0.0,
        round(requests / window),
        note,
    )


# -- the run -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    ensure_tools()
    found = machine()
    versions = tool_versions()
    rounds: dict[str, list[Measure]] = {tool: [] for tool in args.tools}
    with tempfile.TemporaryDirectory(prefix="alwayson-loadgen-bench-") as tmp:
        work = Path(tmp)
        port = free_port()
        (work / "nginx.conf").write_text(NGINX_CONFIG.format(work=work, host=HOST, port=port))
        nginx = start(
            [nginx_binary(), "-c", str(work / "nginx.conf"), "-p", str(work)],
            work / "nginx.log",
            cpu=0,
        )
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    served(port)
                    break
                except OSError:
                    if time.monotonic() > deadline or nginx.poll() is not None:
                        log = (work / "nginx.log").read_text()
                        raise SystemExit(f"nginx did not start:\n{log}") from None
                    time.sleep(0.1)
            for number in range(args.rounds):
                for tool in args.tools:
                    found_now = measure(tool, port, args, work)
                    rounds[tool].append(found_now)
                    print(
                        f"round {number + 1} {tool:<9} {found_now.requests_per_cpu_second:>9,.0f} "
                        f"requests/CPU-s, {found_now.requests_per_second:>8,.0f} requests/s, "
                        f"{found_now.cpu_seconds:.2f} CPU-s in {found_now.window_s:.1f} s "
                        f"{found_now.note}",
                        file=sys.stderr,
                    )
        finally:
            stop(nginx)
    medians = {
        tool: sorted(ms, key=lambda m: m.requests_per_cpu_second)[len(ms) // 2]
        for tool, ms in rounds.items()
        if ms
    }
    ratios: dict[str, float | None] = {}
    if "alwayson" in medians:
        mine = medians["alwayson"].requests_per_cpu_second
        for other in ("locust", "wrk"):
            if other in medians and medians[other].requests_per_cpu_second:
                ratios[f"alwayson_to_{other}"] = round(
                    mine / medians[other].requests_per_cpu_second, 3
                )
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": found,
        "versions": versions,
        "rate": args.rate,
        "warmup_s": args.warmup,
        "window_s": args.window,
        "rounds": args.rounds,
        "median": {tool: asdict(m) for tool, m in medians.items()},
        "all_rounds": {
            tool: [m.requests_per_cpu_second for m in ms] for tool, ms in rounds.items()
        },
        "ratios": ratios,
        "targets": {f"alwayson_to_{k}": v for k, v in TARGETS.items()},
        "spread": {
            tool: round(statistics.pstdev([m.requests_per_cpu_second for m in ms]))
            for tool, ms in rounds.items()
            if ms
        },
    }


def print_report(summary: dict[str, Any]) -> None:
    print(
        f"target: nginx on CPU 0; generators one at a time on CPU 1; "
        f"{summary['rounds']} interleaved round(s), median; window {summary['window_s']:g} s "
        f"after {summary['warmup_s']:g} s of warm-up; {summary['machine']['nproc']} CPUs"
    )
    print(f"{'generator':<10}{'requests/CPU-s':>16}{'requests/s':>12}{'CPU-s':>8}  rounds")
    for tool, m in summary["median"].items():
        every = ", ".join(f"{v:,.0f}" for v in summary["all_rounds"][tool])
        print(
            f"{tool:<10}{m['requests_per_cpu_second']:>16,.0f}{m['requests_per_second']:>12,.0f}"
            f"{m['cpu_seconds']:>8.2f}  {every}"
        )
        if m["note"]:
            print(f"{'':<10}{m['note']}")
    for name, value in summary["ratios"].items():
        target = summary["targets"].get(name)
        verdict = "" if target is None else ("met" if value >= target else "MISSED")
        print(f"{name}: {value} (target >= {target}: {verdict})")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=30_000, help="alwayson's arrival rate")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds before measuring")
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; median")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs 2 CPUs: one for the target, one for the generator")
    return finish(args, run, print_report, "interrupted; the target and generators were stopped")


if __name__ == "__main__":
    sys.exit(main())
