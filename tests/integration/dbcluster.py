"""A database platform for integration tests: two workload sites and a witness with one
database ``bank``, real site agents, etcd members and PostgreSQL (the pgserver wheel).

Shared by ``test_databases.py`` and ``test_database_operations.py``: the ``cluster``
fixture (re-exported by this folder's conftest), the :class:`Cluster` helpers, the
:class:`Writers` that insert through the endpoints, and small fault helpers. Every
process a cluster starts is stopped by ``make_platform``'s teardown, by pid.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from tests.support import Platform, wait_for

from alwayson.spec.loading import load_spec_file
from alwayson.util.sitelinks import write_partitions

SITES = ("jakarta", "surabaya")


def db_spec(replication: str = "synchronous", **extra: Any) -> dict[str, Any]:
    database = {
        "name": "bank",
        "primary_site": "jakarta",
        "replication": replication,
        "backup": {"schedule": None},
        **extra,
    }
    return {
        "platform": "dbtest",
        "sites": [{"name": "jakarta"}, {"name": "surabaya"}, {"name": "witness", "witness": True}],
        "services": [],
        "databases": [database],
    }


@dataclass
class Cluster:
    platform: Platform
    subnets: dict[str, str]

    def octets(self, site: str) -> str:
        return self.subnets[site].split(".")[1]

    def agent(self, site: str) -> dict[str, Any]:
        url = f"http://127.{self.octets(site)}.0.9:7400/status"
        with urllib.request.urlopen(url, timeout=3) as resp:
            data: dict[str, Any] = json.loads(resp.read())["databases"]["bank"]
        return data

    def secrets(self) -> dict[str, str]:
        data: dict[str, str] = json.loads(
            (self.platform.state_dir / "data" / "secrets.json").read_text()
        )["bank"]
        return data

    def endpoint(self, site: str) -> str:
        pw = self.secrets()["app"]
        return f"host=127.{self.octets(site)}.0.11 port=5432 user=bank password={pw} dbname=bank"

    def direct(self, site: str) -> str:
        pw = self.secrets()["superuser"]
        return (
            f"host=127.{self.octets(site)}.0.10 port=5432 user=alwayson password={pw} dbname=bank"
        )

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.platform.cli("db", "status", "--json").stdout)[0]
        return data

    def role(self, site: str) -> str:
        try:
            return str(self.agent(site)["role"])
        except OSError:
            return "unreachable"

    def primary(self) -> str:
        return str(wait_for("a writable primary", self._writable_primary, timeout=60))

    def _writable_primary(self) -> str | None:
        for site in SITES:
            try:
                got = self.agent(site)
            except OSError:
                continue
            if got["role"] == "primary" and got["writable"]:
                return site
        return None

    def execute(self, dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
            cur = conn.execute(sql, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def synchronous(self) -> bool:
        lease = self.status()["lease"] or {}
        return bool(lease.get("sync_standby"))

    def cut(self, *pairs: tuple[str, str]) -> None:
        write_partitions(self.platform.state_dir / "data" / "partitions.json", list(pairs))

    # -- more helpers (test_database_operations.py) -----------------------------------

    def data_dir(self, site: str) -> Path:
        return self.platform.state_dir / "data" / "bank" / site

    def repo(self, site: str) -> Path:
        return self.data_dir(site) / "repo"

    def events(self, kind: str) -> list[dict[str, Any]]:
        out = self.platform.cli("events", "--kind", kind, "--limit", "200", "--json").stdout
        found: list[dict[str, Any]] = json.loads(out)
        return found

    def agent_pid(self, site: str) -> int:
        record = json.loads(
            (self.platform.state_dir / "run" / "instances" / f"agent@{site}.json").read_text()
        )
        return int(record["pid"])

    def agent_started_at(self, site: str) -> float | None:
        url = f"http://127.{self.octets(site)}.0.9:7400/status"
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                return float(json.loads(resp.read())["started_at"])
        except OSError:
            return None

    def records(self) -> list[dict[str, Any]]:
        """Every failover, switchover, failback and request record, oldest first (the
        REST API the CLI uses; ``db status`` shows only the last five)."""
        token = (self.platform.state_dir / "token").read_text().strip()
        request = urllib.request.Request(
            f"http://{self.platform.api}/api/v1/databases/bank/records?limit=200",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            found: list[dict[str, Any]] = json.loads(resp.read())
        return found

    def record(self, **match: Any) -> dict[str, Any] | None:
        """The newest record whose fields equal ``match``."""
        for record in reversed(self.records()):
            if all(record.get(k) == v for k, v in match.items()):
                return record
        return None

    def cli_json(self, *args: str, timeout: float = 300) -> Any:
        return json.loads(self.platform.cli(*args, "--json", timeout=timeout).stdout)


@pytest.fixture
def cluster(make_platform: Callable[..., Platform]) -> Callable[..., Cluster]:
    def make(replication: str = "synchronous", **extra: Any) -> Cluster:
        platform = make_platform(db_spec(replication, **extra))
        platform.cli("up", timeout=180)
        loaded = load_spec_file(platform.spec_path, check_commands=False).spec
        subnets = {s.name: loaded.subnet_of(s.name) for s in loaded.sites}
        made = Cluster(platform, subnets)
        wait_for(
            "primary and streaming standby",
            lambda: made.role("jakarta") == "primary" and made.role("surabaya") == "standby",
            timeout=90,
        )
        wait_for(
            "the standby streaming",
            lambda: made.agent("surabaya").get("receiver") == "streaming",
            timeout=30,
        )
        if replication == "synchronous":
            wait_for("synchronous standby in the lease", made.synchronous, timeout=30)
        return made

    return make


@dataclass
class Writers:
    """Clients inserting unique ids through the endpoints; ids are kept only once committed."""

    cluster: Cluster
    table: str = "registrations"
    per_site: int = 2
    acked: list[tuple[int, float]] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Writers:
        self.cluster.execute(
            self.cluster.endpoint("jakarta"),
            f"CREATE TABLE IF NOT EXISTS {self.table} (id bigint PRIMARY KEY, "
            "at timestamptz DEFAULT clock_timestamp())",
        )
        # The table must have reached the standby before the test starts losing things.
        wait_for(
            f"{self.table} on the standby",
            lambda: self.cluster.execute(
                self.cluster.direct("surabaya"), "SELECT to_regclass(%s)::text", (self.table,)
            )[0][0],
        )
        for index, site in enumerate(s for s in SITES for _ in range(self.per_site)):
            thread = threading.Thread(target=self._run, args=(site, index), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, site: str, index: int) -> None:
        counter = 0
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            ident = index * 10_000_000 + counter
            try:
                if conn is None:
                    conn = psycopg.connect(
                        self.cluster.endpoint(site), autocommit=True, connect_timeout=2
                    )
                conn.execute(f"INSERT INTO {self.table} (id) VALUES (%s)", (ident,))  # type: ignore[arg-type]
                with self._lock:
                    self.acked.append((ident, time.monotonic()))
                counter += 1
            except psycopg.Error as exc:
                with self._lock:
                    self.errors.append((time.monotonic(), str(exc)[:200]))
                if conn is not None:
                    conn.close()
                conn = None
                counter += 1
                self._stop.wait(0.02)
        if conn is not None:
            conn.close()

    def count_after(self, moment: float) -> int:
        with self._lock:
            return sum(1 for _, at in self.acked if at > moment)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def final_ids(self) -> set[int]:
        rows = self.cluster.execute(
            self.cluster.endpoint(self.cluster.primary()), f"SELECT id FROM {self.table}"
        )
        return {r[0] for r in rows}


def kill_primary_process(cluster: Cluster, site: str) -> float:
    pid = cluster.agent(site)["pid"]
    assert pid, f"{site} has no PostgreSQL pid"
    os.kill(int(pid), signal.SIGKILL)
    return time.monotonic()


def kill_pid(pid: int) -> float:
    """SIGKILL one process the platform recorded; returns the wall time of the kill."""
    assert psutil.pid_exists(pid), f"no process {pid}"
    at = time.time()
    os.kill(pid, signal.SIGKILL)
    return at


class Pending:
    """One INSERT on its own connection and thread: did it commit, and when?"""

    def __init__(self, dsn: str, sql: str) -> None:
        self.started = time.monotonic()
        self.done_at: float | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, args=(dsn, sql), daemon=True)
        self._thread.start()

    def _run(self, dsn: str, sql: str) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
                conn.execute(sql)  # type: ignore[arg-type]
            self.done_at = time.monotonic()
        except psycopg.Error as exc:
            self.error = str(exc)[:300]

    @property
    def committed(self) -> bool:
        return self.done_at is not None

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
