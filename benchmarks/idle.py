"""What the platform's own processes cost at rest: CPU of the sample bank, up and idle.

    flock /tmp/alwayson-heavy.lock .venv/bin/python benchmarks/idle.py [--seconds 60] [--json]

Brings up the sample digital bank (``examples/digital-bank/alwayson.yaml``: 15 services x
2 replicas x 2 sites, gateways, front door, the ``bank`` database in both sites with its
agents and an etcd member in every site) from a temporary copy on private loopback subnets (taken
through the tests' subnet locks) and private ports, waits until it is converged (every
instance ready, the primary writable, the standby streaming), lets it settle, then samples
the CPU time of every process over ``--seconds`` and prints cores used per process and per
role. Nothing sends it traffic: what it measures is the price of being up.

The processes are found from the platform's own records, never by name: a lone controller's
``controller.json``, the runtime's ``run/instances/*.json`` (site controllers, agents, etcd
members, gateways, front doors, workloads, each with its kind) and PostgreSQL's
``postmaster.pid``. Each recorded process is the root of a group that also holds its
descendants that are not roots themselves (PostgreSQL's backends belong to ``postgres``, not
to the agent that started the postmaster). A group's CPU is user + system time read from
``/proc`` every ``--every`` seconds, including children it reaped during the window (so
short-lived backends and helper commands count too).

The figure the issue sets a target for is ``platform``: controller + database agents +
etcd members (target <= 0.1 core; issue 13 set it with the lease keeper in their place).
Gateways, front doors, PostgreSQL and workloads are reported as context. ``alwayson down``
runs at the end and every recorded process is then killed by its pid (checked against its
start time), even on failure or Ctrl-C.

The platform's processes run ``sys.executable`` with the environment the runtime gives
them (no ``PYTHONPATH``), so they run the ``alwayson`` this interpreter imports without
it: to measure a source tree other than the installed one, run this script with an
interpreter (a throw-away venv) whose path puts that tree first. ``--hold SECONDS`` keeps
the platform up after the window and prints the pids, to attach a profiler.

What the platform does at rest is partly fixed (etcd's raft, leases, reports) and partly
what the spec asks for: a health probe of every instance every ``interval`` and a scrape
of every target every ``scrape_interval``. ``--probe-every 10s --scrape-every 15s`` runs
the same bank with Kubernetes' default probe period and a common Prometheus interval, to
tell the two parts apart. The etcd members' ``/metrics`` are read at both ends of the
window: requests served a second by gRPC method, and raft proposals committed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from reporting import finish
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "digital-bank"
sys.path.insert(0, str(ROOT))  # the tests' platform helpers: subnets, ports, cleanup by pid
from benchmarks.releases import alwayson_cli, machine  # noqa: E402
from tests.support import isolate, kill_recorded  # noqa: E402

PLATFORM_ROLES = ("controller", "agent", "etcd")
CONTEXT_ROLES = ("gateway", "frontdoor", "postgres", "workload")
TARGET_CORES = 0.1
TICKS = os.sysconf("SC_CLK_TCK")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the platform ---------------------------------------------------------------------------


class Bank:
    """The sample bank in ``folder`` on private subnets and ports."""

    def __init__(
        self, folder: Path, probe_every: str | None = None, scrape_every: str | None = None
    ) -> None:
        shutil.copytree(SAMPLE, folder, ignore=shutil.ignore_patterns(".alwayson", "__pycache__"))
        yaml = YAML()
        self.spec_path = folder / "alwayson.yaml"
        data = isolate(yaml.load(self.spec_path.read_text()))
        if probe_every:  # the services' health probes, as a spec might set them
            for service in data.get("services", []):
                if "health" in service:
                    service["health"]["interval"] = probe_every
        if scrape_every:
            data.setdefault("metrics", {})["scrape_interval"] = scrape_every
        with self.spec_path.open("w") as out:
            yaml.dump(data, out)
        self.state_dir = folder / ".alwayson"
        self.databases = [str(db["name"]) for db in data.get("databases", [])]

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        return alwayson_cli(self.spec_path, *args, check=check, timeout=timeout)

    def converged(self) -> tuple[bool, str]:
        status = json.loads(self.cli("status", "--json", timeout=30))
        if not status.get("converged"):
            return False, f"{status.get('ready')} of {len(status.get('instances', []))} ready"
        if not self.databases:
            return True, "converged"
        found = {d["name"]: d for d in json.loads(self.cli("db", "status", "--json", timeout=30))}
        for name in self.databases:
            sites = found.get(name, {}).get("sites", [])
            roles = {s.get("role") for s in sites}
            streaming = any(s.get("receiver") == "streaming" for s in sites)
            writable = any(s.get("role") == "primary" and s.get("writable") for s in sites)
            if not ({"primary", "standby"} <= roles and streaming and writable):
                return False, f"database {name}: {[(s.get('site'), s.get('role')) for s in sites]}"
        return True, "converged"

    def wait_converged(self, timeout: float) -> float:
        started = time.monotonic()
        last = "no answer yet"
        while time.monotonic() - started < timeout:
            try:
                ok, last = self.converged()
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                ok, last = False, str(exc).splitlines()[0]
            if ok:
                return time.monotonic() - started
            time.sleep(1.0)
        raise RuntimeError(f"not converged within {timeout:g}s; last: {last}")

    def close(self) -> None:
        one = (self.state_dir / "controller.json").exists()
        if one or (self.state_dir / "control" / "cluster.json").exists():
            try:
                self.cli("down", check=False, timeout=180)
            except subprocess.TimeoutExpired:
                log("`alwayson down` timed out")
        killed = kill_recorded(self.state_dir)
        if killed:
            log(f"killed leftover processes {killed}")


# -- the processes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Root:
    name: str
    role: str
    pid: int
    start_time: float  # seconds since the epoch, as the records keep it


def boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise RuntimeError("no btime in /proc/stat")


@dataclass(frozen=True)
class Stat:
    ppid: int
    cpu: float  # own user + system, plus that of reaped children, in seconds
    started: float  # seconds since the epoch


def read_stat(pid: int, btime: float) -> Stat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return Stat(ppid, (utime + stime + cutime + cstime) / TICKS, btime + int(fields[19]) / TICKS)


def recorded_roots(state_dir: Path) -> list[Root]:
    roots = []
    with contextlib.suppress(OSError, ValueError, KeyError):
        record = json.loads((state_dir / "controller.json").read_text())
        roots.append(Root("controller", "controller", int(record["pid"]), record["start_time"]))
    for path in sorted(state_dir.glob("run/instances/*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            record = json.loads(path.read_text())
            spec = record["spec"]
            roots.append(
                Root(spec["id"], spec["kind"], int(record["pid"]), float(record["start_time"]))
            )
    btime = boot_time()
    for path in sorted(state_dir.rglob("postmaster.pid")):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(path.read_text().splitlines()[0])
            stat = read_stat(pid, btime)
            if stat is not None:  # postmaster.pid names no start time; /proc gives it
                name = f"postgres:{path.parent.relative_to(state_dir)}"
                roots.append(Root(name, "postgres", pid, stat.started))
    return roots


@dataclass
class Tracked:
    root: str
    first: float  # cpu when first seen (0 for a process born in the window)
    last: float
    parent: tuple[int, float]
    gone: bool = False


@dataclass
class Sampler:
    """CPU of each root's group over a window, from ``/proc`` every ``every`` seconds.

    A process alive at the start counts from its value then; one born later counts whole.
    A process that ends counts through its parent's reaped-children time when its parent
    is tracked (its own figure is then taken back, but for the part before the window),
    else up to its last sample."""

    roots: list[Root]
    btime: float = field(default_factory=boot_time)
    tracked: dict[tuple[int, float], Tracked] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    by_pid: dict[int, str] = field(default_factory=dict)  # the roots still running

    def __post_init__(self) -> None:
        for root in self.roots:
            stat = read_stat(root.pid, self.btime)
            if stat is None or abs(stat.started - root.start_time) > 0.5:
                self.missing.append(root.name)  # exited, or its pid was reused
                continue
            self.by_pid[root.pid] = root.name

    def sample(self, first: bool) -> None:
        stats: dict[int, Stat] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = read_stat(int(entry.name), self.btime)
                if stat is not None:
                    stats[int(entry.name)] = stat
        children: dict[int, list[int]] = defaultdict(list)
        for pid, stat in stats.items():
            children[stat.ppid].append(pid)
        seen: set[tuple[int, float]] = set()
        for root_pid, name in self.by_pid.items():
            stack = [root_pid]
            while stack:
                pid = stack.pop()
                stat = stats.get(pid)
                if stat is None:
                    continue
                key = (pid, stat.started)
                seen.add(key)
                parent = stats.get(stat.ppid)
                item = self.tracked.get(key)
                if item is None:
                    item = self.tracked[key] = Tracked(
                        name,
                        stat.cpu if first else 0.0,
                        stat.cpu,
                        (stat.ppid, parent.started if parent else 0.0),
                    )
                item.last = stat.cpu
                stack.extend(c for c in children.get(pid, []) if c not in self.by_pid)
        for key, item in self.tracked.items():
            if key not in seen:
                item.gone = True

    def cores(self, seconds: float) -> dict[str, float]:
        used: dict[str, float] = defaultdict(float)
        for item in self.tracked.values():
            reaped_by_tracked = item.gone and item.parent in self.tracked
            used[item.root] += -item.first if reaped_by_tracked else item.last - item.first
        return {name: max(0.0, cpu) / seconds for name, cpu in used.items()}


def etcd_metrics_urls(state_dir: Path) -> list[str]:
    """Each etcd member's plain-HTTP ``/metrics`` (its instance is probed there)."""
    urls = []
    for path in sorted(state_dir.glob("run/instances/etcd@*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            spec = json.loads(path.read_text())["spec"]
            urls.append(f"http://{spec['host']}:{spec['port']}/metrics")
    return urls


def etcd_counts(urls: list[str]) -> dict[str, float]:
    """Requests the members served, by gRPC method (summed over members), and raft
    proposals committed (the most any member counts: each commits every one)."""
    counts: dict[str, float] = defaultdict(float)
    proposals = 0.0
    for url in urls:
        try:
            text = httpx.get(url, timeout=5.0).text
        except httpx.HTTPError:
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "grpc_server_handled_total":
                    method = f"{sample.labels['grpc_service']}/{sample.labels['grpc_method']}"
                    counts[method] += sample.value
                elif sample.name == "etcd_server_proposals_committed_total":
                    proposals = max(proposals, sample.value)
    counts["raft proposals committed"] = proposals
    return counts


def cpu_ticks() -> list[int]:
    """The machine's CPU time by state (``/proc/stat``'s first line, in ticks)."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]


def steal_share(first: list[int], last: list[int]) -> float:
    """Of the machine's CPU time in a window, the share the hypervisor took (steal): on a
    shared VM it slows every process alike and inflates what each one is measured to use,
    so two runs compare only when their steal is alike."""
    spent = [b - a for a, b in zip(first, last, strict=True)]
    return spent[7] / sum(spent) if sum(spent) else 0.0


def measure(
    roots: list[Root], seconds: float, every: float, etcd_urls: list[str] | None = None
) -> dict[str, Any]:
    sampler = Sampler(roots)
    before = etcd_counts(etcd_urls or [])
    ticks = cpu_ticks()
    started = time.monotonic()
    sampler.sample(first=True)
    while (left := seconds - (time.monotonic() - started)) > 0:
        time.sleep(min(every, left))
        sampler.sample(first=False)
    window = time.monotonic() - started
    after = etcd_counts(etcd_urls or [])
    steal = steal_share(ticks, cpu_ticks())
    etcd_rates = {
        name: round((after[name] - before.get(name, 0.0)) / window, 2)
        for name in sorted(after)
        if after[name] > before.get(name, 0.0)
    }
    cores = sampler.cores(window)
    role_of = {r.name: r.role for r in roots}
    used = {name: round(cores.get(name, 0.0), 4) for name in sampler.by_pid.values()}
    processes = [{"name": name, "role": role_of[name], "cores": c} for name, c in used.items()]
    roles: dict[str, dict[str, float]] = {}
    for role in (*PLATFORM_ROLES, *CONTEXT_ROLES):
        mine = [c for name, c in used.items() if role_of[name] == role]
        if mine:
            roles[role] = {"processes": len(mine), "cores": round(sum(mine), 4)}
    platform_cores = sum(roles.get(r, {}).get("cores", 0.0) for r in PLATFORM_ROLES)
    return {
        "window_seconds": round(window, 2),
        "processes": processes,
        "roles": roles,
        "platform_cores": round(platform_cores, 4),
        "etcd_per_second": etcd_rates,
        "steal": round(steal, 3),
        "missing": sampler.missing,
    }


# -- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="alwayson-idle-") as tmp:
        os.chmod(tmp, 0o755)
        bank = Bank(Path(tmp) / "digital-bank", args.probe_every, args.scrape_every)
        try:
            started = time.monotonic()
            bank.cli("up", "--timeout", "180", timeout=300)
            up_seconds = time.monotonic() - started
            log(f"up in {up_seconds:.1f}s; waiting until converged")
            converged = bank.wait_converged(args.converge_timeout)
            log(f"converged {converged:.1f}s later; settling {args.settle:g}s")
            time.sleep(args.settle)
            roots = recorded_roots(bank.state_dir)
            log(f"sampling {len(roots)} recorded processes for {args.seconds:g}s")
            figures = measure(roots, args.seconds, args.every, etcd_metrics_urls(bank.state_dir))
            if args.hold:
                pids = {r.name: r.pid for r in roots if r.role in PLATFORM_ROLES}
                log(f"holding the platform up {args.hold:g}s more (pids: {pids})")
                time.sleep(args.hold)
        finally:
            bank.close()
    return {
        "benchmark": "idle",
        "spec": "examples/digital-bank/alwayson.yaml",
        "probe_every": args.probe_every or "as the spec says (1s)",
        "scrape_every": args.scrape_every or "as the spec says (5s, the default)",
        "seconds": args.seconds,
        "settle_seconds": args.settle,
        "every_seconds": args.every,
        "target_platform_cores": TARGET_CORES,
        **figures,
        "machine": machine(),
    }


def print_report(report: dict[str, Any]) -> None:
    print(f"idle cost of the sample bank over {report['window_seconds']:.0f}s (cores used)")
    print(f"{'process':<40} {'role':<10} {'cores':>7}")
    order = {role: n for n, role in enumerate((*PLATFORM_ROLES, *CONTEXT_ROLES))}
    rows = sorted(report["processes"], key=lambda p: (order.get(p["role"], 99), p["name"]))
    for row in rows:
        if row["role"] != "workload":
            print(f"{row['name']:<40} {row['role']:<10} {row['cores']:>7.3f}")
    print()
    print(f"{'role':<12} {'processes':>9} {'cores':>7}")
    for role, figures in report["roles"].items():
        print(f"{role:<12} {figures['processes']:>9} {figures['cores']:>7.3f}")
    verdict = "meets" if report["platform_cores"] <= report["target_platform_cores"] else "misses"
    print(
        f"\nplatform (controller + agents + etcd members): {report['platform_cores']:.3f} cores; "
        f"{verdict} the target of <= {report['target_platform_cores']:g}"
    )
    print(f"CPU time the hypervisor took (steal) in the window: {report.get('steal', 0):.0%}")
    if report.get("etcd_per_second"):
        print("\netcd requests served a second (all members), and raft proposals committed:")
        for name, rate in sorted(report["etcd_per_second"].items(), key=lambda kv: -kv[1]):
            print(f"  {rate:8.2f}  {name}")
    if report["missing"]:
        print(f"recorded but not running at the start: {', '.join(report['missing'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="the sampling window")
    parser.add_argument("--settle", type=float, default=15.0, help="wait after convergence")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--converge-timeout", type=float, default=180.0)
    parser.add_argument(
        "--hold", type=float, default=0.0, help="keep it up this long after, for a profiler"
    )
    parser.add_argument(
        "--probe-every",
        metavar="DURATION",
        help="set every service's health probe interval (e.g. 10s, Kubernetes' default)",
    )
    parser.add_argument(
        "--scrape-every",
        metavar="DURATION",
        help="set metrics.scrape_interval (e.g. 15s, a common Prometheus setting)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", metavar="FILE", help="also write the JSON report here")
    return finish(parser.parse_args(), run, print_report)


if __name__ == "__main__":
    sys.exit(main())
