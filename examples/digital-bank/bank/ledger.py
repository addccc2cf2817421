"""ledger: double-entry bookkeeping. Every entry's debits equal its credits, per currency.

Balances are credit-normal (credits minus debits): a customer's deposit is a credit to their
account. Customer accounts (``acc_…``) can never go below zero; the bank's own general-ledger
accounts (``gl:…``, e.g. ``gl:cash:teller``) can. Entries are idempotent by ``entry_id``.

With ``DATABASE_URL`` an entry is ONE PostgreSQL transaction (see :mod:`bank.db`): lock the
entry's accounts (``SELECT … FOR UPDATE`` in account id order, so two entries never
deadlock), check funds, insert one ``ledger_entries`` row per posting (signed: credit +,
debit -) and ``UPDATE accounts SET balance = balance + net``. A customer account must have
been opened by the accounts service (same database) and every account holds one currency;
a bank account (``gl:…``) is created on its first posting. So in every currency the
balances of all accounts sum to 0 and each balance is the sum of its rows. Without it,
in-memory tables per instance.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bank import db
from bank.money import CURRENCIES
from bank.server import run
from bank.store import Store, new_id, now_iso
from bank.validate import MAX_AMOUNT, Fields
from bank.web import App, HTTPError, Request, Response, json_response

if TYPE_CHECKING:
    from psycopg import AsyncCursor

    Cursor = AsyncCursor[dict[str, Any]]

app = App("ledger", "Double-entry ledger: balanced entries, balances, postings, trial balance.")
database = db.setup(app, "/ledger/db")  # None: in-memory tables
ENTRY_ID = re.compile(r"^[A-Za-z0-9_:.-]{1,80}$")
ACCOUNT = re.compile(r"^(gl:[a-z0-9_:.-]{1,60}|[A-Za-z0-9_]{1,64})$")
POSTINGS_KEPT = 1000  # per account, for statements

entries: Store[dict[str, Any]] = Store()
balances: dict[str, dict[str, int]] = {}
postings: dict[str, deque[dict[str, Any]]] = {}
totals: dict[str, list[int]] = {}  # currency -> [debits, credits], for the trial balance


def _parse_postings(fields: Fields, raw: list[Any]) -> list[dict[str, Any]]:
    parsed: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        where = f"postings[{index}]"
        if not isinstance(item, dict):
            fields.fail(where, "must be an object with account, direction and amount")
            continue
        one = Fields(item)
        account = one.text("account", max_len=64)
        direction = one.choice("direction", {"debit", "credit"})
        amount = one.integer("amount", minimum=1, maximum=MAX_AMOUNT)
        if account and not ACCOUNT.match(account):
            one.fail("account", "must be an account id (acc_…) or a gl:… account")
        for name, message in one.errors.items():
            fields.fail(f"{where}.{name}", message)
        parsed.append({"account": account, "direction": direction, "amount": amount})
    return parsed


def _net(lines: list[dict[str, Any]]) -> dict[str, int]:
    net: dict[str, int] = {}
    for line in lines:
        sign = 1 if line["direction"] == "credit" else -1
        net[line["account"]] = net.get(line["account"], 0) + sign * line["amount"]
    return net


@app.post("/ledger/entries")
async def post_entry(request: Request) -> Response:
    fields = Fields(request.json_object())
    entry_id = fields.text("entry_id", max_len=80, default="") or new_id("ent")
    description = fields.text("description", max_len=200)
    currency = fields.choice("currency", CURRENCIES, default="IDR")
    lines = _parse_postings(fields, fields.items("postings", min_items=2, max_items=50))
    if not ENTRY_ID.match(entry_id):
        fields.fail("entry_id", "letters, digits and _ : . - only")
    fields.done()
    debits = sum(p["amount"] for p in lines if p["direction"] == "debit")
    credits = sum(p["amount"] for p in lines if p["direction"] == "credit")
    if debits != credits:
        raise HTTPError(400, f"entry does not balance: debits {debits} != credits {credits}")
    if database is not None:
        entry, created = await _db_post(entry_id, description, currency, lines)
        return json_response(
            entry if created else {**entry, "replayed": True}, 201 if created else 200
        )
    existing = entries.get(entry_id)
    if existing is not None:
        if existing["postings"] == lines and existing["currency"] == currency:
            return json_response({**existing, "replayed": True}, 200)
        raise HTTPError(409, "entry_id already used for a different entry", entry_id=entry_id)
    net = _net(lines)
    for account, change in net.items():
        current = balances.get(account, {}).get(currency, 0)
        if not account.startswith("gl:") and current + change < 0:
            raise HTTPError(
                409, "insufficient funds", account=account, balance=current, needed=-change
            )
    at = time.time()
    entry = {
        "entry_id": entry_id,
        "description": description,
        "currency": currency,
        "postings": lines,
        "posted_at": now_iso(at),
    }
    entries.put(entry_id, entry)
    for line in lines:
        account = line["account"]
        sign = 1 if line["direction"] == "credit" else -1
        per_currency = balances.setdefault(account, {})
        per_currency[currency] = per_currency.get(currency, 0) + sign * line["amount"]
        kept = postings.setdefault(account, deque(maxlen=POSTINGS_KEPT))
        kept.append(
            {
                "entry_id": entry_id,
                "at": at,
                "currency": currency,
                **line,
                "description": description,
            }
        )
    total = totals.setdefault(currency, [0, 0])
    total[0] += debits
    total[1] += credits
    return json_response(entry, 201)


@app.get("/ledger/entries/{entry_id}")
async def get_entry(request: Request) -> Response:
    if database is not None:
        entry = await database.run(_loader(request.params["entry_id"]))
    else:
        entry = entries.get(request.params["entry_id"])
    if entry is None:
        raise HTTPError(404, "no such entry", entry_id=request.params["entry_id"])
    return json_response(entry)


@app.get("/ledger/accounts/{account}/balance")
async def get_balance(request: Request) -> Response:
    account = request.params["account"]
    if database is not None:
        return json_response({"account": account, "balances": await _db_balances(account)})
    return json_response({"account": account, "balances": balances.get(account, {})})


@app.get("/ledger/accounts/{account}/postings")
async def get_postings(request: Request) -> Response:
    """Postings in [since, until) (unix seconds), with the balance before and after."""
    account = request.params["account"]
    currency = request.query.get("currency", "IDR")
    try:
        since = float(request.query.get("since", "0"))
        until = float(request.query.get("until", "1e12"))
    except ValueError:
        raise HTTPError(400, "since and until must be unix times in seconds") from None
    if currency not in CURRENCIES:
        raise HTTPError(400, "invalid request", fields={"currency": "unknown currency"})
    if database is not None:
        closing, window = await _db_postings(account, currency, since, until)
    else:
        kept = [p for p in postings.get(account, ()) if p["currency"] == currency]
        closing_now = balances.get(account, {}).get(currency, 0)
        later = sum(_signed(p) for p in kept if p["at"] >= until)
        window = [p for p in kept if since <= p["at"] < until]
        closing = closing_now - later
    opening = closing - sum(_signed(p) for p in window)
    lines = [{**p, "at": now_iso(p["at"])} for p in window]
    return json_response(
        {
            "account": account,
            "currency": currency,
            "opening": opening,
            "closing": closing,
            "postings": lines,
        }
    )


def _signed(posting: dict[str, Any]) -> int:
    amount: int = posting["amount"]
    return amount if posting["direction"] == "credit" else -amount


@app.get("/ledger/trial-balance")
async def trial_balance(request: Request) -> Response:
    """Debits equal credits in every currency, and all balances sum to zero."""
    if database is not None:
        return json_response(await database.run(_db_trial_balance))
    sums: dict[str, int] = {}
    for per_currency in balances.values():
        for currency, amount in per_currency.items():
            sums[currency] = sums.get(currency, 0) + amount
    report = {
        currency: {"debits": d, "credits": c, "sum_of_balances": sums.get(currency, 0)}
        for currency, (d, c) in totals.items()
    }
    balanced = all(
        r["debits"] == r["credits"] and r["sum_of_balances"] == 0 for r in report.values()
    )
    return json_response(
        {
            "balanced": balanced,
            "currencies": report,
            "accounts": len(balances),
            "entries": len(entries),
        }
    )


# --------------------------------------------------------------------------- PostgreSQL


def _loader(entry_id: str) -> Callable[[Cursor], Awaitable[dict[str, Any] | None]]:
    async def load(cur: Cursor) -> dict[str, Any] | None:
        return await _db_entry(cur, entry_id)

    return load


async def _db_entry(cur: Cursor, entry_id: str) -> dict[str, Any] | None:
    await cur.execute(
        "SELECT account_id, amount, currency, description, created_at FROM ledger_entries"
        " WHERE entry_id = %s ORDER BY line",
        (entry_id,),
    )
    rows = await cur.fetchall()
    if not rows:
        return None
    return {
        "entry_id": entry_id,
        "description": rows[0]["description"],
        "currency": rows[0]["currency"],
        "postings": [
            {
                "account": row["account_id"],
                "direction": "credit" if row["amount"] > 0 else "debit",
                "amount": abs(row["amount"]),
            }
            for row in rows
        ],
        "posted_at": db.iso(rows[0]["created_at"]),
    }


async def _db_post(
    entry_id: str, description: str, currency: str, lines: list[dict[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """Post an entry in one transaction; (entry, True) or (the existing entry, False)."""
    assert database is not None
    net = _net(lines)
    involved = sorted(net)

    async def work(cur: Cursor) -> tuple[dict[str, Any], bool]:
        existing = await _db_entry(cur, entry_id)
        if existing is not None:
            if existing["postings"] == lines and existing["currency"] == currency:
                return existing, False
            raise HTTPError(409, "entry_id already used for a different entry", entry_id=entry_id)
        for account in involved:  # the bank's own accounts open on first use
            if account.startswith("gl:"):
                await cur.execute(
                    "INSERT INTO accounts (id, kind, currency) VALUES (%s, 'bank', %s)"
                    " ON CONFLICT (id) DO NOTHING",
                    (account, currency),
                )
        await cur.execute(
            "SELECT id, kind, currency, status, balance FROM accounts WHERE id = ANY(%s)"
            " ORDER BY id FOR UPDATE",
            (involved,),
        )
        found = {row["id"]: row for row in await cur.fetchall()}
        for account in involved:
            row = found.get(account)
            if row is None:
                raise HTTPError(404, "no such account", account=account)
            if row["currency"] != currency:
                raise HTTPError(
                    409,
                    f"account holds {row['currency']}, not {currency}",
                    account=account,
                    account_currency=row["currency"],
                )
            change = net[account]
            if row["kind"] == "customer" and change < 0:
                if row["status"] != "active":
                    raise HTTPError(409, f"account is {row['status']}", account=account)
                if row["balance"] + change < 0:
                    raise HTTPError(
                        409,
                        "insufficient funds",
                        account=account,
                        balance=row["balance"],
                        needed=-change,
                    )
        await cur.executemany(
            "INSERT INTO ledger_entries (entry_id, line, account_id, currency, amount,"
            " description) VALUES (%s, %s, %s, %s, %s, %s)",
            [
                (
                    entry_id,
                    index,
                    line["account"],
                    currency,
                    line["amount"] if line["direction"] == "credit" else -line["amount"],
                    description,
                )
                for index, line in enumerate(lines)
            ],
        )
        for account in involved:
            if net[account]:
                await cur.execute(
                    "UPDATE accounts SET balance = balance + %s WHERE id = %s",
                    (net[account], account),
                )
        await cur.execute("SELECT now() AS posted_at")
        row = await cur.fetchone()
        assert row is not None
        entry = {
            "entry_id": entry_id,
            "description": description,
            "currency": currency,
            "postings": lines,
            "posted_at": db.iso(row["posted_at"]),
        }
        return entry, True

    # The same entry_id posted twice at once: the second INSERT violates (entry_id, line),
    # and its next attempt finds the first one's entry (a replay, or a 409 if it differs).
    return await database.run_again_on_conflict(work)


async def _db_balances(account: str) -> dict[str, int]:
    assert database is not None

    async def work(cur: Cursor) -> dict[str, int]:
        await cur.execute("SELECT currency, balance FROM accounts WHERE id = %s", (account,))
        return {row["currency"]: row["balance"] for row in await cur.fetchall()}

    return await database.run(work)


async def _db_postings(
    account: str, currency: str, since: float, until: float
) -> tuple[int, list[dict[str, Any]]]:
    """(balance at ``until``, the latest POSTINGS_KEPT postings in [since, until))."""
    assert database is not None

    async def work(cur: Cursor) -> tuple[int, list[dict[str, Any]]]:
        window = "created_at < to_timestamp(%s)"
        await cur.execute(
            "SELECT coalesce(sum(amount), 0)::bigint AS closing FROM ledger_entries"
            f" WHERE account_id = %s AND currency = %s AND {window}",
            (account, currency, until),
        )
        row = await cur.fetchone()
        closing = int(row["closing"]) if row else 0
        await cur.execute(
            "SELECT entry_id, extract(epoch FROM created_at)::float8 AS at, amount, description"
            " FROM ledger_entries WHERE account_id = %s AND currency = %s"
            f" AND created_at >= to_timestamp(%s) AND {window} ORDER BY id DESC LIMIT %s",
            (account, currency, since, until, POSTINGS_KEPT),
        )
        rows = await cur.fetchall()
        return closing, [
            {
                "entry_id": row["entry_id"],
                "at": row["at"],
                "currency": currency,
                "account": account,
                "direction": "credit" if row["amount"] > 0 else "debit",
                "amount": abs(row["amount"]),
                "description": row["description"],
            }
            for row in reversed(rows)
        ]

    return await database.run(work)


async def _db_trial_balance(cur: Cursor) -> dict[str, Any]:
    """The trial balance, and the invariant: each balance is the sum of its postings."""
    await cur.execute(
        "SELECT currency, coalesce(sum(-amount) FILTER (WHERE amount < 0), 0)::bigint AS debits,"
        " coalesce(sum(amount) FILTER (WHERE amount > 0), 0)::bigint AS credits,"
        " count(DISTINCT entry_id) AS entries FROM ledger_entries GROUP BY currency"
    )
    totals_by_currency = {row["currency"]: row for row in await cur.fetchall()}
    await cur.execute(
        "SELECT currency, sum(balance)::bigint AS total, count(*) AS n FROM accounts"
        " GROUP BY currency"
    )
    sums = {row["currency"]: row for row in await cur.fetchall()}
    await cur.execute(
        "SELECT count(*) AS n FROM accounts a LEFT JOIN (SELECT account_id,"
        " sum(amount) AS total FROM ledger_entries GROUP BY account_id) p"
        " ON p.account_id = a.id WHERE a.balance <> coalesce(p.total, 0)"
    )
    row = await cur.fetchone()
    mismatched = int(row["n"]) if row else 0
    report = {}
    for currency in sorted(set(totals_by_currency) | set(sums)):
        moved = totals_by_currency.get(currency, {})
        report[currency] = {
            "debits": int(moved.get("debits", 0)),
            "credits": int(moved.get("credits", 0)),
            "sum_of_balances": int(sums.get(currency, {}).get("total", 0)),
        }
    balanced = mismatched == 0 and all(
        r["debits"] == r["credits"] and r["sum_of_balances"] == 0 for r in report.values()
    )
    return {
        "balanced": balanced,
        "currencies": report,
        "accounts": sum(int(r["n"]) for r in sums.values()),
        "entries": sum(int(r["entries"]) for r in totals_by_currency.values()),
        "balances_matching_postings": mismatched == 0,
        "storage": "postgresql",
    }


if __name__ == "__main__":
    run(app)
