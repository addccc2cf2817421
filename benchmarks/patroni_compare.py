"""alwayson against Patroni: kill -9 of the primary's whole site, same machine, same run.

    .venv/bin/python benchmarks/patroni_compare.py [--runs 3] [--patroni-ttl 20 30] [--json]

Issue 14's last target. Both systems run on this machine in the same invocation, runs
interleaved (alwayson, then Patroni at each ttl, then the next round), with the same
PostgreSQL binaries (the pgserver wheel's, ``benchmarks/failover.py`` ``pg_bin()``), the same
etcd (Debian's ``/usr/bin/etcd``, three members, one per "site", started with alwayson's own
command line ``store/members.py`` ``member_argv``: mutual TLS on 2379/2380, heartbeat 100 ms,
election 1 s) and the same clients.

**alwayson**: a fresh platform (``benchmarks/failover.py`` ``Platform``): jakarta (primary),
surabaya, witness, one synchronous database ``bank``, no services, lease ttl 6 s / margin
2 s (the defaults). **The fault**: ``POST /api/v1/sites/jakarta/lose`` on the controller's
API, the call the site-loss drill makes: the controller holds the site down (it would
otherwise restart what died) and SIGKILLs every process it runs there (agent, etcd member,
gateway, front door, each with its descendants) and PostgreSQL's whole tree by the pid in
``postmaster.pid``. The kill time is taken *before* the request is sent, so the API's own
latency counts against alwayson. The controller runs outside the sites (127.0.0.1) on main
and is not killed; it takes no part in a failover (the agents and etcd do).

**Patroni** (PyPI, installed at run time into ``/tmp/patroni-venv``, created from this
Python's base interpreter because PostgreSQL and Patroni run as ``nobody`` and /root is
closed to it; kept between runs): three etcd members on private loopback subnets, two
Patroni nodes (jakarta, surabaya), each managing a PostgreSQL (``postgresql.bin_dir`` = the
same binaries), etcd3 over the same mutual TLS, ``synchronous_mode: true``, ``ttl`` per
``--patroni-ttl`` (20 is Patroni's minimum, 30 its default), ``loop_wait`` 10 and
``retry_timeout`` 10 (defaults; Patroni lowers them itself when ``loop_wait + 2 *
retry_timeout > ttl``: what it used is read from its log and reported), REST API on
loopback, no watchdog, no failsafe mode. PostgreSQL settings as alwayson's
(``data/settings.py``: shared_buffers 32MB, wal_sender/receiver_timeout 10s, status interval
1s, hot_standby_feedback, wal_log_hints, checksums, scram-sha-256) except WAL archiving
(alwayson archives to its backup folder; Patroni has none here). **The fault**: SIGKILL of
jakarta's Patroni, its PostgreSQL (postmaster and children, by the process groups of the
recorded pids) and its etcd member, in one loop (well under a millisecond).

**Clients** (the same for both): 4 writers (psycopg 3, ``benchmarks/failover.py`` ``Writer``:
one autocommit connection each, ``connect_timeout=2``, 20 ms back-off after an error)
inserting increasing unique ids and noting every acknowledged one. Both use a libpq
multi-host DSN with ``target_session_attrs=read-write``, two writers jakarta first, two
surabaya first: for alwayson the hosts are the two sites' endpoints (127.N.0.11, either
of which reaches the primary), for Patroni the two PostgreSQL servers (Patroni has no
endpoint of its own: clients find the primary themselves, or through HAProxy polling its
REST API, which this benchmark does not add). After 3 s of load the fault; writing goes on
until every writer has had writes acknowledged again for 2 s.

**The etcd raft leader** is placed before each fault with etcd's MoveLeader (``--etcd-leader``,
default both): on the witness's member, or on the killed site's. It matters to both systems:
a new raft leader re-grants every etcd lease its full ttl plus an election timeout (etcd's
``lessor.Promote``), so when the killed site held the raft leader, both leader keys outlive
the kill by about an election plus a whole ttl instead of the ttl left since the last renewal.

Figures per run:

- ``client RTO``: for each half of the writers (jakarta first / surabaya first), seconds
  from the kill to the first write acknowledged on a connection opened after the kill; the
  larger of the two (as ``benchmarks/failover.py``);
- ``write gap``: the longest time without any acknowledged write around the kill;
- ``lost``: acknowledged ids missing from the table as read on the new primary (target 0);
- errors after the kill, and each system's own record: alwayson's failover record (``db
  status --json``), Patroni's log (when it saw the leader key gone, when it promoted) and
  its ``/history``; and which etcd member led the raft at the kill.

``--json`` prints one JSON document; ``--save FILE`` writes it too; ``--keep-logs DIR``
copies every run's logs. Everything started is stopped by pid in ``finally`` blocks
(alwayson: ``alwayson down``, then what its state directory records; Patroni: etcd,
Patroni and every postmaster seen, by their process groups, checked against start times),
on failure and Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from reporting import finish

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmarks.failover and the tests' helpers
from benchmarks.failover import (  # noqa: E402
    BACKOFF,
    DB,
    SITES,
    TABLE,
    WITNESS,
    Platform,
    Writer,
    ago,
    error_kinds,
    log,
    median,
    pg_bin,
)
from benchmarks.releases import machine  # noqa: E402
from tests.support import reserve_subnet  # noqa: E402

from alwayson.store.members import Member, member_argv  # noqa: E402
from alwayson.util.certs import CLIENT, TlsFiles, client_files, ensure_leaf, leaf_paths  # noqa: E402

ETCD = "/usr/bin/etcd"
VENV = Path("/tmp/patroni-venv")
PATRONI_PACKAGE = "patroni[etcd3,psycopg3]"
WRITERS_PER_SIDE = 2
LOAD_BEFORE_KILL = 3.0
PHASE_SPREAD = 10.0  # plus a random 0-10 s: the kill falls anywhere in a renewal period
RECOVERED_FOR = 2.0
RECOVERY_LIMIT = 120.0
TARGET_RTO = 10.0
PG_USER = "nobody"  # what alwayson runs PostgreSQL as when it is root (data/engines.py)
SCOPE = "bench"
APP_USER = DB
PG_SETTINGS: dict[str, Any] = {  # alwayson's (data/settings.py), archiving left out
    "max_connections": 200,
    "shared_buffers": "32MB",
    "wal_level": "replica",
    "max_wal_senders": 8,
    "max_replication_slots": 8,
    "max_slot_wal_keep_size": "1GB",
    "wal_keep_size": "64MB",
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    "wal_log_hints": "on",
    "wal_receiver_status_interval": "1s",
    "wal_sender_timeout": "10s",
    "wal_receiver_timeout": "10s",
    "password_encryption": "scram-sha-256",
    "synchronous_commit": "on",
    "log_min_messages": "warning",
}


# -- what both systems share: the writers, the fault's clock, the figures -----------------


def multi_dsn(hosts: list[str], user: str, password: str) -> str:
    return (
        f"host={','.join(hosts)} port=5432 user={user} password={password} dbname={DB} "
        "target_session_attrs=read-write"
    )


def etcd_leader(hosts: list[str], http: httpx.Client) -> str | None:
    """Which member leads the raft (``etcd_server_is_leader`` on each metrics port)."""
    for site, host in zip((*SITES, WITNESS), hosts, strict=True):
        with contextlib.suppress(httpx.HTTPError):
            text = http.get(f"http://{host}:2381/metrics", timeout=1.0).text
            if re.search(r"^etcd_server_is_leader 1", text, re.M):
                return site
    return None


def move_etcd_leader(hosts: list[str], tls: TlsFiles, to: str) -> str | None:
    """Make ``to``'s member lead the raft (etcd's MoveLeader through its JSON gateway, sent
    to the current leader), so that both systems meet the same raft leader placement;
    the leader found afterwards."""
    by_site = dict(zip((*SITES, WITNESS), hosts, strict=True))
    context = ssl.create_default_context(cafile=str(tls.ca))
    context.load_cert_chain(str(tls.cert), str(tls.key))
    with httpx.Client(verify=context, timeout=5.0, trust_env=False) as http:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            leader = etcd_leader(hosts, http)
            if leader == to:
                return leader
            if leader is not None:
                members = http.post(
                    f"https://{by_site[leader]}:2379/v3/cluster/member/list", json={}
                )
                target = next(m["ID"] for m in members.json()["members"] if m["name"] == to)
                with contextlib.suppress(httpx.HTTPError):
                    http.post(
                        f"https://{by_site[leader]}:2379/v3/maintenance/transfer-leadership",
                        json={"targetID": target},
                    )
            time.sleep(0.2)
        return etcd_leader(hosts, http)


def drive(
    tag: str,
    dsns: dict[str, str],
    fault: Callable[[], tuple[float, float, dict[str, Any]]],
    spread: float = PHASE_SPREAD,
) -> tuple[dict[str, Any], list[Writer], float, float]:
    """Write through ``dsns`` (side -> DSN, WRITERS_PER_SIDE writers each), call ``fault``
    after LOAD_BEFORE_KILL plus a random part of ``spread`` (it returns the kill's monotonic
    and wall times and what it did), then write on until every writer has written again for
    RECOVERED_FOR. The random part keeps the kill from falling at the same point of a
    renewal period each run: the benchmark's own steps before it (waiting for the standby
    to be synchronous, which Patroni sets in one of its loops) would otherwise lock it."""
    stop = threading.Event()
    ids, lock = itertools.count(1), threading.Lock()
    writers = [
        Writer(f"{side}-{k}", side, dsn, ids, lock, stop)
        for side, dsn in dsns.items()
        for k in range(WRITERS_PER_SIDE)
    ]
    result: dict[str, Any] = {}
    try:
        for w in writers:
            w.start()
        load = LOAD_BEFORE_KILL + random.uniform(0.0, spread)
        result["load_before_kill"] = round(load, 2)
        time.sleep(load)
        before = sum(len(w.acks) for w in writers)
        if before == 0:
            errors = [e for w in writers for _, e in w.errors]
            raise RuntimeError(f"no write acknowledged before the fault: {errors[:3]}")
        kill, kill_wall, fault_info = fault()
        result["fault"] = fault_info
        result["kill_wall"] = kill_wall
        log(f"[{tag}] {before} writes acknowledged before the kill")
        recovered: dict[str, float | None] = {}
        while time.monotonic() - kill < RECOVERY_LIMIT:
            recovered = {w.name: w.recovered_at(kill) for w in writers}
            if all(recovered.values()):
                latest = max(t for t in recovered.values() if t is not None)
                if time.monotonic() >= latest + RECOVERED_FOR:
                    break
            time.sleep(0.05)
    finally:
        stop.set()
    stuck = []
    for w in writers:
        if w.thread is not None:
            w.thread.join(timeout=15)
            if w.thread.is_alive():
                stuck.append(w.name)
    result["stuck_writers"] = stuck
    by_writer = {w.name: ago(w.recovered_at(kill), kill) for w in writers}
    by_side: dict[str, float | None] = {}
    for side in dsns:
        present = [v for w, v in by_writer.items() if w.startswith(f"{side}-") and v is not None]
        by_side[side] = min(present) if present else None
    result["recovered"] = all(v is not None for v in by_writer.values())
    result["client_rto_by_side"] = by_side
    result["client_rto_by_writer"] = by_writer
    sides = [v for v in by_side.values() if v is not None]
    result["client_rto"] = max(sides) if len(sides) == len(by_side) else None
    result["first_write_after_kill"] = min(sides) if sides else None
    acks = sorted((a for w in writers for a in w.acks), key=lambda a: a.acked)
    errors = [(t, e) for w in writers for t, e in w.errors]
    result["acknowledged"] = len(acks)
    result["acknowledged_before_kill"] = sum(1 for a in acks if a.acked <= kill)
    result["late_acks_old_connection"] = sum(
        1 for a in acks if a.acked > kill and a.conn_opened < kill
    )
    last_before = max((a.acked for a in acks if a.acked <= kill), default=None)
    first_after = min((a.acked for a in acks if a.acked > kill), default=None)
    late = [a.acked for a in acks if a.acked > kill and a.conn_opened < kill]
    gap_start = max([t for t in (last_before, *late) if t is not None], default=None)
    new_conn = [a.acked for a in acks if a.conn_opened > kill]
    result["write_gap"] = (
        round(min(new_conn) - gap_start, 3) if new_conn and gap_start is not None else None
    )
    result["last_ack_before_kill"] = ago(last_before, kill)
    result["first_ack_after_kill"] = ago(first_after, kill)
    result["errors_before_kill"] = sum(1 for t, _ in errors if t <= kill)
    result["errors_after_kill"] = sum(1 for t, _ in errors if t > kill)
    result["error_kinds"] = error_kinds([e for t, e in errors if t > kill])
    return result, writers, kill, kill_wall


def count_lost(result: dict[str, Any], writers: list[Writer], kill: float, dsn: str) -> None:
    """Read the table on the new primary (``dsn`` finds it) and count acknowledged ids
    missing from it."""
    table: set[int] | None = None
    last: Exception | None = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and table is None:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
                table = {int(r[0]) for r in conn.execute("SELECT id FROM acks").fetchall()}
                result["read_on"] = f"{conn.info.host}:{conn.info.port}"
        except psycopg.Error as exc:
            last = exc
            time.sleep(0.2)
    if table is None:
        raise RuntimeError(f"cannot read the table on the new primary: {last}")
    acks = [a for w in writers for a in w.acks]
    acked = {a.id for a in acks}
    lost = sorted(acked - table)
    result["rows"] = len(table)
    result["lost"] = len(lost)
    result["lost_ids"] = lost[:50]
    result["lost_acked_after_kill"] = sum(1 for a in acks if a.id in set(lost) and a.acked > kill)
    result["unacknowledged_rows"] = len(table - acked)


# -- alwayson ------------------------------------------------------------------------------


def alwayson_run(
    work: Path, n: int, placement: str, keep_logs: Path | None, spread: float = PHASE_SPREAD
) -> dict[str, Any]:
    tag = f"alwayson, etcd leader {placement}, run {n}"
    plat = Platform(work / f"alwayson-{placement}-{n}", "synchronous")
    result: dict[str, Any] = {"system": "alwayson", "run": n, "etcd_leader": placement}
    http = httpx.Client(timeout=10.0, trust_env=False)
    try:
        result["up_seconds"] = round(plat.up(), 2)
        result["ready_seconds"] = round(plat.wait_ready(), 2)
        log(
            f"[{tag}] up in {result['up_seconds']:.1f}s, ready {result['ready_seconds']:.1f}s later"
        )
        with psycopg.connect(
            plat.dsn(plat.endpoint(SITES[0])), autocommit=True, connect_timeout=5
        ) as conn:
            conn.execute(TABLE)
        password = plat.secrets()["app"]
        ends = [plat.endpoint(s) for s in SITES]
        dsns = {
            SITES[0]: multi_dsn(ends, DB, password),
            SITES[1]: multi_dsn(ends[::-1], DB, password),
        }
        api = f"http://{plat.data['controller']['api']}"
        token = (plat.state_dir / "token").read_text().strip()
        etcd_hosts = [f"127.{plat.octets[s]}.0.5" for s in (*SITES, WITNESS)]
        if placement != "any":
            moved = move_etcd_leader(etcd_hosts, leaf_paths(plat.state_dir, CLIENT), placement)
            if moved != placement:
                raise RuntimeError(f"the etcd leader is {moved}, not {placement}")

        def fault() -> tuple[float, float, dict[str, Any]]:
            leader = etcd_leader(etcd_hosts, http)
            kill, kill_wall = time.monotonic(), time.time()
            response = http.post(
                f"{api}/api/v1/sites/{SITES[0]}/lose",
                json={"drill": "patroni-compare"},
                headers={"Authorization": f"Bearer {token}"},
            )
            answered = time.monotonic()
            response.raise_for_status()
            killed = response.json().get("killed", [])
            log(
                f"[{tag}] site {SITES[0]} lost through the API in {answered - kill:.3f}s: "
                f"{len(killed)} processes SIGKILLed; etcd leader was {leader}"
            )
            return (
                kill,
                kill_wall,
                {
                    "how": f"POST /api/v1/sites/{SITES[0]}/lose (the site-loss drill's call)",
                    "api_seconds": round(answered - kill, 3),
                    "killed": killed,
                    "etcd_leader_at_kill": leader,
                },
            )

        figures, writers, kill, kill_wall = drive(tag, dsns, fault, spread)
        result.update(figures)

        record: dict[str, Any] | None = None
        db: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired, ValueError):
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
        result["roles_after"] = {s["site"]: s.get("role") for s in db.get("sites", [])}
        result["record"] = record
        if record is not None:
            result["own"] = {
                "fault_after_kill": ago(record.get("fault_at"), kill_wall),
                # fault_at is the old primary's last renewal as the record reckons it
                "last_renewal_before_kill": ago(kill_wall, float(record.get("fault_at") or 0)),
                "detected_after_kill": ago(record.get("detected_at"), kill_wall),
                "promoted_after_kill": ago(record.get("promoted_at"), kill_wall),
                "writable_after_kill": ago(record.get("writable_at"), kill_wall),
                "rto_seconds": ago(record.get("rto_seconds"), 0.0),
            }
        count_lost(result, writers, kill, dsns[SITES[1]])
        if result.get("lost") or not result.get("recovered"):
            result["logs"] = plat.log_tail()
        return result
    finally:
        http.close()
        if keep_logs is not None:
            with contextlib.suppress(OSError):
                shutil.copytree(
                    plat.state_dir / "logs", keep_logs / plat.folder.name, dirs_exist_ok=True
                )
        plat.close()


# -- Patroni -------------------------------------------------------------------------------


def ensure_patroni() -> dict[str, str]:
    """Patroni in VENV (made once, kept between runs), runnable by PG_USER; its version."""
    patroni = VENV / "bin" / "patroni"
    if not patroni.exists():
        base = Path(sys.base_prefix) / "bin" / "python3"
        log(f"installing {PATRONI_PACKAGE} into {VENV} (from {base})")
        subprocess.run([str(base), "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "-q", PATRONI_PACKAGE],
            check=True,
            stdin=subprocess.DEVNULL,
        )
    who = pwd.getpwnam(PG_USER) if os.geteuid() == 0 else None
    found = subprocess.run(
        [str(patroni), "--version"],
        capture_output=True,
        text=True,
        check=True,
        user=who.pw_uid if who else None,
        group=who.pw_gid if who else None,
        cwd="/",
    ).stdout.strip()
    etcd = subprocess.run([ETCD, "--version"], capture_output=True, text=True, check=True)
    postgres = subprocess.run(
        [str(pg_bin() / "postgres"), "--version"], capture_output=True, text=True, check=True
    )
    return {
        "patroni": found,
        "etcd": etcd.stdout.splitlines()[0],
        "postgresql": postgres.stdout.strip(),
        "pg_bin": str(pg_bin()),
    }


class Tracked:
    """A process this benchmark owns: killed by its process group, checked by start time."""

    def __init__(self, pid: int, what: str, popen: subprocess.Popen[bytes] | None = None):
        self.pid = pid
        self.what = what
        self.popen = popen
        self.start = psutil.Process(pid).create_time()

    def alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return abs(proc.create_time() - self.start) < 0.05 and proc.status() != "zombie"
        except psutil.Error:
            return False

    def kill(self) -> list[int]:
        """SIGKILL the process, its process group and its descendants; the pids hit."""
        if not self.alive():
            return []
        try:
            below = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            below = []
        hit = [self.pid]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # each was started as a session leader
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        for child in below:
            with contextlib.suppress(psutil.Error):
                child.kill()
                hit.append(child.pid)
        return hit

    def reap(self) -> None:
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=10)


class PatroniCluster:
    """Three etcd members and two Patroni nodes in ``folder``; ``close()`` kills all by pid."""

    def __init__(self, folder: Path, ttl: int, loop_wait: int = 10, retry_timeout: int = 10):
        folder.mkdir(mode=0o755, parents=True)
        self.folder = folder
        self.ttl, self.loop_wait, self.retry_timeout = ttl, loop_wait, retry_timeout
        self.octets = {name: reserve_subnet() for name in (*SITES, WITNESS)}
        self.who = pwd.getpwnam(PG_USER) if os.geteuid() == 0 else None
        self.members = [
            Member(s, f"127.{self.octets[s]}.0.5", folder / "etcd" / s) for s in (*SITES, WITNESS)
        ]
        self.etcd: dict[str, Tracked] = {}
        self.patroni: dict[str, Tracked] = {}
        self.postmasters: dict[str, list[Tracked]] = {s: [] for s in SITES}
        self.passwords = {k: secrets.token_hex(12) for k in ("superuser", "replication", "app")}
        self.http = httpx.Client(timeout=2.0, trust_env=False)
        (folder / "logs").mkdir()

    # addresses: as alwayson's layout (.5 etcd, .10 PostgreSQL); .8 Patroni's REST API

    def pg(self, site: str) -> str:
        return f"127.{self.octets[site]}.0.10"

    def rest(self, site: str) -> str:
        return f"http://127.{self.octets[site]}.0.8:8008"

    def node_dir(self, site: str) -> Path:
        return self.folder / site

    def data_dir(self, site: str) -> Path:
        return self.node_dir(site) / "pgdata"

    def log_path(self, name: str) -> Path:
        return self.folder / "logs" / f"{name}.log"

    def dsn(self, first: str) -> str:
        hosts = [self.pg(first), *(self.pg(s) for s in SITES if s != first)]
        return multi_dsn(hosts, APP_USER, self.passwords["app"])

    def superuser_dsn(self, site: str) -> str:
        return (
            f"host={self.pg(site)} port=5432 user=postgres "
            f"password={self.passwords['superuser']} dbname=postgres"
        )

    def _own(self, path: Path) -> None:
        if self.who is not None:
            os.chown(path, self.who.pw_uid, self.who.pw_gid)

    # etcd

    def start_etcd(self) -> None:
        pki = self.folder / "pki-state"
        for member in self.members:
            tls = ensure_leaf(pki, "patroni-bench", f"etcd-{member.name}", [member.host])
            argv = member_argv(ETCD, member, self.members, tls, f"patroni-bench-{self.ttl}")
            with self.log_path(f"etcd@{member.name}").open("ab") as out:
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.etcd[member.name] = Tracked(popen.pid, f"etcd@{member.name}", popen)
        deadline = time.monotonic() + 60
        for member in self.members:
            while True:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    health = self.http.get(f"{member.metrics_url}/health").json()
                    if health.get("health") == "true":
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd@{member.name} not healthy; see its log")
                time.sleep(0.1)
        self.client_tls = client_files(pki, "patroni-bench")

    # Patroni

    def config(self, site: str) -> dict[str, Any]:
        node = self.node_dir(site)
        own_first = sorted(self.members, key=lambda m: m.name != site)
        return {
            "scope": SCOPE,
            "namespace": "/service/",
            "name": site,
            "log": {"level": "INFO", "format": "%(created).3f %(levelname)s: %(message)s"},
            "restapi": {
                "listen": f"127.{self.octets[site]}.0.8:8008",
                "connect_address": f"127.{self.octets[site]}.0.8:8008",
            },
            "etcd3": {
                "hosts": [m.endpoint for m in own_first],
                "protocol": "https",
                "cacert": str(node / "ca.pem"),
                "cert": str(node / "client.pem"),
                "key": str(node / "client.key"),
            },
            "bootstrap": {
                "dcs": {
                    "ttl": self.ttl,
                    "loop_wait": self.loop_wait,
                    "retry_timeout": self.retry_timeout,
                    "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": True,
                    "postgresql": {"use_pg_rewind": True, "parameters": PG_SETTINGS},
                },
                "initdb": [
                    {"encoding": "UTF8"},
                    {"locale": "C"},
                    {"auth": "scram-sha-256"},
                    "data-checksums",
                ],
            },
            "postgresql": {
                "listen": f"{self.pg(site)}:5432",
                "connect_address": f"{self.pg(site)}:5432",
                "data_dir": str(self.data_dir(site)),
                "bin_dir": str(pg_bin()),
                "pgpass": str(node / "pgpass"),
                "basebackup": [{"checkpoint": "fast"}],  # as alwayson clones a standby
                "authentication": {
                    "superuser": {"username": "postgres", "password": self.passwords["superuser"]},
                    "replication": {
                        "username": "replicator",
                        "password": self.passwords["replication"],
                    },
                },
                "parameters": {"unix_socket_directories": str(node)},
                "pg_hba": [
                    "local all all trust",
                    "host replication replicator 127.0.0.0/8 scram-sha-256",
                    "host all all 127.0.0.0/8 scram-sha-256",
                ],
            },
            "watchdog": {"mode": "off"},
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
        }

    def start_patroni(self, site: str) -> None:
        node = self.node_dir(site)
        node.mkdir(mode=0o700)
        self._own(node)
        for name, source in (
            ("ca.pem", self.client_tls.ca),
            ("client.pem", self.client_tls.cert),
            ("client.key", self.client_tls.key),
        ):
            shutil.copyfile(source, node / name)
            (node / name).chmod(0o600)
            self._own(node / name)
        path = node / "patroni.yml"  # JSON is YAML
        path.write_text(json.dumps(self.config(site), indent=1))
        path.chmod(0o600)
        self._own(path)
        env = {"PATH": f"{pg_bin()}:/usr/bin:/bin", "HOME": str(node), "LC_ALL": "C.UTF-8"}
        with self.log_path(f"patroni@{site}").open("ab") as out:
            popen = subprocess.Popen(
                [str(VENV / "bin" / "patroni"), str(path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(node),
                env=env,
                user=self.who.pw_uid if self.who else None,
                group=self.who.pw_gid if self.who else None,
                start_new_session=True,
            )
        self.patroni[site] = Tracked(popen.pid, f"patroni@{site}", popen)

    def note_postmaster(self, site: str) -> Tracked | None:
        """The postmaster in ``postmaster.pid`` (first line), remembered for cleanup."""
        try:
            pid = int((self.data_dir(site) / "postmaster.pid").read_text().split()[0])
            proc = psutil.Process(pid)
            if proc.name() != "postgres":
                return None
            for known in self.postmasters[site]:
                if known.pid == pid and abs(known.start - proc.create_time()) < 0.05:
                    return known
            found = Tracked(pid, f"postgres@{site}")
        except (OSError, ValueError, IndexError, psutil.Error):
            return None
        self.postmasters[site].append(found)
        return found

    def rest_status(self, site: str, path: str) -> int:
        try:
            return self.http.get(f"{self.rest(site)}{path}").status_code
        except httpx.HTTPError:
            return 0

    def wait(self, what: str, check: Callable[[], bool], timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            for site, proc in self.patroni.items():
                if not proc.alive():
                    tail = self.log_path(f"patroni@{site}").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"patroni@{site} exited while waiting for {what}:\n{tail}")
            with contextlib.suppress(psycopg.Error, httpx.HTTPError, OSError):
                if check():
                    return time.monotonic() - started
            time.sleep(0.2)
        raise RuntimeError(f"Patroni: no {what} within {timeout:g}s; see {self.folder}/logs")

    def up(self) -> float:
        started = time.monotonic()
        self.start_etcd()
        self.start_patroni(SITES[0])
        self.wait("primary on jakarta", lambda: self.rest_status(SITES[0], "/primary") == 200, 120)
        self.note_postmaster(SITES[0])
        with psycopg.connect(self.superuser_dsn(SITES[0]), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{self.passwords['app']}'")
            conn.execute(f"CREATE DATABASE {DB} OWNER {APP_USER}")
        self.start_patroni(SITES[1])
        self.wait("synchronous standby", self.synchronous, 180)
        self.note_postmaster(SITES[1])
        with psycopg.connect(self.dsn(SITES[0]), autocommit=True, connect_timeout=5) as conn:
            conn.execute(TABLE)
        return time.monotonic() - started

    def synchronous(self) -> bool:
        """surabaya streams as the synchronous standby (Patroni's /sync, pg_stat_replication)."""
        if self.rest_status(SITES[1], "/sync") != 200:
            return False
        with psycopg.connect(self.superuser_dsn(SITES[0]), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT application_name, state, sync_state FROM pg_stat_replication"
            ).fetchall()
        return (SITES[1], "streaming", "sync") in {tuple(r) for r in rows}

    def effective_timing(self) -> dict[str, Any]:
        """ttl, loop_wait, retry_timeout as Patroni used them: the stored configuration, and
        the adjustment it logs when ``loop_wait + 2 * retry_timeout > ttl``."""
        out: dict[str, Any] = {
            "ttl": self.ttl,
            "loop_wait": self.loop_wait,
            "retry_timeout": self.retry_timeout,
        }
        with contextlib.suppress(httpx.HTTPError, ValueError):
            stored = self.http.get(f"{self.rest(SITES[0])}/config").json()
            out["stored"] = {k: stored.get(k) for k in ("ttl", "loop_wait", "retry_timeout")}
        text = self.log_path(f"patroni@{SITES[0]}").read_text(errors="replace")
        found = re.search(r"Violated the rule[^\n]*", text)
        if found:
            out["adjusted"] = found.group(0)
            loop = re.search(r"loop_wait from \d+ to (\d+)", found.group(0))
            retry = re.search(r"retry_timeout from \d+ to (\d+)", found.group(0))
            if loop:
                out["loop_wait"] = int(loop.group(1))
            if retry:
                out["retry_timeout"] = int(retry.group(1))
        return out

    def kill_site(self, site: str) -> tuple[float, float, dict[str, Any]]:
        """SIGKILL the site's Patroni, PostgreSQL (group and descendants) and etcd member."""
        targets = [self.patroni[site], self.etcd[site]]
        postmaster = self.note_postmaster(site)
        if postmaster is None:
            raise RuntimeError(f"no postmaster found for {site}")
        targets.append(postmaster)
        kill, kill_wall = time.monotonic(), time.time()
        hit: list[dict[str, Any]] = []
        for t in targets:
            hit += [
                {"pid": p, "what": t.what if p == t.pid else f"{t.what} child"} for p in t.kill()
            ]
        done = time.monotonic()
        return (
            kill,
            kill_wall,
            {"how": "SIGKILL by pid", "kill_seconds": round(done - kill, 4), "killed": hit},
        )

    def log_lines(self, site: str, since: float) -> list[tuple[float, str]]:
        out = []
        text = self.log_path(f"patroni@{site}").read_text(errors="replace")
        for line in text.splitlines():
            head = re.match(r"^(\d{9,}\.\d+) (.*)$", line)
            if head and float(head.group(1)) >= since:
                out.append((float(head.group(1)), head.group(2)))
        return out

    def last_renewal(self, site: str, kill_wall: float) -> float | None:
        """Seconds from the old leader's last logged leader-key update to the kill."""
        last = None
        for at, text in self.log_lines(site, kill_wall - 60):
            if at <= kill_wall and "the leader with the lock" in text:
                last = at
        return None if last is None else round(kill_wall - last, 3)

    def own_record(self, site: str, kill_wall: float) -> dict[str, Any]:
        """What Patroni itself shows of the failover: its log and ``/history``."""
        lines = self.log_lines(site, kill_wall)

        def first(pattern: str) -> float | None:
            for at, text in lines:
                if re.search(pattern, text):
                    return round(at - kill_wall, 3)
            return None

        out: dict[str, Any] = {
            # the leader key gone: Patroni asks the old leader's REST API before its race
            "detected_after_kill": first(r"Request failed to \w+: GET|Lock owner: None"),
            "promoted_after_kill": first(r"promoted self to leader"),
            "leader_after_kill": first(r"I am \(\w+\), the leader with the lock"),
            "log": [
                f"{round(at - kill_wall, 3):+.3f} {text[:300]}"
                for at, text in lines
                if not text.startswith("INFO: no action.")
            ][:40],
        }
        with contextlib.suppress(httpx.HTTPError, ValueError):
            history = self.http.get(f"{self.rest(site)}/history").json()
            out["history_last"] = history[-1] if history else None
        with contextlib.suppress(httpx.HTTPError, ValueError):
            status = self.http.get(f"{self.rest(site)}/patroni").json()
            out["role_after"] = status.get("role")
            out["timeline_after"] = status.get("timeline")
        return out

    def close(self) -> None:
        self.http.close()
        killed: list[int] = []
        for site in SITES:
            self.note_postmaster(site)
        everything = [
            *self.patroni.values(),
            *(p for ps in self.postmasters.values() for p in ps),
            *self.etcd.values(),
        ]
        for proc in everything:
            killed += proc.kill()
        for proc in everything:
            proc.reap()
        if killed:
            log(f"[patroni] stopped by pid: {sorted(set(killed))}")


def patroni_run(
    work: Path,
    ttl: int,
    n: int,
    placement: str,
    keep_logs: Path | None,
    spread: float = PHASE_SPREAD,
) -> dict[str, Any]:
    tag = f"patroni ttl {ttl}, etcd leader {placement}, run {n}"
    cluster = PatroniCluster(work / f"patroni-ttl{ttl}-{placement}-{n}", ttl)
    result: dict[str, Any] = {
        "system": f"patroni ttl {ttl}",
        "run": n,
        "ttl": ttl,
        "etcd_leader": placement,
    }
    try:
        result["up_seconds"] = round(cluster.up(), 2)
        result["timing"] = cluster.effective_timing()
        log(f"[{tag}] up and synchronous in {result['up_seconds']:.1f}s; {result['timing']}")
        etcd_hosts = [m.host for m in cluster.members]
        if placement != "any":
            moved = move_etcd_leader(etcd_hosts, cluster.client_tls, placement)
            if moved != placement:
                raise RuntimeError(f"the etcd leader is {moved}, not {placement}")

        def fault() -> tuple[float, float, dict[str, Any]]:
            leader = etcd_leader(etcd_hosts, cluster.http)
            kill, kill_wall, info = cluster.kill_site(SITES[0])
            info["etcd_leader_at_kill"] = leader
            log(
                f"[{tag}] site {SITES[0]} killed in {info['kill_seconds']}s: "
                f"{len(info['killed'])} processes; etcd leader was {leader}"
            )
            return kill, kill_wall, info

        dsns = {s: cluster.dsn(s) for s in SITES}
        figures, writers, kill, kill_wall = drive(tag, dsns, fault, spread)
        result.update(figures)
        result["own"] = cluster.own_record(SITES[1], kill_wall)
        result["own"]["last_renewal_before_kill"] = cluster.last_renewal(SITES[0], kill_wall)
        count_lost(result, writers, kill, dsns[SITES[1]])
        return result
    finally:
        if keep_logs is not None:
            with contextlib.suppress(OSError):
                shutil.copytree(
                    cluster.folder / "logs", keep_logs / cluster.folder.name, dirs_exist_ok=True
                )
        cluster.close()


# -- the report ----------------------------------------------------------------------------


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]

    def own(key: str) -> list[float | None]:
        return [(r.get("own") or {}).get(key) for r in ok]

    return {
        "runs": len(runs),
        "failed": len(runs) - len(ok),
        "recovered": sum(1 for r in ok if r.get("recovered")),
        "client_rto": median([r.get("client_rto") for r in ok]),
        "client_rto_min": min((r["client_rto"] for r in ok if r.get("client_rto")), default=None),
        "client_rto_max": max((r["client_rto"] for r in ok if r.get("client_rto")), default=None),
        "write_gap": median([r.get("write_gap") for r in ok]),
        "detected_after_kill": median(own("detected_after_kill")),
        "promoted_after_kill": median(own("promoted_after_kill")),
        "own_rto_seconds": median(own("rto_seconds")),
        "own_fault_after_kill": median(own("fault_after_kill")),
        "acknowledged": median([r.get("acknowledged") for r in ok]),
        "errors_after_kill": median([r.get("errors_after_kill") for r in ok]),
        "lost_total": sum(int(r.get("lost") or 0) for r in ok),
    }


def notes(report: dict[str, Any]) -> list[str]:
    out = []
    for system, runs in report["runs"].items():
        for r in runs:
            tag = f"{system} run {r['run']}"
            if "error" in r:
                out.append(f"{tag}: failed: {r['error'].splitlines()[0]}")
                continue
            if not r.get("recovered"):
                out.append(f"{tag}: not every writer wrote again within {RECOVERY_LIMIT:g}s")
            if r.get("lost"):
                out.append(f"{tag}: {r['lost']} acknowledged writes LOST (synchronous mode)")
            if r.get("system") == "alwayson" and r.get("record") is None:
                out.append(f"{tag}: no failover record in `db status --json`")
            if r.get("stuck_writers"):
                out.append(f"{tag}: writers stuck at the end: {r['stuck_writers']}")
    return out


def fmt(value: Any, width: int, digits: int = 2) -> str:
    if value is None:
        return f"{'-':>{width}}"
    if isinstance(value, float):
        return f"{value:>{width}.{digits}f}"
    return f"{value:>{width}}"


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(
        f"machine: {m['cpus']} CPUs, {m['cpu_model']}, {m['kernel']}, Python {m['python']}, "
        f"load average at start {m['load_average_at_start']}"
    )
    v = report["versions"]
    print(f"versions: {v['patroni']}; {v['etcd']}; {v['postgresql']}")
    print(f"wall time {report['wall_seconds']:.0f}s\n")
    print(
        "the primary's site (jakarta) killed -9 under 4 writers (libpq multi-host, read-write);\n"
        "seconds after the kill; client RTO = first write acknowledged on a new connection, the\n"
        "slower half of the writers; gap = longest time without any acknowledged write;\n"
        "own = the system's own record: alwayson's failover record (own RTO = its rto_seconds),\n"
        "Patroni's log (detect = its first call to the old leader once the leader key is gone);\n"
        "renewed = how long before the kill the old primary last renewed (alwayson: its record's\n"
        "fault_at; Patroni: the old leader's last 'leader with the lock' log line)"
    )
    header = (
        f"{'system':<36}{'run':>4}{'client RTO':>11}{'gap':>7}{'own:detect':>11}"
        f"{'promoted':>9}{'own RTO':>8}{'renewed':>8}{'acked':>8}{'errors':>7}{'lost':>6}"
        "  etcd leader"
    )
    print(header)
    for system, runs in report["runs"].items():
        for r in runs:
            if "error" in r:
                print(f"{system:<36}{r['run']:>4}  failed: {r['error'].splitlines()[0]}")
                continue
            own = r.get("own") or {}
            print(
                f"{system:<36}{r['run']:>4}{fmt(r.get('client_rto'), 11)}"
                f"{fmt(r.get('write_gap'), 7)}{fmt(own.get('detected_after_kill'), 11)}"
                f"{fmt(own.get('promoted_after_kill'), 9)}{fmt(own.get('rto_seconds'), 8)}"
                f"{fmt(own.get('last_renewal_before_kill'), 8)}{fmt(r.get('acknowledged'), 8)}"
                f"{fmt(r.get('errors_after_kill'), 7)}{fmt(r.get('lost'), 6)}  "
                f"{(r.get('fault') or {}).get('etcd_leader_at_kill')}"
            )
        s = report["summary"].get(system)
        if s:
            print(
                f"{system + ' median':<40}{fmt(s['client_rto'], 11)}{fmt(s['write_gap'], 7)}"
                f"{fmt(s['detected_after_kill'], 11)}{fmt(s['promoted_after_kill'], 9)}"
                f"{fmt(s['own_rto_seconds'], 8)}{'':>8}{fmt(s['acknowledged'], 8, 0)}"
                f"{fmt(s['errors_after_kill'], 7, 0)}{fmt(s['lost_total'], 6)}  (lost: all runs)"
            )
    for system, t in report["patroni_timing"].items():
        print(f"{system}: {t}")
    if report["notes"]:
        print("\nnotes:")
        for note in report["notes"]:
            print(f"  - {note}")


def label(system: str, where: str) -> str:
    return f"{system}, etcd leader {where}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    about = machine()
    versions = ensure_patroni()
    log(f"{versions}")
    keep = Path(args.keep_logs) if args.keep_logs else None
    systems = [
        *(["alwayson"] if args.only in (None, "alwayson") else []),
        *(f"patroni ttl {t}" for t in args.patroni_ttl if args.only in (None, "patroni")),
    ]
    cases = [(system, where) for where in args.etcd_leader for system in systems]
    runs: dict[str, list[dict[str, Any]]] = {label(*c): [] for c in cases}
    with tempfile.TemporaryDirectory(prefix="patroni-compare-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # PostgreSQL and Patroni run as `nobody`: they must get in
        for n in range(1, args.runs + 1):
            for system, where in cases:
                case = label(system, where)
                try:
                    if system == "alwayson":
                        r = alwayson_run(work, n, where, keep, args.phase_spread)
                    else:
                        ttl = int(system.split()[-1])
                        r = patroni_run(work, ttl, n, where, keep, args.phase_spread)
                except Exception as exc:  # a broken run is a finding: keep the others
                    log(f"[{case} run {n}] FAILED: {type(exc).__name__}: {exc}")
                    r = {"system": system, "run": n, "error": f"{type(exc).__name__}: {exc}"}
                runs[case].append(r)
                if "error" not in r:
                    own = r.get("own") or {}
                    log(
                        f"[{case} run {n}] client RTO {r['client_rto']} "
                        f"{r['client_rto_by_side']}, gap {r['write_gap']}, promoted "
                        f"{own.get('promoted_after_kill')}; acked {r['acknowledged']}, errors "
                        f"{r['errors_after_kill']}, lost {r['lost']}"
                    )
    report: dict[str, Any] = {
        "benchmark": "patroni_compare",
        "machine": about,
        "versions": versions,
        "writers": 2 * WRITERS_PER_SIDE,
        "backoff_seconds": BACKOFF,
        "load_before_kill_seconds": LOAD_BEFORE_KILL,
        "phase_spread_seconds": args.phase_spread,
        "alwayson_lease": {"ttl": 6.0, "margin": 2.0, "renew_every": 2.0},
        "etcd_leader_placements": args.etcd_leader,
        "patroni_timing": {
            f"patroni ttl {t}": next(
                (
                    r["timing"]
                    for rs in runs.values()
                    for r in rs
                    if r.get("ttl") == t and "timing" in r
                ),
                None,
            )
            for t in args.patroni_ttl
        },
        "summary": {s: summarise(rs) for s, rs in runs.items() if rs},
        "runs": runs,
    }
    report["notes"] = notes(report)
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per system")
    parser.add_argument(
        "--patroni-ttl", type=int, nargs="+", default=[20, 30], help="Patroni ttl(s) to run"
    )
    parser.add_argument(
        "--etcd-leader",
        nargs="+",
        choices=(WITNESS, SITES[0], "any"),
        default=[WITNESS, SITES[0]],
        help="where the etcd raft leader is put before the fault: the witness's member, "
        "the killed site's, or left where it is",
    )
    parser.add_argument(
        "--phase-spread",
        type=float,
        default=PHASE_SPREAD,
        help="a random 0..S seconds of load added before each kill",
    )
    parser.add_argument("--only", choices=("alwayson", "patroni"), help="run one system")
    parser.add_argument("--json", action="store_true", help="print one JSON document at the end")
    parser.add_argument("--save", metavar="FILE", help="also write the JSON document here")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy every run's logs here")
    args = parser.parse_args()
    return finish(args, run, print_report, "interrupted; everything started was stopped")


if __name__ == "__main__":
    sys.exit(main())
