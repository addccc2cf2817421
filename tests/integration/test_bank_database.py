"""The bank's customers, accounts and ledger on a real PostgreSQL, without the platform.

A private PostgreSQL (run by the platform's own engine: the pgserver wheel's binaries, as
``nobody`` under root) listens on an address of this run's own loopback subnet; two
instances of each of ``customers``, ``accounts`` and ``ledger`` run as
``python -m bank.<name>`` with ``DATABASE_URL`` pointing at it, as two replicas would under
alwayson. The tests check that every acknowledged id is
in the tables, that concurrent transfers keep the books balanced, that a restart keeps the
data, and that without the database writes answer 503 (never 200), the services stay up and
recover on their own. Every process started here is stopped by its pid, even on failure.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from tests.integration.test_bank_services import Launcher, Service, free_port, nik, wait_ready
from tests.support import open_to_workloads, reserve_subnet, wait_for

from alwayson.data.engines import Engine, Identity, Postmaster, find_binaries

SERVICES = ["customers", "accounts", "ledger"]
TOP_UP = 1_000_000
SETTINGS = {
    "listen_addresses": "'{host}'",
    "port": "{port}",
    "unix_socket_directories": "''",
    "max_connections": "60",
    "fsync": "off",
    "shared_buffers": "16MB",
}


class Postgres:
    """One PostgreSQL server run by the platform's own engine (``alwayson.data.engines``:
    the pgserver wheel's binaries, as ``nobody`` under root): initdb once, then the
    postmaster as this process's child, started and stopped by its pid."""

    def __init__(self, root: Path, host: str) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.host = host
        self.port = free_port(host)
        self.superuser_password = secrets.token_hex(12)
        self.password = secrets.token_hex(12)
        # pgserver is a dependency of alwayson: missing binaries are a broken install.
        self.engine = Engine(
            find_binaries(None),
            Identity.of(None),
            self.superuser_password,
            root / "tools.log",
        )
        self.postmaster: Postmaster | None = None

    @property
    def url(self) -> str:
        return f"postgresql://bank:{self.password}@{self.host}:{self.port}/bank"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres:{self.superuser_password}@{self.host}:{self.port}/bank"

    def init(self) -> None:
        asyncio.run(self.engine.initdb(self.data, "postgres"))
        with (self.data / "postgresql.conf").open("a") as conf:
            for name, value in SETTINGS.items():
                conf.write(f"{name} = {value.format(host=self.host, port=self.port)}\n")
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 127.0.0.0/8 scram-sha-256\n")
        self.start()
        with psycopg.connect(self.admin_url.replace("/bank", "/postgres"), autocommit=True) as c:
            c.execute(f"CREATE ROLE bank LOGIN PASSWORD '{self.password}'")
            c.execute("CREATE DATABASE bank OWNER bank")

    def start(self) -> None:
        assert self.postmaster is None or not self.postmaster.alive()
        self.postmaster = self.engine.spawn(self.data, self.log)
        wait_for("PostgreSQL to accept connections", self._accepting, timeout=60, every=0.1)

    def _accepting(self) -> bool:
        assert self.postmaster is not None
        if not self.postmaster.alive():
            code = self.postmaster.popen.returncode
            raise AssertionError(f"postgres exited {code}:\n{self.log_tail()}")
        try:
            with psycopg.connect(self.admin_url.replace("/bank", "/postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster, by pid), SIGKILL if it hangs, and wait
        until none of its backends is left."""
        if self.postmaster is not None and self.postmaster.alive():
            asyncio.run(self.postmaster.stop("fast", timeout=30))

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.admin_url, connect_timeout=3, autocommit=True) as conn:
            cursor = conn.execute(sql, params or None)
            return cursor.fetchall() if cursor.description else []


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def net() -> str:
    return f"127.{reserve_subnet()}.0"


@pytest.fixture(scope="module")
def pg(net: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    root = tmp_path_factory.mktemp("bank-pg")
    open_to_workloads(root)  # nobody must be able to reach its data directory
    server = Postgres(root, f"{net}.11")
    try:
        server.init()
        yield server
    finally:
        server.stop()


class Bank:
    """Two instances of each service, all on ``DATABASE_URL``; stopped by pid at the end."""

    def __init__(self, launcher: Launcher, net: str, url: str) -> None:
        self.launcher = launcher
        self.net = net
        self.url = url
        self.replicas: dict[str, list[Service]] = {}
        self.client = httpx.Client(timeout=15.0, trust_env=False)
        self.counter = 0

    def start(self, name: str) -> Service:
        self.counter += 1
        env = {"DATABASE_URL": self.url, "BANK_DB_POOL": "4"}
        return self.launcher.start(name, f"{self.net}.{20 + self.counter}", env=env)

    def start_all(self) -> None:
        for name in SERVICES:
            self.replicas[name] = [self.start(name) for _ in range(2)]
        wait_ready([s for group in self.replicas.values() for s in group])

    def url_of(self, name: str, n: int = 0) -> str:
        group = self.replicas[name]
        return group[n % len(group)].url

    def post(self, name: str, path: str, body: dict[str, Any], n: int = 0) -> httpx.Response:
        return self.client.post(self.url_of(name, n) + path, json=body)

    def get(self, name: str, path: str, n: int = 0) -> httpx.Response:
        return self.client.get(self.url_of(name, n) + path)

    def restart(self, name: str) -> None:
        """SIGTERM every instance of ``name`` (by pid), then start two new ones."""
        for service in self.replicas[name]:
            service.proc.send_signal(signal.SIGTERM)
            assert service.proc.wait(timeout=10) == 0, service.log_tail()
        self.replicas[name] = [self.start(name) for _ in range(2)]
        wait_ready(self.replicas[name])

    def alive(self) -> bool:
        return all(s.proc.poll() is None for group in self.replicas.values() for s in group)


@pytest.fixture(scope="module")
def bank(pg: Postgres, net: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bank]:
    launcher = Launcher(tmp_path_factory.mktemp("bank-db-logs"))
    bank = Bank(launcher, net, pg.url)
    try:
        bank.start_all()
        yield bank
    finally:
        bank.client.close()
        launcher.stop_all()


def db_ok(bank: Bank, name: str, n: int) -> bool:
    response = bank.get(name, f"/{name}/db", n)
    return response.status_code == 200 and response.json()["database"] == "ok"


def wait_all_reach_the_database(bank: Bank, timeout: float = 30.0) -> None:
    def all_ok() -> bool:
        return all(db_ok(bank, name, n) for name in SERVICES for n in range(2))

    wait_for("every instance to reach the database", all_ok, timeout, every=0.1)


def register(bank: Bank, serial: int, n: int) -> httpx.Response:
    body = {
        "name": "Budi Santoso",
        "email": f"db{serial}@example.co.id",
        "id_number": nik(serial),
        "city": "jakarta",
    }
    return bank.post("customers", "/customers", body, n)


def open_account(bank: Bank, customer_id: str, n: int) -> httpx.Response:
    return bank.post("accounts", "/accounts", {"customer_id": customer_id, "city": "jakarta"}, n)


def entry(entry_id: str, debit: str, credit: str, amount: int) -> dict[str, Any]:
    return {
        "entry_id": entry_id,
        "description": "test",
        "currency": "IDR",
        "postings": [
            {"account": debit, "direction": "debit", "amount": amount},
            {"account": credit, "direction": "credit", "amount": amount},
        ],
    }


def customers_with_accounts(bank: Bank, first_serial: int, count: int) -> list[str]:
    accounts = []
    for serial in range(first_serial, first_serial + count):
        customer = register(bank, serial, serial)
        assert customer.status_code == 201, customer.text
        account = open_account(bank, customer.json()["customer_id"], serial + 1)
        assert account.status_code == 201, account.text
        accounts.append(account.json()["account_id"])
    return accounts


def assert_books_balance(pg: Postgres) -> None:
    """The invariant: per currency, balances sum to 0; each balance is its postings' sum."""
    for currency, total in pg.query("SELECT currency, sum(balance) FROM accounts GROUP BY 1"):
        assert total == 0, (currency, total)
    unbalanced = pg.query(
        "SELECT entry_id, sum(amount) FROM ledger_entries GROUP BY 1 HAVING sum(amount) <> 0"
    )
    assert unbalanced == []
    drift = pg.query(
        "SELECT a.id, a.balance, coalesce(p.total, 0) FROM accounts a LEFT JOIN"
        " (SELECT account_id, sum(amount) AS total FROM ledger_entries GROUP BY 1) p"
        " ON p.account_id = a.id WHERE a.balance <> coalesce(p.total, 0)"
    )
    assert drift == []
    assert pg.query("SELECT id FROM accounts WHERE kind = 'customer' AND balance < 0") == []


# --------------------------------------------------------------------------- tests


def test_racing_instances_create_the_schema_once(bank: Bank, pg: Postgres) -> None:
    wait_all_reach_the_database(bank)
    tables = {
        row[0] for row in pg.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert tables == {"customers", "accounts", "ledger_entries"}
    status = bank.get("ledger", "/ledger/db").json()
    assert status["in_recovery"] is False and status["schema_ready"] is True
    for name in SERVICES:  # the database is not part of health
        assert bank.get(name, "/healthz").json()["status"] == "ok"


def test_every_acknowledged_registration_is_in_the_table(bank: Bank, pg: Postgres) -> None:
    def attempt(numbered: tuple[int, int]) -> tuple[int, httpx.Response]:
        n, serial = numbered
        return serial, register(bank, serial, n)

    serials = list(range(1000, 1060))
    with ThreadPoolExecutor(16) as pool:
        # every serial twice, on different replicas at once: one 201, one 409
        answers = list(pool.map(attempt, enumerate(s for s in serials for _ in range(2))))
    acknowledged: dict[int, str] = {}
    for serial, response in answers:
        assert response.status_code in (201, 409), response.text
        if response.status_code == 201:
            assert serial not in acknowledged, f"NIK {serial} registered twice"
            acknowledged[serial] = response.json()["customer_id"]
        else:
            assert response.json()["error"].startswith("a customer with this")
    assert sorted(acknowledged) == serials
    in_table = {row[0] for row in pg.query("SELECT id FROM customers")}
    assert set(acknowledged.values()) <= in_table
    for n, customer_id in enumerate(acknowledged.values()):
        found = bank.get("customers", f"/customers/{customer_id}", n + 1)
        assert found.status_code == 200, found.text
        assert found.json()["customer_id"] == customer_id
    by_email = bank.get("customers", "/customers?email=db1000@example.co.id").json()
    assert [c["customer_id"] for c in by_email["customers"]] == [acknowledged[1000]]
    patched = bank.client.patch(
        bank.url_of("customers", 1) + f"/customers/{acknowledged[1001]}",
        json={"city": "surabaya"},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["city"] == "surabaya"
    taken = bank.client.patch(
        bank.url_of("customers") + f"/customers/{acknowledged[1001]}",
        json={"email": "db1002@example.co.id"},
    )
    assert taken.status_code == 409, taken.text
    assert taken.json()["customer_id"] == acknowledged[1002]

    def open_one(n: int) -> httpx.Response:
        return open_account(bank, acknowledged[1000], n)

    with ThreadPoolExecutor(8) as pool:
        opened = list(pool.map(open_one, range(8)))
    codes = sorted(r.status_code for r in opened)
    assert codes == [201] * 5 + [409] * 3, [r.text for r in opened]  # at most 5 each
    owned = bank.get("accounts", f"/accounts?customer_id={acknowledged[1000]}", 1).json()
    assert {a["account_id"] for a in owned["accounts"]} == {
        r.json()["account_id"] for r in opened if r.status_code == 201
    }
    assert len({a["account_number"] for a in owned["accounts"]}) == 5


def test_concurrent_transfers_keep_the_books_balanced(bank: Bank, pg: Postgres) -> None:
    accounts = customers_with_accounts(bank, 2000, 8)
    for n, account in enumerate(accounts):
        top_up = bank.post(
            "ledger", "/ledger/entries", entry(f"top-{account}", "gl:cash:va", account, TOP_UP), n
        )
        assert top_up.status_code == 201, top_up.text
    rng = random.Random(7)
    transfers = []
    for index in range(240):
        source, target = rng.sample(accounts, 2)
        transfers.append(entry(f"trf_db{index}", source, target, rng.randint(1, 400_000)))
    # Retried transfers, sent at the same moment as the first try (on the other replica):
    # one posts, the other is a replay (or the same 409), never posted twice.
    transfers = [t for index, t in enumerate(transfers) for _ in range(1 + (index % 6 == 0))]

    def send(numbered: tuple[int, dict[str, Any]]) -> tuple[str, httpx.Response]:
        n, body = numbered
        return body["entry_id"], bank.post("ledger", "/ledger/entries", body, n)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, enumerate(transfers)))
    posted = set()
    for entry_id, response in answers:
        assert response.status_code in (200, 201, 409), response.text
        if response.status_code == 201:
            assert entry_id not in posted
            posted.add(entry_id)
        elif response.status_code == 409:
            assert response.json()["error"] == "insufficient funds", response.text
    assert len(posted) > 100
    in_table = {
        row[0]
        for row in pg.query(
            "SELECT DISTINCT entry_id FROM ledger_entries WHERE entry_id LIKE 'trf_db%%'"
        )
    }
    assert in_table == posted  # acknowledged, and nothing that was refused
    assert_books_balance(pg)
    customer_total = pg.query("SELECT sum(balance) FROM accounts WHERE id = ANY(%s)", accounts)[0][
        0
    ]
    assert customer_total == TOP_UP * len(accounts)
    cash = bank.get("ledger", "/ledger/accounts/gl:cash:va/balance").json()["balances"]["IDR"]
    assert cash == -pg.query("SELECT sum(balance) FROM accounts WHERE kind = 'customer'")[0][0]
    for n, account in enumerate(accounts):
        shown = bank.get("accounts", f"/accounts/{account}/balance", n).json()
        stored = pg.query("SELECT balance FROM accounts WHERE id = %s", account)[0][0]
        assert shown["balance"] == stored
        history = bank.get("ledger", f"/ledger/accounts/{account}/postings", n).json()
        assert history["opening"] == 0 and history["closing"] == stored
    trial = bank.get("ledger", "/ledger/trial-balance").json()
    assert trial["balanced"] is True and trial["balances_matching_postings"] is True
    unknown = bank.post("ledger", "/ledger/entries", entry("trf_x", accounts[0], "acc_nobody", 1))
    assert unknown.status_code == 404 and unknown.json()["account"] == "acc_nobody"


def test_restarts_keep_the_data(bank: Bank, pg: Postgres) -> None:
    accounts = customers_with_accounts(bank, 3000, 2)
    top_up = bank.post(
        "ledger", "/ledger/entries", entry("top-restart", "gl:cash:teller", accounts[0], 50_000)
    )
    assert top_up.status_code == 201
    customer_id = bank.get("accounts", f"/accounts/{accounts[0]}").json()["customer_id"]
    for name in SERVICES:
        bank.restart(name)
    for n in range(2):
        assert bank.get("customers", f"/customers/{customer_id}", n).status_code == 200
        assert bank.get("accounts", f"/accounts/{accounts[1]}", n).status_code == 200
        assert (
            bank.get("accounts", f"/accounts/{accounts[0]}/balance", n).json()["balance"] == 50_000
        )
        replay = bank.post(
            "ledger",
            "/ledger/entries",
            entry("top-restart", "gl:cash:teller", accounts[0], 50_000),
            n,
        )
        assert replay.status_code == 200 and replay.json()["replayed"] is True


def test_without_the_database_writes_are_503_and_service_recovers(bank: Bank, pg: Postgres) -> None:
    accounts = customers_with_accounts(bank, 4000, 2)
    funded = bank.post(
        "ledger", "/ledger/entries", entry("top-outage", "gl:cash:va", accounts[0], 100_000)
    )
    assert funded.status_code == 201
    # A failover closes every connection: pooled ones are stale, the next request still works.
    pg.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'bank'")
    for n in range(4):
        moved = bank.post(
            "ledger", "/ledger/entries", entry(f"trf_after_kill{n}", accounts[0], accounts[1], 1), n
        )
        assert moved.status_code == 201, moved.text

    pg.stop()
    try:
        refused = [
            register(bank, 4100, 0),
            open_account(bank, "cus_outage", 1),
            bank.post(
                "ledger", "/ledger/entries", entry("trf_outage", accounts[0], accounts[1], 5_000), 0
            ),
            bank.post(
                "ledger", "/ledger/entries", entry("trf_outage", accounts[0], accounts[1], 5_000), 1
            ),
        ]
        for response in refused:
            assert response.status_code == 503, response.text
            assert response.json()["database"] == "unreachable"
            assert response.json()["error"] == "database unreachable"
        for name in SERVICES:
            for n in range(2):
                assert bank.get(name, "/healthz", n).json()["status"] == "ok"
                down = bank.get(name, f"/{name}/db", n)
                assert down.status_code == 503 and down.json()["database"] == "unreachable"
        assert bank.get("accounts", f"/accounts/{accounts[0]}").status_code == 503
        assert bank.alive()
    finally:
        pg.start()

    wait_all_reach_the_database(bank)
    assert pg.query("SELECT count(*) FROM ledger_entries WHERE entry_id = 'trf_outage'") == [(0,)]
    again = bank.post(
        "ledger", "/ledger/entries", entry("trf_outage", accounts[0], accounts[1], 5_000)
    )
    assert again.status_code == 201  # refused before, so never posted: posted now, once
    customer = register(bank, 4100, 1)
    assert customer.status_code == 201
    assert bank.get("customers", f"/customers/{customer.json()['customer_id']}").status_code == 200
    assert bank.alive()
    assert_books_balance(pg)


def test_a_commit_the_synchronous_standby_did_not_confirm_is_not_acknowledged(
    bank: Bank, pg: Postgres
) -> None:
    """COMMIT waits for a synchronous standby that never answers: after ``BANK_DB_TIMEOUT``
    the ledger cancels the wait (PostgreSQL then commits locally, with a warning) and answers
    503, never 201: the entry is not known to be on a standby."""
    accounts = customers_with_accounts(bank, 5000, 2)
    funded = bank.post(
        "ledger", "/ledger/entries", entry("top-sync", "gl:cash:va", accounts[0], 10_000)
    )
    assert funded.status_code == 201
    env = {"DATABASE_URL": pg.url, "BANK_DB_TIMEOUT": "1"}
    impatient = bank.launcher.start("ledger", f"{bank.net}.200", env=env)
    wait_ready([impatient])
    url = impatient.url + "/ledger/entries"

    def standby_names() -> str:
        return str(pg.query("SHOW synchronous_standby_names")[0][0])

    pg.query("ALTER SYSTEM SET synchronous_standby_names = 'ghost'")
    try:
        pg.query("SELECT pg_reload_conf()")
        wait_for("the setting to apply", lambda: standby_names() == "ghost", 10)
        waited = bank.client.post(url, json=entry("trf_sync", accounts[0], accounts[1], 500))
        assert waited.status_code == 503, waited.text
        assert waited.json()["database"] == "unconfirmed"
        assert waited.json()["outcome"] == "unknown"
    finally:
        pg.query("ALTER SYSTEM RESET synchronous_standby_names")
        pg.query("SELECT pg_reload_conf()")
        wait_for("the setting to go", lambda: standby_names() == "", 10)
    # Committed on the primary (a failover could have lost it): a retry is a replay.
    retried = bank.client.post(url, json=entry("trf_sync", accounts[0], accounts[1], 500))
    assert retried.status_code == 200 and retried.json()["replayed"] is True
    assert impatient.proc.poll() is None
    assert_books_balance(pg)


def test_no_service_logged_a_traceback(bank: Bank) -> None:
    for service in bank.launcher.started:
        assert "Traceback" not in service.log_tail(), service.log_tail()
