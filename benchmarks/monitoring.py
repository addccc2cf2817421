"""Monitoring of the sample bank: scrape and store cost, query latency, kill → webhook.

    .venv/bin/python benchmarks/monitoring.py [--quick] [--json] [--skip-cost] [--skip-kill]

Runs ``examples/digital-bank`` (15 services x 2 replicas x 2 sites = 60 instances, two site
gateways, two front-door processes, the database ``bank`` with its agents and etcd members) from
a temporary copy, on private loopback subnets (taken through the tests' own subnet locks)
and private ports. Every platform carries the same alerting: ``evaluation_interval`` 5 s,
``group_wait`` 0 s, the built-in ``InstanceDown`` replaced by ``up{job="instances"} == 0``
with ``for: 0s``, and one webhook receiver, a real HTTP server in this process.

**Cost** (``--skip-cost`` to leave out). Two platforms run side by side through the same
window, so they share the machine's load: ``monitored`` with ``metrics.scrape_interval``
5 s (the default) and ``idle`` with ``1h`` (the spec cannot switch scraping off; at 1 h
the monitoring loop runs once at start-up and then sleeps). Both get the same light
traffic through their front door (a request every 50 ms over twelve read-only routes of
the bank). After a warm-up, the controller's CPU seconds (user + system, psutil) are read
at the start and the end of the window; RSS every 5 s. Also: the CPU of every other
process of each platform (instances, gateways, agents: serving ``/metrics`` costs them
too), the series and samples of one scrape round (``count({__name__=~".+"})`` and
``sum(scrape_samples_scraped)``), the slowest scrape, and the store's bytes on disk
(``<state>/metrics``).

**Query latency**: ``GET /api/v1/query_range`` with ``since=24h``, ``step=60`` for
``sum by (service) (rate(alwayson_gateway_requests_total[5m]))`` and the p95 of
``alwayson_gateway_request_duration_seconds`` by service, median of 7 (5 with
``--quick``), on the monitored platform's store. That store only holds the minutes of this
run; ``benchmarks/observe_store.py`` (fast-forwarded, no sleeping) simulates 24 h of the
bank's series and is run at the end with ``--store-hours`` (24 by default, 0 to skip) for
the 24 h figure.

**Instance kill → webhook** (``--skip-kill`` to leave out): on the monitored platform,
under the same light traffic, one instance at a time gets SIGKILL (a different service
each run, sites alternating); the figure is the time from the kill to the webhook receiving
a firing ``InstanceDown`` for that instance. Before the next run the instance must be back
(ready, new pid) and the resolved notification delivered. ``--runs`` (5; 2 with
``--quick``). Target: 10 s. A kill with no firing notification within 30 s is counted as
missed, with whether the store holds an ``up`` of 0 for it (scraped but not alerted). The
controller's delivery attempts for ``InstanceDown`` are kept in the JSON.

**Peer: a real Prometheus and Alertmanager with their default intervals**
(``--prometheus-runs N``, 2 by default, 0 with ``--quick``; needs
``.tools/usr/bin/prometheus`` and ``prometheus-alertmanager``, see
``scripts/install-promtools.sh``). The files of ``alwayson export prometheus`` are used
with the interval settings removed (Prometheus: scrape and evaluation every 1 m;
Alertmanager: ``group_wait`` 30 s, ``group_interval`` 5 m), Prometheus federating the
controller's ``/metrics`` with its bearer token, both bound to 127.0.0.1, Alertmanager's
clustering off, its webhook a second receiver in this process. An instance that comes
back in a second is mostly invisible to a 1 m scrape, so for the peer the instance is held
down (killed again whenever the controller restarts it, a crash loop) until
Alertmanager's webhook names it, or 240 s. These runs come before the transient kills
(Alertmanager then has no group yet, so ``group_wait`` applies, not ``group_interval``).
Whether Prometheus fired at all for the transient kills is read from its ``ALERTS``
series at the end.

``--json`` prints one JSON document (progress goes to stderr); ``--save FILE`` also
writes it; ``--keep-logs DIR`` copies the platforms', Prometheus's and Alertmanager's logs.
``--warmup`` (30 s) and ``--window`` (150 s) set the cost window (10 s and 45 s with
``--quick``). Every platform ends with ``alwayson down``; then every process its state
directory recorded, and every descendant of those seen during the run (PostgreSQL), is
killed by pid (checked against its start time), and Prometheus and Alertmanager are
stopped by pid, even on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from reporting import finish
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' platform helpers: subnets, ports, cleanup by pid
from benchmarks.releases import machine  # noqa: E402
from tests.integration.test_observing import Hook  # noqa: E402
from tests.support import (  # noqa: E402
    Platform,
    Stream,
    free_port,
    isolate,
    kill_recorded,
    recorded_processes,
    wait_for,
    write_spec,
)

SAMPLE = ROOT / "examples" / "digital-bank"
TOOLS = ROOT / ".tools" / "usr" / "bin"
SITES = ("jakarta", "surabaya")
ALERT = "InstanceDown"
TARGET_SECONDS = 10.0
# Read-only routes of the bank that answer 200 without any state.
TRAFFIC = [
    "/fx/rates",
    "/payments/billers",
    "/fraud/rules",
    "/kyc/stats",
    "/ledger/trial-balance",
    "/audit/verify",
    "/audit/events?subject=nobody",
    "/accounts?customer_id=cus_none",
    "/customers?email=nobody@bank.example",
    "/notifications?to=nobody@bank.example",
    "/transfers?account_id=0000000000",
    "/loans/simulate?amount=10000000&tenor_months=12",
]
TRAFFIC_RATE = 20.0
VICTIMS = ["fx", "kyc", "fraud", "cards", "loans", "audit", "payments", "notifications"]
REQUESTS = "alwayson_gateway_requests_total"
LATENCY = "alwayson_gateway_request_duration_seconds_bucket"
RANGE_QUERIES = {
    "requests by service": f"sum by (service) (rate({REQUESTS}[5m]))",
    "p95 by service": f"histogram_quantile(0.95, sum by (service, le) (rate({LATENCY}[5m])))",
}
PEER_LIMIT = 240.0
MISSED_AFTER = 30.0  # no firing notification by then (3 x the target): not alerted
PROMETHEUS_DEFAULTS = {"scrape_interval": 60.0, "evaluation_interval": 60.0, "group_wait": 30.0}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def wall_of(stamp: str) -> float | None:
    """Seconds since the epoch of an RFC 3339 time (Go's nanoseconds cut to micro)."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", stamp.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


# -- one platform ------------------------------------------------------------------------


def alerting(hook_url: str) -> dict[str, Any]:
    rule = {
        "name": ALERT,
        "expr": 'up{job="instances"} == 0',
        "for": "0s",
        "severity": "critical",
        "summary": "{{ $labels.instance }} is down",
    }
    return {
        "alerts": {"evaluation_interval": "5s", "group_wait": "0s", "rules": [rule]},
        "notifications": [{"name": "oncall", "webhook": {"url": hook_url}}],
    }


class Bank:
    """The sample bank in ``folder`` with one scrape interval; ``close()`` downs it and
    kills what is left by pid."""

    def __init__(self, folder: Path, name: str, scrape_interval: str, hook_url: str) -> None:
        shutil.copytree(SAMPLE, folder, ignore=shutil.ignore_patterns(".alwayson", "__pycache__"))
        os.chmod(folder, 0o755)  # workloads and PostgreSQL run as `nobody` under root
        data = isolate(dict(YAML(typ="safe").load((folder / "alwayson.yaml").read_text())))
        data["platform"] = name
        data["metrics"] = {"scrape_interval": scrape_interval}
        data |= alerting(hook_url)
        write_spec(folder / "alwayson.yaml", data)
        self.name = name
        self.platform = Platform(
            spec_path=folder / "alwayson.yaml",
            state_dir=folder / ".alwayson",
            api=data["controller"]["api"],
            front_door=f"http://{data['front_door']['listen']}",
        )
        self.seen: dict[int, float] = {}  # every process and descendant seen: pid → start
        self.http = httpx.Client(timeout=30.0, trust_env=False)

    @property
    def state_dir(self) -> Path:
        return self.platform.state_dir

    def up(self) -> float:
        started = time.monotonic()
        self.platform.cli("up", "--timeout", "180", timeout=300)
        took = time.monotonic() - started
        self.note_processes()
        return took

    def note_processes(self) -> None:
        """Remember every recorded process and its descendants (PostgreSQL under the
        agents) so ``close`` can kill them by pid if ``down`` leaves any."""
        for pid, start in recorded_processes(self.state_dir):
            self.seen[pid] = start
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        self.seen[child.pid] = child.create_time()

    def get(self, path: str, **params: Any) -> Any:
        token = (self.state_dir / "token").read_text().strip()
        response = self.http.get(
            f"http://{self.platform.api}{path}",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
        )
        response.raise_for_status()
        return response.json()

    def instances(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/status")["instances"])

    def instance(self, ident: str) -> dict[str, Any] | None:
        return next((i for i in self.instances() if i["id"] == ident), None)

    def scalar(self, expr: str) -> float | None:
        got = self.get("/api/v1/query", expr=expr)
        if got.get("type") == "scalar":
            return float(got["value"])
        rows = got.get("result") or []
        return float(rows[0]["value"]) if rows else None

    def controller_process(self) -> psutil.Process:
        pid = self.platform.controller_pid()
        if pid is None:
            raise RuntimeError(f"{self.name}: no controller.json")
        return psutil.Process(pid)

    def workload_processes(self) -> list[psutil.Process]:
        """Every process of the platform but the controller: instances, gateways, front
        doors, agents, etcd members, and PostgreSQL under the agents."""
        controller = self.platform.controller_pid()
        out: dict[int, psutil.Process] = {}
        for pid, _ in recorded_processes(self.state_dir):
            if pid == controller:
                continue
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                out[pid] = proc
                for child in proc.children(recursive=True):
                    out[child.pid] = child
        return list(out.values())

    def store_bytes(self) -> int:
        folder = self.state_dir / "metrics"
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    def close(self) -> None:
        self.http.close()
        if (self.state_dir / "controller.json").exists():
            with contextlib.suppress(subprocess.TimeoutExpired):
                done = self.platform.cli("down", check=False, timeout=120)
                if done.returncode != 0:
                    log(f"{self.name}: `alwayson down` exited {done.returncode}: {done.stderr}")
        left = []
        for pid, start in {**self.seen, **dict(recorded_processes(self.state_dir))}.items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if abs(proc.create_time() - start) < 0.05:
                    left.append(f"{pid} {proc.name()} {proc.status()}")
        killed = kill_recorded(self.state_dir)
        for pid, start in self.seen.items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if abs(proc.create_time() - start) < 0.05:
                    proc.kill()
                    killed.append(pid)
        if killed:
            log(f"{self.name}: killed leftover processes after `down`: {left}")


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            out[proc.pid] = times.user + times.system
    return out


# -- cost ---------------------------------------------------------------------------------


def measure_cost(banks: list[Bank], warmup: float, window: float) -> dict[str, dict[str, Any]]:
    """Controller CPU and RSS of every bank over the same window."""
    log(f"[cost] warm-up {warmup:.0f}s, then a {window:.0f}s window on {len(banks)} platforms")
    time.sleep(warmup)
    controllers = {b.name: b.controller_process() for b in banks}
    others = {b.name: b.workload_processes() for b in banks}
    first = {n: cpu_seconds([p]) for n, p in controllers.items()}
    first_others = {n: cpu_seconds(ps) for n, ps in others.items()}
    rss: dict[str, list[int]] = {n: [] for n in controllers}
    started = time.monotonic()
    while (left := window - (time.monotonic() - started)) > 0:
        for name, proc in controllers.items():
            rss[name].append(proc.memory_info().rss)
        time.sleep(min(5.0, left))
    elapsed = time.monotonic() - started
    out: dict[str, dict[str, Any]] = {}
    for bank in banks:
        name = bank.name
        proc = controllers[name]
        cpu = cpu_seconds([proc])[proc.pid] - first[name][proc.pid]
        last = cpu_seconds(others[name])
        other_cpu = sum(
            last[pid] - first_others[name][pid] for pid in last if pid in first_others[name]
        )
        out[name] = {
            "window_seconds": round(elapsed, 1),
            "controller_cpu_seconds": round(cpu, 2),
            "controller_cpu_seconds_per_minute": round(cpu * 60 / elapsed, 3),
            "controller_rss_bytes": proc.memory_info().rss,
            "controller_rss_max_bytes": max(rss[name], default=0),
            "other_processes": len(last),
            "other_cpu_seconds_per_minute": round(other_cpu * 60 / elapsed, 3),
        }
    return out


def store_figures(bank: Bank) -> dict[str, Any]:
    series = bank.scalar('count({__name__=~".+"})')
    scraped = bank.scalar("sum(scrape_samples_scraped)")
    slowest = bank.scalar("max(scrape_duration_seconds)")
    targets = bank.scalar("count(up)")
    up = bank.scalar("sum(up)")
    return {
        "series_last_scrape": series,
        "samples_scraped_from_targets": scraped,
        "targets": targets,
        "targets_up": up,
        "slowest_scrape_seconds": slowest,
        "store_bytes_on_disk": bank.store_bytes(),
    }


def time_queries(bank: Bank, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, expr in RANGE_QUERIES.items():
        took = []
        lines = points = 0
        for _ in range(rounds):
            began = time.perf_counter()
            got = bank.get("/api/v1/query_range", expr=expr, since="24h", step=60)
            took.append(time.perf_counter() - began)
            lines = len(got["result"])
            points = sum(len(x["points"]) for x in got["result"])
        out[label] = {
            "expr": expr,
            "median_seconds": round(statistics.median(took), 4),
            "max_seconds": round(max(took), 4),
            "series": lines,
            "points": points,
        }
    return out


# -- kills --------------------------------------------------------------------------------


def pick_victim(bank: Bank, run: int) -> dict[str, Any]:
    service = VICTIMS[run % len(VICTIMS)]
    site = SITES[run % len(SITES)]
    rows = [
        i
        for i in bank.instances()
        if i["service"] == service and i["site"] == site and i["desired"] and i["ready"]
    ]
    if not rows or not rows[0]["pid"]:
        raise RuntimeError(f"no ready instance of {service} in {site}")
    return rows[0]


def kill_instance(pid: int) -> bool:
    """SIGKILL ``pid`` if it is still a bank instance (never a reused pid)."""
    try:
        proc = psutil.Process(pid)
        if not any(part.startswith("bank.") for part in proc.cmdline()):
            return False
        proc.kill()
        return True
    except psutil.Error:
        return False


def resolved(hook: Hook, ident: str) -> bool:
    """The newest notification about ``ident`` says resolved (so its group is gone and
    the next kill in that site starts a new group: ``group_wait``, not ``group_interval``)."""
    states = [
        a["status"]
        for _, body in list(hook.bodies)
        for a in body["alerts"]
        if a["labels"].get("alertname") == ALERT and a["labels"].get("instance") == ident
    ]
    return bool(states) and states[-1] == "resolved"


def delivery(
    hook: Hook, ident: str, killed: float, killed_wall: float
) -> dict[str, float | None] | None:
    found = hook.firing(ALERT, instance=ident)
    if not found:
        return None
    at, body = found[0]
    alert = next(a for a in body["alerts"] if a["labels"].get("instance") == ident)
    starts = wall_of(str(alert.get("startsAt", "")))
    return {
        "seconds": round(at - killed, 3),
        "fired_after_kill": round(starts - killed_wall, 3) if starts else None,
    }


def back(bank: Bank, ident: str, old_pid: int) -> bool:
    row = bank.instance(ident)
    return bool(row and row["ready"] and row["pid"] and row["pid"] != old_pid)


def transient_kill(bank: Bank, hook: Hook, run: int, ordinal: int) -> dict[str, Any]:
    """One SIGKILL; the controller restarts the instance within a second or two. A kill
    with no firing notification within ``MISSED_AFTER`` is recorded as missed."""
    victim = pick_victim(bank, run)
    ident, pid = victim["id"], int(victim["pid"])
    killed_wall, killed = time.time(), time.monotonic()
    if not kill_instance(pid):
        raise RuntimeError(f"could not kill {ident} (pid {pid})")
    got: dict[str, float | None] | None = None
    back_after: float | None = None
    next_look = killed
    while time.monotonic() - killed < MISSED_AFTER and (got is None or back_after is None):
        got = got or delivery(hook, ident, killed, killed_wall)
        if back_after is None and time.monotonic() >= next_look:
            next_look = time.monotonic() + 0.2
            if back(bank, ident, pid):
                back_after = time.monotonic() - killed
        time.sleep(0.02)
    if back_after is None:
        wait_for(f"{ident} back", lambda: back(bank, ident, pid), 90, every=0.2)
        back_after = time.monotonic() - killed
    if got is not None:
        wait_for(f"the resolved notification of {ident}", lambda: resolved(hook, ident), 120, 0.2)
    # Was the outage in the store at all (an `up` of 0 scraped), alerted or not?
    lowest = bank.scalar(f'min_over_time(up{{job="instances",instance="{ident}"}}[5m])')
    return {
        "run": ordinal,
        "instance": ident,
        "seconds": got["seconds"] if got else None,
        "fired_after_kill": got["fired_after_kill"] if got else None,
        "missed": got is None,
        "store_saw_up_0": lowest == 0.0,
        "back_after_kill": round(back_after, 2),
        "resolved_delivered_after_kill": round(time.monotonic() - killed, 2) if got else None,
        "killed_wall": killed_wall,
    }


# -- the Prometheus peer ----------------------------------------------------------------------


class Peer:
    """Prometheus and Alertmanager from ``alwayson export prometheus``, with their default
    intervals, on 127.0.0.1; ``close()`` stops both by pid."""

    def __init__(self, bank: Bank, folder: Path, hook_url: str) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []
        self.http = httpx.Client(timeout=10.0, trust_env=False)
        bank.platform.cli("export", "prometheus", str(folder))
        yaml = YAML(typ="safe")
        self.am_port, self.prom_port = free_port(), free_port()
        prom = yaml.load((folder / "prometheus.yml").read_text())
        for key in ("scrape_interval", "scrape_timeout", "evaluation_interval"):
            prom["global"].pop(key, None)
        prom["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{self.am_port}"]}]}]
        }
        write_spec(folder / "prometheus.yml", prom)
        manager = yaml.load((folder / "alertmanager.yml").read_text())
        for key in ("group_wait", "group_interval", "repeat_interval"):
            manager["route"].pop(key, None)
        for receiver in manager["receivers"]:
            for webhook in receiver.get("webhook_configs", []):
                webhook["url"] = hook_url
        write_spec(folder / "alertmanager.yml", manager)
        self.config = {"prometheus": prom["global"], "alertmanager_route": manager["route"]}
        self._start(
            "alertmanager",
            TOOLS / "prometheus-alertmanager",
            f"--config.file={folder / 'alertmanager.yml'}",
            f"--storage.path={folder / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{self.am_port}",
            "--cluster.listen-address=",
        )
        self._start(
            "prometheus",
            TOOLS / "prometheus",
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{self.prom_port}",
        )
        for port in (self.am_port, self.prom_port):
            wait_for(f"127.0.0.1:{port}/-/ready", functools.partial(self.ready, port), 60, 0.2)
        self.started = time.monotonic()

    def ready(self, port: int) -> bool:
        return self.http.get(f"http://127.0.0.1:{port}/-/ready").status_code == 200

    def _start(self, name: str, binary: Path, *args: str) -> None:
        out = (self.folder / f"{name}.log").open("wb")
        self.procs.append(
            subprocess.Popen(
                [str(binary), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.folder,
            )
        )
        out.close()

    def fired_for(self) -> set[str]:
        """Instances Prometheus ever had a firing InstanceDown for (its ALERTS series)."""
        expr = f'max_over_time(ALERTS{{alertname="{ALERT}",alertstate="firing"}}[1h])'
        got = self.http.get(
            f"http://127.0.0.1:{self.prom_port}/api/v1/query", params={"query": expr}
        ).json()
        return {r["metric"].get("instance", "") for r in got["data"]["result"]}

    def effective(self) -> dict[str, Any]:
        """The intervals both really run with (their loaded configuration, defaults in)."""
        yaml = YAML(typ="safe")
        prom = self.http.get(f"http://127.0.0.1:{self.prom_port}/api/v1/status/config").json()
        glob = yaml.load(prom["data"]["yaml"])["global"]
        manager = self.http.get(f"http://127.0.0.1:{self.am_port}/api/v2/status").json()
        route = yaml.load(manager["config"]["original"])["route"]
        return {
            "scrape_interval": glob.get("scrape_interval"),
            "evaluation_interval": glob.get("evaluation_interval"),
            # Alertmanager fills these in when it builds the route, not in its config.
            "group_wait": route.get("group_wait", "30s (default)"),
            "group_interval": route.get("group_interval", "5m (default)"),
            "repeat_interval": route.get("repeat_interval", "4h (default)"),
        }

    def close(self) -> None:
        self.http.close()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def held_down(bank: Bank, hook: Hook, peer_hook: Hook, run: int) -> dict[str, Any]:
    """Crash-loop one instance until Alertmanager's webhook names it (or PEER_LIMIT)."""
    victim = pick_victim(bank, run)
    ident, pid = victim["id"], int(victim["pid"])
    killed_wall, killed = time.time(), time.monotonic()
    kills = 1 if kill_instance(pid) else 0
    done: set[int] = {pid}
    deadline = killed + PEER_LIMIT
    while time.monotonic() < deadline and not delivery(peer_hook, ident, killed, killed_wall):
        row = bank.instance(ident)
        if row and row["pid"] and int(row["pid"]) not in done:
            done.add(int(row["pid"]))
            kills += kill_instance(int(row["pid"]))
        time.sleep(0.2)
    held = time.monotonic() - killed
    peer = delivery(peer_hook, ident, killed, killed_wall)
    ours = delivery(hook, ident, killed, killed_wall)
    log(f"[peer run {run + 1}] released {ident} after {held:.0f}s and {kills} kills")
    wait_for(f"{ident} back", lambda: back(bank, ident, pid), 120, every=0.5)
    wait_for(f"the resolved notification of {ident}", lambda: resolved(hook, ident), 120, 0.5)
    return {
        "run": run + 1,
        "instance": ident,
        "held_seconds": round(held, 1),
        "kills": kills,
        "alwayson_seconds": ours["seconds"] if ours else None,
        "alwayson_fired_after_kill": ours["fired_after_kill"] if ours else None,
        "prometheus_seconds": peer["seconds"] if peer else None,
        "prometheus_fired_after_kill": peer["fired_after_kill"] if peer else None,
    }


# -- the whole run --------------------------------------------------------------------------


def keep_logs(work: Path, dest: Path) -> None:
    """The controllers' and workloads' logs, and Prometheus's and Alertmanager's."""
    for folder in work.iterdir():
        state = folder / ".alwayson"
        if (state / "logs").is_dir():
            shutil.copytree(state / "logs", dest / folder.name, dirs_exist_ok=True)
        for file in [*state.glob("*.log"), *folder.glob("*.log")]:
            (dest / folder.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, dest / folder.name / file.name)


def store_simulation(hours: float) -> dict[str, Any] | None:
    script = ROOT / "benchmarks" / "observe_store.py"
    if hours <= 0 or not script.exists():
        return None
    log(f"[store] benchmarks/observe_store.py --hours {hours:g} --json (fast-forwarded)")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script), "--hours", f"{hours:g}", "--json"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=3600,
    )
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    figures: dict[str, Any] = json.loads(done.stdout)
    figures["wall_seconds"] = round(time.monotonic() - started, 1)
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    report: dict[str, Any] = {"benchmark": "monitoring", "machine": machine(), "quick": args.quick}
    warmup, window = (10.0, 45.0) if args.quick else (args.warmup, args.window)
    runs = 2 if args.quick else args.runs
    peer_runs = args.prometheus_runs
    if peer_runs is None:
        peer_runs = 0 if args.quick else 2
    if peer_runs and not (TOOLS / "prometheus").exists():
        log(f"no {TOOLS / 'prometheus'}: skipping the Prometheus peer")
        peer_runs = 0
    store_hours = args.store_hours if args.store_hours is not None else (0 if args.quick else 24)
    hook, peer_hook = Hook(), Hook()
    banks: list[Bank] = []
    streams: list[Stream] = []
    peer: Peer | None = None
    with tempfile.TemporaryDirectory(prefix="monitoring-bench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        monitored_since = time.monotonic()
        try:
            monitored = Bank(work / "monitored", "bank-monitored", "5s", hook.url)
            banks.append(monitored)
            if not args.skip_cost:
                banks.append(Bank(work / "idle", "bank-idle", "1h", hook.url))
            for bank in banks:
                log(f"[{bank.name}] up in {bank.up():.1f}s")
                if bank is monitored:
                    monitored_since = time.monotonic()
                stream = Stream(bank.platform.front_door, TRAFFIC, rate=TRAFFIC_RATE)
                streams.append(stream.__enter__())
            if not args.skip_cost:
                cost = measure_cost(banks, warmup, window)
                for bank in banks:
                    bank.note_processes()
                figures = store_figures(monitored)
                queries = time_queries(monitored, 5 if args.quick else 7)
                mon, idle = cost["bank-monitored"], cost["bank-idle"]
                report["cost"] = {
                    "scrape_interval": {"monitored": "5s", "idle": "1h"},
                    "monitored": mon,
                    "idle": idle,
                    "difference_cpu_seconds_per_minute": round(
                        mon["controller_cpu_seconds_per_minute"]
                        - idle["controller_cpu_seconds_per_minute"],
                        3,
                    ),
                    "difference_other_cpu_seconds_per_minute": round(
                        mon["other_cpu_seconds_per_minute"] - idle["other_cpu_seconds_per_minute"],
                        3,
                    ),
                    "difference_rss_bytes": mon["controller_rss_bytes"]
                    - idle["controller_rss_bytes"],
                    "store": figures,
                    "store_minutes": round((time.monotonic() - monitored_since) / 60, 1),
                }
                report["queries"] = {"range": "since=24h step=60", "live": queries}
                log(f"[cost] {json.dumps(report['cost'])}")
                idle_bank = banks.pop()
                streams.pop().__exit__(None, None, None)
                idle_bank.close()
            if not args.skip_kill:
                kills: list[dict[str, Any]] = []
                held: list[dict[str, Any]] = []
                if peer_runs:
                    peer = Peer(monitored, work / "prometheus", peer_hook.url)
                    for n in range(peer_runs):
                        row = held_down(monitored, hook, peer_hook, n)
                        log(f"[peer run {n + 1}] {row}")
                        held.append(row)
                for n in range(runs):
                    row = transient_kill(monitored, hook, peer_runs + n, n + 1)
                    log(
                        f"[kill run {n + 1}] {row['instance']}: webhook after {row['seconds']} s"
                        f" (fired {row['fired_after_kill']} s after the kill), back after "
                        f"{row['back_after_kill']}s{' MISSED' if row['missed'] else ''}"
                    )
                    kills.append(row)
                seconds = [r["seconds"] for r in kills if r["seconds"] is not None]
                report["kill"] = {
                    "runs": kills,
                    "median_seconds": median(seconds),
                    "max_seconds": max(seconds) if seconds else None,
                    "missed": sum(1 for r in kills if r["missed"]),
                    "missed_after_seconds": MISSED_AFTER,
                    "target_seconds": TARGET_SECONDS,
                    "traffic_sent": streams[0].sent,
                    "traffic_failed": len(streams[0].failures),
                    "traffic_failures": streams[0].failures[:5],
                }
                attempts = monitored.get("/api/v1/alerts", deliveries=500)["deliveries"]
                report["kill"]["deliveries"] = [
                    a for a in attempts if ALERT in str(a.get("group_key", ""))
                ]
                if peer is not None:
                    fired = peer.fired_for()
                    report["prometheus_peer"] = {
                        "config": peer.config,
                        "effective": peer.effective(),
                        "held_down_runs": held,
                        "transient_kills_prometheus_fired_for": [
                            r["instance"] for r in kills if r["instance"] in fired
                        ],
                        "transient_kills": len(kills),
                    }
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)
            if peer is not None:
                peer.close()
            for bank in banks:
                bank.close()
            if args.keep_logs:
                keep_logs(work, Path(args.keep_logs))
            hook.close()
            peer_hook.close()
    report["store_simulation"] = store_simulation(store_hours)
    report["prometheus_defaults"] = {
        **PROMETHEUS_DEFAULTS,
        "worst_case_seconds": sum(PROMETHEUS_DEFAULTS.values()),
        "note": "documented defaults: a scrape up to 1 m after the fault, an evaluation up to "
        "1 m after that, then Alertmanager's group_wait of 30 s for a new group",
    }
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    return report


# -- printing ---------------------------------------------------------------------------------


def mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(
        f"machine: {m['cpus']} CPUs, {m['cpu_model']}, {m['kernel']}, Python {m['python']}, "
        f"load average at start {m['load_average_at_start']}"
    )
    print(f"wall time {report['wall_seconds']:.0f}s\n")
    cost = report.get("cost")
    if cost:
        mon, idle = cost["monitored"], cost["idle"]
        print(
            f"scrape and store cost, sample bank, {mon['window_seconds']:.0f}s window, both "
            "platforms side by side under the same light traffic"
        )
        print(f"{'':<34}{'5s (monitored)':>16}{'1h (idle)':>12}{'difference':>12}")
        print(
            f"{'controller CPU s/min':<34}{mon['controller_cpu_seconds_per_minute']:>16.2f}"
            f"{idle['controller_cpu_seconds_per_minute']:>12.2f}"
            f"{cost['difference_cpu_seconds_per_minute']:>12.2f}"
        )
        print(
            f"{'controller RSS':<34}{mib(mon['controller_rss_bytes']):>16}"
            f"{mib(idle['controller_rss_bytes']):>12}{mib(cost['difference_rss_bytes']):>12}"
        )
        print(
            f"{'other processes CPU s/min':<34}{mon['other_cpu_seconds_per_minute']:>16.2f}"
            f"{idle['other_cpu_seconds_per_minute']:>12.2f}"
            f"{cost['difference_other_cpu_seconds_per_minute']:>12.2f}"
            f"   ({mon['other_processes']} processes)"
        )
        s = cost["store"]
        print(
            f"one scrape round: {s['targets']:.0f} targets ({s['targets_up']:.0f} up), "
            f"{s['samples_scraped_from_targets']:.0f} samples scraped from targets, "
            f"{s['series_last_scrape']:.0f} series in the store at the last scrape "
            f"(with process, platform and database series); slowest scrape "
            f"{s['slowest_scrape_seconds'] * 1000:.0f} ms"
        )
        print(
            f"store on disk after {cost['store_minutes']:.1f} min: {mib(s['store_bytes_on_disk'])}"
        )
    queries = report.get("queries")
    if queries:
        print(f"\nquery_range {queries['range']} over HTTP, on this run's store (minutes of data)")
        for label, q in queries["live"].items():
            print(
                f"  {label:<22}median {q['median_seconds'] * 1000:7.1f} ms  max "
                f"{q['max_seconds'] * 1000:7.1f} ms  ({q['series']} series, {q['points']} points)"
            )
    sim = report.get("store_simulation")
    if sim and "error" not in sim:
        print(
            f"simulated {sim['simulated_hours']:g} h store (benchmarks/observe_store.py, "
            f"{sim['series']} series), range 24h/60s, median of 5, in process:"
        )
        for expr, seconds in sim["range_24h_step_60s_seconds"].items():
            print(f"  {seconds * 1000:8.1f} ms  {expr}")
    elif sim:
        print(f"observe_store.py failed: {sim['error'][-300:]}")
    kill = report.get("kill")
    if kill:
        print(
            f"\ninstance kill -> webhook (InstanceDown, for: 0s, evaluation 5s, group_wait 0s), "
            f"{len(kill['runs'])} runs"
        )
        print(
            f"{'run':>4}  {'instance':<26}{'webhook s':>10}{'fired s':>9}{'back s':>8}"
            f"{'up 0 stored':>13}"
        )
        for r in kill["runs"]:
            fired = r["fired_after_kill"]
            seconds = "MISSED" if r["seconds"] is None else f"{r['seconds']:.2f}"
            print(
                f"{r['run']:>4}  {r['instance']:<26}{seconds:>10}"
                f"{fired if fired is not None else '-':>9}{r['back_after_kill']:>8.2f}"
                f"{'yes' if r['store_saw_up_0'] else 'no':>13}"
            )
        med, top = kill["median_seconds"], kill["max_seconds"]
        print(
            f"median {'-' if med is None else f'{med:.2f}s'}, max "
            f"{'-' if top is None else f'{top:.2f}s'} over the alerted kills (target <= "
            f"{kill['target_seconds']:g}s); {kill['missed']} kill(s) never "
            f"alerted (nothing within {kill['missed_after_seconds']:g}s); light traffic: "
            f"{kill['traffic_sent']} requests, {kill['traffic_failed']} failed"
        )
    peer = report.get("prometheus_peer")
    if peer:
        print(
            "\nPrometheus 2.42 + Alertmanager 0.25 at their defaults (scrape and evaluation "
            "1m, group_wait 30s), federating /metrics; instance crash-looped until the peer's "
            "webhook named it"
        )
        print(f"{'run':>4}  {'instance':<26}{'alwayson s':>11}{'prometheus s':>14}{'held s':>8}")
        for r in peer["held_down_runs"]:
            ours, theirs = r["alwayson_seconds"], r["prometheus_seconds"]
            print(
                f"{r['run']:>4}  {r['instance']:<26}"
                f"{ours if ours is not None else '-':>11}"
                f"{theirs if theirs is not None else 'none':>14}{r['held_seconds']:>8.0f}"
            )
        print(
            f"transient kills Prometheus fired for at all: "
            f"{len(peer['transient_kills_prometheus_fired_for'])} of {peer['transient_kills']}"
        )
    d = report["prometheus_defaults"]
    print(
        f"\nPrometheus + Alertmanager documented defaults: scrape {d['scrape_interval']:g}s + "
        f"evaluation {d['evaluation_interval']:g}s + group_wait {d['group_wait']:g}s = "
        f"worst case {d['worst_case_seconds']:g}s for an outage that lasts"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows, 2 kill runs")
    parser.add_argument("--json", action="store_true", help="print one JSON document at the end")
    parser.add_argument("--save", metavar="FILE", help="also write the JSON document here")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy every platform's logs here")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-kill", action="store_true")
    parser.add_argument("--runs", type=int, default=5, help="instance kills")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the window")
    parser.add_argument("--window", type=float, default=150.0, help="seconds of CPU measured")
    parser.add_argument(
        "--prometheus-runs", type=int, default=None, help="held-down kills for the peer"
    )
    parser.add_argument(
        "--store-hours", type=float, default=None, help="observe_store.py --hours (0: skip)"
    )
    args = parser.parse_args()

    return finish(args, run, print_report)


if __name__ == "__main__":
    sys.exit(main())
