"""The sample bank's money survives a database switchover and a kill -9 of its primary.

A copy of ``examples/digital-bank`` runs through the real CLI (``alwayson up``) with the ten
services that registration and money movement cross (onboarding, kyc, customers, accounts,
notifications, audit; payments, transfers, fraud, ledger), one replica per site, and the
``bank`` database in synchronous replication between jakarta and surabaya (lease on the
witness). Client threads register customers through the front door, top up each new
account and transfer from it to an earlier one, keeping every answer. Under that load the
primary is switched over to surabaya (``alwayson db switchover``), then, once jakarta is
the synchronous standby again, surabaya's postmaster is killed with SIGKILL (its pid from
``alwayson db status --json``).

Afterwards the database is read directly: every registration, top-up and transfer the bank
acknowledged (201) must be there (a Jepsen-style set check: acknowledged minus stored is
empty), with the amounts acknowledged, and the books must balance (every currency sums to
0, every balance equals its postings, every entry sums to 0). The failures per fault, the
longest gap between acknowledged writes and the recovery time seen by clients are printed.
Everything is stopped by pid by the ``make_platform`` fixture, even on failure.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from psycopg.conninfo import make_conninfo
from ruamel.yaml import YAML
from tests.support import ROOT, Platform, wait_for

from alwayson.drills.checks import LEDGER_CHECKS

SAMPLE = ROOT / "examples" / "digital-bank"
SERVICES = (
    "onboarding",
    "kyc",
    "customers",
    "accounts",
    "ledger",
    "notifications",
    "audit",
    "payments",
    "transfers",
    "fraud",
)
CLIENTS = 4
KINDS = ("register", "topup", "transfer")


@dataclass(frozen=True)
class Outcome:
    """One request a client sent: when, what came back, and what it says it created."""

    kind: str
    started: float
    ended: float
    status: int  # 0: no HTTP answer at all
    ids: dict[str, str]
    error: str = ""

    @property
    def acknowledged(self) -> bool:
        return self.status == 201

    @property
    def failed(self) -> bool:
        return not 200 <= self.status < 300


def applicant(n: int) -> dict[str, str]:
    """A valid, unique applicant for every ``n`` below 100 million (NIK: region 317401,
    a birth date in 1960-1999, a serial 0001-9999)."""
    serial, k = n % 9999 + 1, n // 9999
    birth = f"{1 + k % 28:02d}{1 + (k // 28) % 12:02d}{60 + (k // 336) % 40:02d}"
    return {
        "name": "Siti Rahma",
        "email": f"load{n}@example.co.id",
        "id_number": f"317401{birth}{serial:04d}",
        "city": "jakarta" if n % 2 else "surabaya",
    }


@dataclass
class Load:
    """``CLIENTS`` threads, each: register → top up the new account → transfer from it to
    an account funded earlier. Only an acknowledged step leads to the next one, so a
    source account always has the money and moves it once (the fraud check's velocity
    rules never hold a transfer for review)."""

    front_door: str
    outcomes: list[Outcome] = field(default_factory=list)
    funded: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for index in range(CLIENTS):
            thread = threading.Thread(target=self._run, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> float:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        assert not any(t.is_alive() for t in self._threads), "a client thread did not stop"
        return time.monotonic()

    def _run(self, index: int) -> None:
        rng = random.Random(index)
        with httpx.Client(base_url=self.front_door, timeout=15.0, trust_env=False) as http:
            for i in itertools.count():
                if self._stop.is_set():
                    return
                n = index * 1_000_000 + i
                registered = self._send(http, "register", "/onboarding/register", applicant(n))
                if not registered.acknowledged:
                    self._stop.wait(0.05)  # do not spin on a database that is away
                    continue
                account = registered.ids["account_id"]
                topup = {"account_id": account, "amount": 150_000 + rng.randint(1, 9_999)}
                if not self._send(http, "topup", "/payments/topups", topup).acknowledged:
                    self._stop.wait(0.05)
                    continue
                with self._lock:
                    target = rng.choice(self.funded) if self.funded else None
                if target is not None:
                    transfer = {
                        "from_account": account,
                        "to_account": target,
                        "amount": rng.randint(1_000, 99_999),
                    }
                    self._send(http, "transfer", "/transfers", transfer)
                with self._lock:
                    self.funded.append(account)

    def _send(self, http: httpx.Client, kind: str, path: str, body: dict[str, Any]) -> Outcome:
        started = time.monotonic()
        ids: dict[str, str] = {}
        error = ""
        try:
            response = http.post(path, json=body)
            status = response.status_code
        except httpx.HTTPError as exc:
            status, error = 0, f"{type(exc).__name__}: {exc}"[:160]
        else:
            try:
                answer = response.json()
            except ValueError:
                answer = {}
            if status == 201:
                ids = self._ids(kind, body, answer)
            else:
                error = str(answer.get("error") or response.text)[:160]
        outcome = Outcome(kind, started, time.monotonic(), status, ids, error)
        with self._lock:
            self.outcomes.append(outcome)
        return outcome

    @staticmethod
    def _ids(kind: str, body: dict[str, Any], answer: dict[str, Any]) -> dict[str, str]:
        if kind == "register":
            return {"customer_id": answer["customer_id"], "account_id": answer["account_id"]}
        if kind == "topup":
            return {
                "entry_id": answer["payment_id"],
                "credit": body["account_id"],
                "amount": str(body["amount"]),
            }
        return {
            "entry_id": answer["transfer_id"],
            "debit": body["from_account"],
            "credit": body["to_account"],
            "amount": str(body["amount"]),
        }

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def acknowledged_since(self, moment: float, kind: str = "register") -> int:
        """Acknowledged requests of ``kind`` that were sent after ``moment``."""
        return sum(
            1 for o in self.snapshot() if o.kind == kind and o.acknowledged and o.started > moment
        )


@dataclass(frozen=True)
class Window:
    """What clients saw from ``start`` (a fault, or the start of the load) to ``end``."""

    name: str
    start: float
    end: float
    outcomes: list[Outcome]

    def _inside(self) -> list[Outcome]:
        return [o for o in self.outcomes if self.start <= o.ended < self.end]

    @property
    def sent(self) -> int:
        return len(self._inside())

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self._inside() if o.failed]

    @property
    def longest_gap(self) -> float:
        """The longest time without an acknowledged write, among the gaps that end in this
        window (the first one may start before it)."""
        ends = sorted(o.ended for o in self.outcomes if o.acknowledged)
        return max(
            (
                b - a
                for a, b in itertools.pairwise([self.start, *ends])
                if self.start <= b < self.end
            ),
            default=self.end - self.start,
        )

    @property
    def client_rto(self) -> float | None:
        """From the fault until a write sent after the window's last failure (or after the
        fault, when nothing failed) was acknowledged: when clients could write again."""
        failures = self.failures
        since = max((o.ended for o in failures), default=self.start)
        recovered = [
            o.ended
            for o in self.outcomes
            if o.acknowledged and o.started >= since and o.ended < self.end
        ]
        return min(recovered) - self.start if recovered else None

    def summary(self, fault: bool) -> str:
        failures = self.failures
        kinds = Counter(o.kind for o in failures)
        why = Counter(f"{o.status or 'no answer'} {o.error}".strip() for o in failures)
        line = f"{self.name}: {self.sent} requests, {len(failures)} failed"
        if failures:
            when = [round(o.ended - self.start, 2) for o in failures]
            line += f" ({dict(kinds)}, {min(when):+.2f}s to {max(when):+.2f}s)"
        line += f", longest gap {self.longest_gap:.2f}s"
        if fault:
            rto = self.client_rto
            line += f", writes succeeded again {'never' if rto is None else f'{rto:.2f}s'} after"
        return line + "".join(f"\n    {n} × {reason}" for reason, n in why.most_common(5))


# --------------------------------------------------------------------------- platform


def bank_spec(folder: Path) -> dict[str, Any]:
    data = dict(YAML(typ="safe").load((folder / "alwayson.yaml").read_text()))
    services = [s for s in data["services"] if s["name"] in SERVICES]
    for service in services:
        service["replicas"] = 1
    assert sorted(s["name"] for s in services) == sorted(SERVICES)
    data["services"] = services
    (database,) = data["databases"]
    assert database["replication"] == "synchronous"
    assert set(database["services"]) <= set(SERVICES)
    database["backup"] = {"schedule": None}  # no nightly backup in the middle of the run
    return data


def db_status(platform: Platform) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(platform.cli("db", "status", "--json").stdout)[0]
    return found


def site_of(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in status["sites"] if s["site"] == name)


def roles(status: dict[str, Any]) -> dict[str, str]:
    return {s["site"]: s.get("role", "unknown") for s in status["sites"] if not s.get("stale")}


def synchronous_with(platform: Platform, primary: str, standby: str) -> bool:
    status = db_status(platform)
    lease = status["lease"] or {}
    return (
        lease.get("holder") == primary
        and lease.get("sync_standby") == standby
        and roles(status).get(primary) == "primary"
        and roles(status).get(standby) == "standby"
    )


def primary_dsn(platform: Platform) -> str:
    """The current primary's site endpoint, as a service's DATABASE_URL (the password
    from the state directory, which ``db status`` masks)."""
    status = db_status(platform)
    site = next(s for s in status["sites"] if s.get("role") == "primary" and not s.get("stale"))
    secrets = json.loads((platform.state_dir / "data" / "secrets.json").read_text())
    url = site["endpoint_url"].replace(":***@", "@")
    return make_conninfo(url, password=secrets["bank"]["app"], connect_timeout=5)


def kill_postmaster(pid: int) -> float:
    """SIGKILL the postmaster ``db status`` names, after checking it is one."""
    proc = psutil.Process(pid)
    assert proc.name() == "postgres", proc
    assert "-D" in proc.cmdline(), proc.cmdline()
    at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    return at


# --------------------------------------------------------------------------- checks


def book_problems(conn: psycopg.Connection[Any]) -> list[str]:
    """The ledger's invariants, as a list of what is wrong (empty when the books balance):
    the same checks a drill makes (``alwayson.drills.checks``)."""
    return [text.format(*row) for sql, text in LEDGER_CHECKS for row in conn.execute(sql)]


def postings_of(
    conn: psycopg.Connection[Any], entry_ids: list[str]
) -> dict[str, set[tuple[str, int]]]:
    found: dict[str, set[tuple[str, int]]] = {}
    for entry_id, account, amount in conn.execute(
        "SELECT entry_id, account_id, amount FROM ledger_entries WHERE entry_id = ANY(%s)",
        (entry_ids,),
    ):
        found.setdefault(entry_id, set()).add((account, amount))
    return found


def expected_postings(outcome: Outcome) -> set[tuple[str, int]]:
    amount = int(outcome.ids["amount"])
    if outcome.kind == "topup":
        return {(outcome.ids["credit"], amount), ("gl:cash:va", -amount)}
    return {(outcome.ids["credit"], amount), (outcome.ids["debit"], -amount)}


def _seconds(value: Any) -> str:
    return "?" if value is None else f"{float(value):.2f}"


# --------------------------------------------------------------------------- the test


def test_acknowledged_money_survives_switchover_and_primary_kill(bank: Platform) -> None:
    platform = bank
    wait_for(
        "jakarta primary with surabaya as its synchronous standby",
        lambda: synchronous_with(platform, "jakarta", "surabaya"),
        timeout=60,
        every=0.25,
    )
    load = Load(platform.front_door).start()
    began = time.monotonic()
    try:
        wait_for(
            "registrations and transfers before the faults",
            lambda: (
                load.acknowledged_since(began) >= 20
                and load.acknowledged_since(began, "transfer") >= 5
            ),
            timeout=45,
        )

        # (a) Planned: the primary moves to surabaya under load.
        result = json.loads(platform.cli("db", "switchover", "--to", "surabaya", "--json").stdout)
        switch_done = time.monotonic()
        assert result["ok"] and result["to"] == "surabaya" and result["lost_writes"] == 0, result
        # The fault starts when the old primary stopped taking writes (its agent's wall
        # clock; one clock on one machine), not when the CLI process was launched.
        switched_at = float(result["stopped_at"]) - (time.time() - time.monotonic())
        assert began < switched_at < switch_done, (began, switched_at, switch_done)
        wait_for(
            "registrations acknowledged after the switchover",
            lambda: load.acknowledged_since(switch_done) >= 10,
            timeout=30,
        )
        # In synchronous mode only an in-sync standby may take over by itself, so the kill
        # comes once jakarta streams again and the lease names it.
        wait_for(
            "surabaya primary with jakarta as its synchronous standby",
            lambda: synchronous_with(platform, "surabaya", "jakarta"),
            timeout=60,
            every=0.25,
        )

        # (b) Unplanned: kill -9 the primary's postmaster.
        pid = site_of(db_status(platform), "surabaya")["pid"]
        assert pid, "db status shows no pid for surabaya's primary"
        killed_at = kill_postmaster(int(pid))
        wait_for(
            "jakarta promoted",
            lambda: roles(db_status(platform)).get("jakarta") == "primary",
            timeout=45,
            every=0.25,
        )
        wait_for(
            "registrations and transfers acknowledged after the kill",
            lambda: (
                load.acknowledged_since(killed_at) >= 10
                and load.acknowledged_since(killed_at, "transfer") >= 3
            ),
            timeout=45,
        )
    finally:
        stopped = load.stop()

    outcomes = load.snapshot()
    windows = [
        Window("before the faults", began, switched_at, outcomes),
        Window("switchover to surabaya", switched_at, killed_at, outcomes),
        Window("kill -9 of surabaya's postmaster", killed_at, stopped + 1, outcomes),
    ]
    acknowledged = {
        kind: [o for o in outcomes if o.kind == kind and o.acknowledged] for kind in KINDS
    }

    with psycopg.connect(primary_dsn(platform), autocommit=True) as conn:
        customers = {r[0] for r in conn.execute("SELECT id FROM customers")}
        accounts = {r[0] for r in conn.execute("SELECT id FROM accounts WHERE kind = 'customer'")}
        entries = acknowledged["topup"] + acknowledged["transfer"]
        postings = postings_of(conn, [o.ids["entry_id"] for o in entries])
        problems = book_problems(conn)
        totals = {
            currency: int(total)
            for currency, total in conn.execute(
                "SELECT currency, sum(balance) FROM accounts GROUP BY 1"
            )
        }

    lost_customers = {o.ids["customer_id"] for o in acknowledged["register"]} - customers
    lost_accounts = {o.ids["account_id"] for o in acknowledged["register"]} - accounts
    lost_entries = [o.ids["entry_id"] for o in entries if o.ids["entry_id"] not in postings]
    wrong_entries = [
        (o.ids["entry_id"], sorted(postings[o.ids["entry_id"]]), sorted(expected_postings(o)))
        for o in entries
        if o.ids["entry_id"] in postings and postings[o.ids["entry_id"]] != expected_postings(o)
    ]
    with httpx.Client(base_url=platform.front_door, timeout=15.0, trust_env=False) as http:
        trial = http.get("/ledger/trial-balance").json()

    recent = db_status(platform)["recent"]
    records = [r for r in recent if r.get("kind") == "failover"]
    platform_rto = _seconds(records[-1].get("rto_seconds")) if records else None
    promotions = [r for r in recent if r.get("kind") == "switchover-promotion"]
    switch_rto = _seconds(promotions[-1].get("rto_seconds")) if promotions else None
    stored = len(acknowledged["register"]) - len(lost_customers | lost_accounts)
    print(
        f"\nbank under faults: {len(outcomes)} requests in {stopped - began:.1f}s from "
        f"{CLIENTS} clients; acknowledged: {len(acknowledged['register'])} registrations, "
        f"{len(acknowledged['topup'])} top-ups, {len(acknowledged['transfer'])} transfers; "
        f"stored: {stored} registrations, {len(entries) - len(lost_entries)} ledger entries; "
        f"lost: {len(lost_customers) + len(lost_accounts)} customers/accounts, "
        f"{len(lost_entries)} entries; balances per currency {totals}; the platform's own "
        f"records: switchover rto {switch_rto}s, kill -9 rto {platform_rto}s"
    )
    for window in windows:
        print("  " + window.summary(fault=window is not windows[0]))
    print(f"  longest gap overall: {max(w.longest_gap for w in windows):.2f}s")

    assert lost_customers == set(), f"acknowledged customers lost: {sorted(lost_customers)[:10]}"
    assert lost_accounts == set(), f"acknowledged accounts lost: {sorted(lost_accounts)[:10]}"
    assert lost_entries == [], f"acknowledged ledger entries lost: {lost_entries[:10]}"
    assert wrong_entries == [], f"entries stored with other postings: {wrong_entries[:5]}"
    assert problems == [], problems
    assert trial["balanced"] is True and trial["balances_matching_postings"] is True, trial
    assert records and records[-1]["to"] == "jakarta", records
    for window in windows[1:]:
        assert window.client_rto is not None, window.summary(fault=True)
