"""Geo-replicated PostgreSQL: failover under writes (RTO, RPO) and the endpoint's cost (pgbench).

    .venv/bin/python benchmarks/failover.py [--runs 3] [--pgbench-rounds 2] [--quick] [--json]

Every platform is fresh, from a temporary folder, on private loopback subnets (taken through
the tests' own subnet locks) and private ports: two workload sites (``jakarta`` primary,
``surabaya`` standby) plus a witness (an etcd member in each of the three sites), no
services, one database ``bank`` (lease ttl 6 s, margin 2 s: the defaults), backups only on request.

**Failover** (``--runs N`` per replication mode, synchronous then asynchronous):
``acks(id bigint primary key, at timestamptz)`` is created through the primary site's
endpoint; 4 writers (psycopg 3, one autocommit connection each, ``connect_timeout=2``, 20 ms
back-off after an error and no other pause), two per site, each through its own site's
endpoint (``127.N.0.11:5432``), insert increasing unique ids and note every acknowledged
one. After 3 s of load the primary's postmaster gets SIGKILL (pid from the primary site's
agent ``/status``). Writing goes on until writes have succeeded again through both
endpoints for 2 s. Figures:

- ``client RTO``: per site endpoint, seconds from the kill to the first acknowledged write
  on a connection opened after the kill (every connection of the old primary dies with it);
  the larger of the two sites;
- the agent's record (``db status --json``, ``recent[-1]``, kind ``failover``): detection,
  promotion and writable times relative to the kill, ``promote_seconds``, ``rto_seconds``
  (the agent counts from its fault time: the lease's release or last renewal) and
  ``lag_at_fault``;
- acknowledged writes, errors after the kill, acknowledgements that arrived after the kill
  on a connection opened before it, and ``lost``: acknowledged ids missing from the table
  as read through the new primary's endpoint. Targets: RTO <= 10 s; lost 0 in synchronous
  mode.

**pgbench** (one platform per mode): ``pgbench -i -s 5``, then ``pgbench -c 8 -j 2 -T 15 -N``
alternately straight to the primary (``127.N.0.10:5432``) and through the primary site's
endpoint (``127.N.0.11:5432``), ``--pgbench-rounds`` times each; the median TPS of each and
the ratios endpoint/direct per mode and synchronous/asynchronous (direct).

``--quick``: one failover run per mode and pgbench -T 5, one round. ``--json`` prints one JSON
document at the end (progress goes to stderr); ``--save FILE`` also writes it to a file,
``--keep-logs DIR`` copies every platform's logs (agents, PostgreSQL) before the temporary
folder goes; ``--skip-failover`` / ``--skip-pgbench`` run one half.

Every platform ends with ``alwayson down``; then every process its state directory records,
and every postmaster pid this benchmark saw, is killed by pid (never by name), even on
failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from reporting import finish

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' platform helpers: subnets, ports, cleanup by pid
from benchmarks.releases import alwayson_cli, machine  # noqa: E402
from tests.support import free_port, kill_recorded, reserve_subnet, write_spec  # noqa: E402

from alwayson.data.engines import default_bin_dir  # noqa: E402

DB = "bank"
SITES = ("jakarta", "surabaya")  # the first is the primary site
WITNESS = "witness"
MODES = ("synchronous", "asynchronous")
WRITERS_PER_SITE = 2
LOAD_BEFORE_KILL = 3.0
RECOVERED_FOR = 2.0
RECOVERY_LIMIT = 90.0  # give up waiting for writes to succeed again after this
BACKOFF = 0.02
TARGET_RTO = 10.0
TABLE = "CREATE TABLE acks(id bigint PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def pg_bin() -> Path:
    found = default_bin_dir()
    if found is None:
        raise SystemExit("the pgserver wheel is not installed in this Python")
    return found


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def ago(at: float | None, since: float) -> float | None:
    return None if at is None else round(float(at) - since, 3)


# -- one platform ------------------------------------------------------------------------


class Platform:
    """A fresh platform in ``folder``; ``close()`` downs it and kills what is left by pid."""

    def __init__(self, folder: Path, mode: str) -> None:
        folder.mkdir(mode=0o755, parents=True)
        self.folder = folder
        self.mode = mode
        self.octets = {name: reserve_subnet() for name in (*SITES, WITNESS)}
        self.data = {
            "platform": "failover-bench",
            "controller": {"api": f"127.0.0.1:{free_port()}"},
            "front_door": {"listen": f"127.0.0.1:{free_port()}"},
            "gateway": {"port": free_port(), "admin_port": free_port()},
            "sites": [
                {"name": SITES[0], "subnet": f"127.{self.octets[SITES[0]]}.0.0/16"},
                {"name": SITES[1], "subnet": f"127.{self.octets[SITES[1]]}.0.0/16"},
                {"name": WITNESS, "witness": True, "subnet": f"127.{self.octets[WITNESS]}.0.0/16"},
            ],
            "databases": [
                {
                    "name": DB,
                    "primary_site": SITES[0],
                    "replication": mode,
                    "backup": {"schedule": None},
                }
            ],
        }
        self.spec_path = folder / "alwayson.yaml"
        write_spec(self.spec_path, self.data)
        self.state_dir = folder / ".alwayson"
        self.postmasters: set[tuple[int, float]] = set()  # (pid, start time) seen in /status
        self.http = httpx.Client(timeout=2.0, trust_env=False)

    # addresses (docs/DATA-DESIGN.md, src/alwayson/data/layout.py)

    def agent(self, site: str) -> str:
        return f"http://127.{self.octets[site]}.0.9:7400"

    def pg(self, site: str) -> str:
        return f"127.{self.octets[site]}.0.10"

    def endpoint(self, site: str) -> str:
        return f"127.{self.octets[site]}.0.11"

    def secrets(self) -> dict[str, str]:
        return dict(json.loads((self.state_dir / "data" / "secrets.json").read_text())[DB])

    def dsn(self, host: str, superuser: bool = False) -> str:
        found = self.secrets()
        user, password = ("alwayson", found["superuser"]) if superuser else (DB, found["app"])
        return f"host={host} port=5432 user={user} password={password} dbname={DB}"

    # the CLI and the agents

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        return alwayson_cli(self.spec_path, *args, check=check, timeout=timeout)

    def up(self) -> float:
        started = time.monotonic()
        self.cli("up", "--timeout", "120", timeout=240)
        return time.monotonic() - started

    def site_status(self, site: str) -> dict[str, Any]:
        response = self.http.get(f"{self.agent(site)}/status")
        response.raise_for_status()
        status = dict(response.json()["databases"][DB])
        pid = status.get("pid")
        if pid:
            with contextlib.suppress(psutil.Error):
                self.postmasters.add((int(pid), psutil.Process(int(pid)).create_time()))
        return status

    def db_status(self) -> dict[str, Any]:
        found = json.loads(self.cli("db", "status", "--json", timeout=30))
        return dict(next(d for d in found if d["name"] == DB))

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Until the primary is writable, the standby streams (and, in synchronous mode, is
        the synchronous standby) and a query passes through both endpoints."""
        started = time.monotonic()
        deadline = started + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                primary, standby = (self.site_status(s) for s in SITES)
                last = {"primary": primary.get("verdict"), "standby": standby.get("verdict")}
                ok = (
                    primary.get("role") == "primary"
                    and primary.get("writable")
                    and standby.get("role") == "standby"
                    and standby.get("receiver") == "streaming"
                    and any(r.get("state") == "streaming" for r in primary.get("replication", []))
                )
                if ok and self.mode == "synchronous":
                    ok = primary.get("sync_standby") == SITES[1]
                if ok:
                    for site in SITES:
                        with psycopg.connect(
                            self.dsn(self.endpoint(site)), autocommit=True, connect_timeout=2
                        ) as conn:
                            conn.execute("SELECT 1")
                    return time.monotonic() - started
            except (httpx.HTTPError, psycopg.Error, OSError, KeyError, ValueError) as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise RuntimeError(f"the database was not ready within {timeout:g}s; last: {last}")

    def log_tail(self, lines: int = 40) -> dict[str, str]:
        out = {}
        for site in SITES:
            for name in (f"agent@{site}.log", f"{DB}@{site}.pg.log"):
                path = self.state_dir / "logs" / site / name
                with contextlib.suppress(OSError):
                    out[f"{site}/{name}"] = "\n".join(
                        path.read_text(errors="replace").splitlines()[-lines:]
                    )
        return out

    def close(self) -> None:
        self.http.close()
        if (self.state_dir / "controller.json").exists():
            try:
                self.cli("down", check=False, timeout=120)
            except subprocess.TimeoutExpired:
                log("`alwayson down` timed out")
        killed = kill_recorded(self.state_dir)
        for pid, start in self.postmasters:  # normally gone with their agents already
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if abs(proc.create_time() - start) < 0.05 and proc.name() == "postgres":
                    proc.kill()
                    killed.append(pid)
        if killed:
            log(f"killed leftover processes {killed}")


# -- the writers ---------------------------------------------------------------------------


@dataclass
class Ack:
    id: int
    sent: float
    acked: float
    conn_opened: float


@dataclass
class Writer:
    name: str
    site: str
    dsn: str
    ids: Any  # a shared itertools.count
    lock: threading.Lock
    stop: threading.Event
    acks: list[Ack] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self.thread.start()

    def next_id(self) -> int:
        with self.lock:
            return int(next(self.ids))

    def run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        opened = 0.0
        while not self.stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
                    opened = time.monotonic()
                ident = self.next_id()
                sent = time.monotonic()
                conn.execute("INSERT INTO acks(id) VALUES (%s)", (ident,))
                self.acks.append(Ack(ident, sent, time.monotonic(), opened))
            except psycopg.Error as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                self.errors.append((time.monotonic(), f"{type(exc).__name__}: {first[:160]}"))
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                time.sleep(BACKOFF)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def recovered_at(self, kill: float) -> float | None:
        """The first acknowledgement on a connection opened after the kill."""
        for ack in list(self.acks):
            if ack.conn_opened > kill:
                return ack.acked
        return None


def site_recovery(writers: list[Writer], kill: float) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for site in SITES:
        times = [w.recovered_at(kill) for w in writers if w.site == site]
        present = [t for t in times if t is not None]
        out[site] = min(present) if present else None
    return out


def error_kinds(errors: list[str]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for text in errors:
        kind = re.sub(r"\d+(\.\d+)*", "N", text)[:120]
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


# -- one failover --------------------------------------------------------------------------


def failover_run(work: Path, mode: str, n: int) -> dict[str, Any]:
    plat = Platform(work / f"failover-{mode}-{n}", mode)
    result: dict[str, Any] = {"mode": mode, "run": n}
    writers: list[Writer] = []
    stop = threading.Event()
    try:
        result["up_seconds"] = round(plat.up(), 2)
        result["ready_seconds"] = round(plat.wait_ready(), 2)
        log(
            f"[{mode} run {n}] up in {result['up_seconds']:.1f}s, database ready "
            f"{result['ready_seconds']:.1f}s later"
        )
        with psycopg.connect(
            plat.dsn(plat.endpoint(SITES[0])), autocommit=True, connect_timeout=5
        ) as conn:
            conn.execute(TABLE)
        ids, lock = itertools.count(1), threading.Lock()
        for site in SITES:
            for k in range(WRITERS_PER_SITE):
                writers.append(
                    Writer(f"{site}-{k}", site, plat.dsn(plat.endpoint(site)), ids, lock, stop)
                )
        for w in writers:
            w.start()
        time.sleep(LOAD_BEFORE_KILL)
        primary = plat.site_status(SITES[0])
        pid = int(primary["pid"])
        proc = psutil.Process(pid)
        if proc.name() != "postgres" or str(proc.cwd()) != str(
            plat.state_dir / "data" / DB / SITES[0] / "pgdata"
        ):
            raise RuntimeError(f"pid {pid} is not the primary's postmaster: {proc}")
        before = sum(len(w.acks) for w in writers)
        kill, kill_wall = time.monotonic(), time.time()
        os.kill(pid, signal.SIGKILL)
        log(f"[{mode} run {n}] {before} writes acknowledged; SIGKILL to postmaster {pid}")
        recovered: dict[str, float | None] = {}
        while time.monotonic() - kill < RECOVERY_LIMIT:
            recovered = site_recovery(writers, kill)
            if all(recovered.values()):
                latest = max(t for t in recovered.values() if t is not None)
                if time.monotonic() >= latest + RECOVERED_FOR:
                    break
            time.sleep(0.05)
        stop.set()
        stuck = []
        for w in writers:
            assert w.thread is not None
            w.thread.join(timeout=15)
            if w.thread.is_alive():
                stuck.append(w.name)
        recovered = site_recovery(writers, kill)
        result["recovered"] = all(recovered.values())
        result["stuck_writers"] = stuck
        rto_by_site = {s: ago(t, kill) for s, t in recovered.items()}
        result["client_rto_by_site"] = rto_by_site
        present = [v for v in rto_by_site.values() if v is not None]
        result["client_rto"] = max(present) if result["recovered"] else None
        acks = [a for w in writers for a in w.acks]
        errors = [(t, e) for w in writers for t, e in w.errors]
        result["acknowledged"] = len(acks)
        result["acknowledged_before_kill"] = sum(1 for a in acks if a.acked <= kill)
        result["late_acks_old_connection"] = sum(
            1 for a in acks if a.acked > kill and a.conn_opened < kill
        )
        result["errors_before_kill"] = sum(1 for t, _ in errors if t <= kill)
        result["errors_after_kill"] = sum(1 for t, _ in errors if t > kill)
        result["error_kinds"] = error_kinds([e for t, e in errors if t > kill])
        result["by_writer"] = {
            w.name: {"acks": len(w.acks), "errors": len(w.errors)} for w in writers
        }
        if not result["recovered"]:
            log(f"[{mode} run {n}] writes did NOT succeed again through {rto_by_site}")
            result["logs"] = plat.log_tail()

        # the agent's record of the failover
        record: dict[str, Any] | None = None
        db: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            db = plat.db_status()
            found = [
                r
                for r in db.get("recent", [])
                if r.get("kind") == "failover" and float(r.get("promoted_at") or 0) > kill_wall
            ]
            if found:
                record = found[-1]
                break
            time.sleep(0.5)
        result["lease_after"] = db.get("lease")
        result["roles_after"] = {s["site"]: s.get("role") for s in db.get("sites", [])}
        if record is None:
            result["record"] = None
            result["recent"] = db.get("recent")
            result.setdefault("logs", plat.log_tail())
        else:
            result["record"] = record
            result["agent"] = {
                "detected_after_kill": ago(record.get("detected_at"), kill_wall),
                "promoted_after_kill": ago(record.get("promoted_at"), kill_wall),
                "writable_after_kill": ago(record.get("writable_at"), kill_wall),
                "fault_after_kill": ago(record.get("fault_at"), kill_wall),
                "promote_seconds": ago(record.get("promote_seconds"), 0.0),
                "rto_seconds": ago(record.get("rto_seconds"), 0.0),
                "lag_at_fault": record.get("lag_at_fault"),
            }

        # lost acknowledged writes, read through the new primary's endpoint
        holder = (db.get("lease") or {}).get("holder") or SITES[1]
        result["read_through"] = holder
        table: set[int] | None = None
        deadline = time.monotonic() + 30
        last: Exception | None = None
        while time.monotonic() < deadline and table is None:
            try:
                with psycopg.connect(
                    plat.dsn(plat.endpoint(holder)), autocommit=True, connect_timeout=2
                ) as conn:
                    table = {int(r[0]) for r in conn.execute("SELECT id FROM acks").fetchall()}
            except psycopg.Error as exc:
                last = exc
                time.sleep(0.2)
        if table is None:
            raise RuntimeError(f"cannot read the table through {holder}'s endpoint: {last}")
        acked_ids = {a.id for a in acks}
        lost = sorted(acked_ids - table)
        result["rows"] = len(table)
        result["lost"] = len(lost)
        result["lost_ids"] = lost[:50]
        result["lost_acked_after_kill"] = sum(
            1 for a in acks if a.id in set(lost) and a.acked > kill
        )
        result["unacknowledged_rows"] = len(table - acked_ids)
        if lost:
            result.setdefault("logs", plat.log_tail())
        return result
    finally:
        stop.set()
        plat.close()


# -- pgbench -------------------------------------------------------------------------------


def pgbench(
    plat: Platform, host: str, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    binary = pg_bin() / "pgbench"
    env = {
        **os.environ,
        "PGPASSWORD": plat.secrets()["app"],
        "LD_LIBRARY_PATH": str(binary.parent.parent / "lib"),
    }
    cmd = [str(binary), "-h", host, "-p", "5432", "-U", DB, *args, DB]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"pgbench {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def parse_pgbench(out: str) -> dict[str, Any]:
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    latency = re.search(r"latency average = ([\d.]+) ms", out)
    txns = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if not tps:
        raise RuntimeError(f"no tps in pgbench's output:\n{out}")
    return {
        "tps": float(tps.group(1)),
        "latency_ms": float(latency.group(1)) if latency else None,
        "transactions": int(txns.group(1)) if txns else None,
        "failed": int(failed.group(1)) if failed else None,
    }


def pgbench_mode(work: Path, mode: str, seconds: int, rounds: int) -> dict[str, Any]:
    plat = Platform(work / f"pgbench-{mode}", mode)
    try:
        up = plat.up()
        ready = plat.wait_ready()
        log(f"[pgbench {mode}] up in {up:.1f}s, database ready {ready:.1f}s later; pgbench -i -s 5")
        started = time.monotonic()
        pgbench(plat, plat.pg(SITES[0]), "-i", "-s", "5", "-q")
        init_seconds = round(time.monotonic() - started, 2)
        plat.wait_ready()  # in synchronous mode the standby must be synchronous again
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], "endpoint": []}
        hosts = {"direct": plat.pg(SITES[0]), "endpoint": plat.endpoint(SITES[0])}
        for r in range(rounds):
            for way in ("direct", "endpoint"):
                out = pgbench(
                    plat, hosts[way], "-c", "8", "-j", "2", "-T", str(seconds), "-N", "-n"
                ).stdout
                figures = parse_pgbench(out)
                runs[way].append(figures)
                log(
                    f"[pgbench {mode}] round {r + 1} {way:<8} {figures['tps']:>9.1f} tps, "
                    f"latency {figures['latency_ms']} ms, failed {figures['failed']}"
                )
        return {
            "mode": mode,
            "init_seconds": init_seconds,
            "direct_tps": median([x["tps"] for x in runs["direct"]]),
            "endpoint_tps": median([x["tps"] for x in runs["endpoint"]]),
            "direct_latency_ms": median([x["latency_ms"] for x in runs["direct"]]),
            "endpoint_latency_ms": median([x["latency_ms"] for x in runs["endpoint"]]),
            "rounds": runs,
        }
    finally:
        plat.close()


# -- the report ----------------------------------------------------------------------------


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def agent(key: str) -> list[float | None]:
        return [(r.get("agent") or {}).get(key) for r in runs]

    return {
        "runs": len(runs),
        "recovered": sum(1 for r in runs if r.get("recovered")),
        "client_rto": median([r.get("client_rto") for r in runs]),
        "client_rto_max": max((r.get("client_rto") or 0.0 for r in runs), default=None),
        "detected_after_kill": median(agent("detected_after_kill")),
        "promoted_after_kill": median(agent("promoted_after_kill")),
        "writable_after_kill": median(agent("writable_after_kill")),
        "promote_seconds": median(agent("promote_seconds")),
        "agent_rto_seconds": median(agent("rto_seconds")),
        "acknowledged": median([r.get("acknowledged") for r in runs]),
        "errors_after_kill": median([r.get("errors_after_kill") for r in runs]),
        "lost": median([r.get("lost") for r in runs]),
        "lost_total": sum(int(r.get("lost") or 0) for r in runs),
    }


def notes(report: dict[str, Any]) -> list[str]:
    out = []
    for mode, runs in report["failover"]["runs"].items():
        for r in runs:
            tag = f"{mode} run {r['run']}"
            if "error" in r:
                out.append(f"{tag}: failed: {r['error'].splitlines()[0]}")
                continue
            if not r.get("recovered"):
                out.append(f"{tag}: writes did not succeed again through both endpoints")
            elif r["client_rto"] > TARGET_RTO:
                out.append(f"{tag}: client RTO {r['client_rto']:.2f}s > {TARGET_RTO:g}s")
            if r.get("record") is None:
                out.append(f"{tag}: no failover record in `db status --json`")
            if mode == "synchronous" and r.get("lost"):
                out.append(f"{tag}: {r['lost']} acknowledged writes LOST in synchronous mode")
            read_only = sum(v for k, v in (r.get("error_kinds") or {}).items() if "read-only" in k)
            if read_only:
                out.append(
                    f"{tag}: {read_only} writes refused as read-only after the kill (an "
                    "endpoint sent them to the new lease holder before it was promoted)"
                )
            if r.get("stuck_writers"):
                out.append(f"{tag}: writers stuck at the end: {r['stuck_writers']}")
    return out


def print_failover(report: dict[str, Any]) -> None:
    print(
        "failover: kill -9 of the primary's postmaster under 4 writers (2 per site endpoint);\n"
        "times in seconds after the kill; client RTO = first write acknowledged on a new\n"
        "connection, the slower site; agent RTO = the record's rto_seconds (from its fault time)"
    )
    header = (
        f"{'mode':<13}{'run':>4}{'client RTO':>11}{'jakarta':>9}{'surabaya':>9}{'detect':>8}"
        f"{'promote':>8}{'writable':>9}{'agent RTO':>10}{'acked':>8}{'errors':>7}{'late':>6}"
        f"{'lost':>6}{'lag B':>9}"
    )
    print(header)

    def f(value: Any, width: int, digits: int = 2) -> str:
        if value is None:
            return f"{'-':>{width}}"
        if isinstance(value, float):
            return f"{value:>{width}.{digits}f}"
        return f"{value:>{width}}"

    for mode, runs in report["failover"]["runs"].items():
        for r in runs:
            if "error" in r:
                print(f"{mode:<13}{r['run']:>4}  failed: {r['error'].splitlines()[0]}")
                continue
            a = r.get("agent") or {}
            by = r.get("client_rto_by_site") or {}
            lag = (a.get("lag_at_fault") or {}).get("bytes_behind_last_report")
            print(
                f"{mode:<13}{r['run']:>4}{f(r.get('client_rto'), 11)}{f(by.get(SITES[0]), 9)}"
                f"{f(by.get(SITES[1]), 9)}{f(a.get('detected_after_kill'), 8)}"
                f"{f(a.get('promoted_after_kill'), 8)}{f(a.get('writable_after_kill'), 9)}"
                f"{f(a.get('rto_seconds'), 10)}{f(r.get('acknowledged'), 8)}"
                f"{f(r.get('errors_after_kill'), 7)}{f(r.get('late_acks_old_connection'), 6)}"
                f"{f(r.get('lost'), 6)}{f(lag, 9)}"
            )
        s = report["failover"]["summary"].get(mode)
        if s:
            print(
                f"{mode + ' median':<17}{f(s['client_rto'], 11)}{'':>18}"
                f"{f(s['detected_after_kill'], 8)}{f(s['promoted_after_kill'], 8)}"
                f"{f(s['writable_after_kill'], 9)}{f(s['agent_rto_seconds'], 10)}"
                f"{f(s['acknowledged'], 8, 0)}{f(s['errors_after_kill'], 7, 0)}{'':>6}"
                f"{f(s['lost'], 6, 0)}   (lost in all runs: {s['lost_total']})"
            )
    print(f"targets: client RTO <= {TARGET_RTO:g}s; lost 0 in synchronous mode")
    kinds: dict[str, int] = {}
    for runs in report["failover"]["runs"].values():
        for r in runs:
            for k, v in (r.get("error_kinds") or {}).items():
                kinds[k] = kinds.get(k, 0) + v
    if kinds:
        print("client errors after the kill (all runs):")
        for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])[:8]:
            print(f"  {v:>6}  {k}")


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(
        f"machine: {m['cpus']} CPUs, {m['cpu_model']}, {m['kernel']}, Python {m['python']}, "
        f"load average at start {m['load_average_at_start']}"
    )
    print(f"wall time {report['wall_seconds']:.0f}s\n")
    if report["failover"]["runs"]:
        print_failover(report)

    pb = report.get("pgbench") or {}
    if pb.get("modes"):
        print(
            f"\npgbench -c 8 -j 2 -T {pb['seconds']} -N (scale 5), median of {pb['rounds']} "
            "round(s), direct and endpoint interleaved"
        )
        print(
            f"{'mode':<14}{'direct tps':>11}{'endpoint tps':>14}{'endpoint/direct':>17}"
            f"{'direct ms':>11}{'endpoint ms':>13}"
        )
        for mode, x in pb["modes"].items():
            if "error" in x:
                print(f"{mode:<14}failed: {x['error'].splitlines()[0]}")
                continue
            print(
                f"{mode:<14}{x['direct_tps']:>11.1f}{x['endpoint_tps']:>14.1f}"
                f"{x['endpoint_per_direct']:>17.3f}{x['direct_latency_ms']:>11.2f}"
                f"{x['endpoint_latency_ms']:>13.2f}"
            )
        if pb.get("sync_per_async_direct") is not None:
            print(f"synchronous/asynchronous (direct): {pb['sync_per_async_direct']:.3f}")
    if report["notes"]:
        print("\nnotes:")
        for note in report["notes"]:
            print(f"  - {note}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    about = machine()
    runs_per_mode = 1 if args.quick else args.runs
    seconds = 5 if args.quick else args.pgbench_seconds
    rounds = 1 if args.quick else args.pgbench_rounds
    failover: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    bench: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="failover-bench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # PostgreSQL runs as `nobody` under root: it must get in
        if not args.skip_failover:
            for mode in MODES:
                for n in range(1, runs_per_mode + 1):
                    try:
                        r = failover_run(work, mode, n)
                    except Exception as exc:  # a broken run is a finding: keep the others
                        log(f"[{mode} run {n}] FAILED: {exc}")
                        r = {"mode": mode, "run": n, "error": f"{type(exc).__name__}: {exc}"}
                    failover[mode].append(r)
                    if "error" not in r:
                        a = r.get("agent") or {}
                        log(
                            f"[{mode} run {n}] client RTO {r['client_rto']} "
                            f"{r['client_rto_by_site']}; agent detected "
                            f"{a.get('detected_after_kill')}, writable "
                            f"{a.get('writable_after_kill')}, rto_seconds "
                            f"{a.get('rto_seconds')}; acked {r['acknowledged']}, errors "
                            f"{r['errors_after_kill']}, lost {r['lost']} (of which acknowledged "
                            f"after the kill {r['lost_acked_after_kill']}; late acks on old "
                            f"connections {r['late_acks_old_connection']})"
                        )
        if not args.skip_pgbench:
            for mode in MODES:
                try:
                    bench[mode] = pgbench_mode(work, mode, seconds, rounds)
                except Exception as exc:
                    log(f"[pgbench {mode}] FAILED: {exc}")
                    bench[mode] = {"mode": mode, "error": f"{type(exc).__name__}: {exc}"}
        if args.keep_logs:
            dest = Path(args.keep_logs)
            for folder in work.iterdir():
                logs = folder / ".alwayson" / "logs"
                if logs.is_dir():
                    shutil.copytree(logs, dest / folder.name, dirs_exist_ok=True)
    for x in bench.values():
        if "error" not in x:
            x["endpoint_per_direct"] = round(x["endpoint_tps"] / x["direct_tps"], 3)
    sync, asyn = bench.get("synchronous", {}), bench.get("asynchronous", {})
    ratio = None
    if sync.get("direct_tps") and asyn.get("direct_tps"):
        ratio = round(sync["direct_tps"] / asyn["direct_tps"], 3)
    report: dict[str, Any] = {
        "benchmark": "failover",
        "machine": about,
        "quick": args.quick,
        "failover": {
            "writers": 2 * WRITERS_PER_SITE,
            "load_before_kill_seconds": LOAD_BEFORE_KILL,
            "lease": {"ttl": 6.0, "margin": 2.0},
            "targets": {"rto_seconds": TARGET_RTO, "lost_synchronous": 0},
            "summary": {m: summarise(rs) for m, rs in failover.items() if rs},
            "runs": {m: rs for m, rs in failover.items() if rs},
        },
        "pgbench": {
            "seconds": seconds,
            "rounds": rounds,
            "scale": 5,
            "args": f"-c 8 -j 2 -T {seconds} -N",
            "modes": bench,
            "sync_per_async_direct": ratio,
        },
    }
    report["notes"] = notes(report)
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="failover runs per mode")
    parser.add_argument("--pgbench-rounds", type=int, default=2, help="direct+endpoint pairs")
    parser.add_argument("--pgbench-seconds", type=int, default=15, help="pgbench -T")
    parser.add_argument("--quick", action="store_true", help="1 run, pgbench -T 5, 1 round")
    parser.add_argument("--json", action="store_true", help="print one JSON document at the end")
    parser.add_argument("--skip-failover", action="store_true")
    parser.add_argument("--skip-pgbench", action="store_true")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy every platform's logs here")
    parser.add_argument("--save", metavar="FILE", help="also write the JSON document here")
    args = parser.parse_args()

    return finish(args, run, print_report)


if __name__ == "__main__":
    sys.exit(main())
