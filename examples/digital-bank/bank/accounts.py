"""accounts: opens savings and current accounts; balances come from the ledger.

An account number has 10 digits: a 3-digit branch code from the customer's city, 6 random
digits and a Luhn check digit, so a mistyped number is caught before money moves.

With ``DATABASE_URL`` accounts are rows of the ``accounts`` table in PostgreSQL (see
:mod:`bank.db`), whose ``balance`` the ledger keeps in the same transaction as its postings,
so a balance is read from the table; without it, an in-memory table per instance and the
balance comes from the ledger service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bank import db
from bank.calls import call
from bank.money import CURRENCIES
from bank.server import run
from bank.store import Store, luhn_digit, new_id, now_iso, random_digits
from bank.validate import Fields, query_int
from bank.web import App, HTTPError, Request, Response, json_response

if TYPE_CHECKING:
    from psycopg import AsyncCursor

    Cursor = AsyncCursor[dict[str, Any]]

app = App("accounts", "Opens and lists customer accounts; balances are read from the ledger.")
database = db.setup(app, "/accounts/db")  # None: in-memory tables
COLUMNS = "id, number, customer_id, product, currency, status, opened_at"
PRODUCTS = {"savings", "current", "time_deposit"}
BRANCHES = {"jakarta": "101", "surabaya": "201", "bandung": "301", "medan": "401"}
MAX_PER_CUSTOMER = 5
by_customer: dict[str, list[str]] = {}


def _forget(account_id: str, account: dict[str, Any]) -> None:
    owned = by_customer.get(account["customer_id"], [])
    if account_id in owned:
        owned.remove(account_id)


accounts: Store[dict[str, Any]] = Store(on_evict=_forget)


def account_number(city: str) -> str:
    payload = BRANCHES.get(city, "901") + random_digits(6)
    return payload + luhn_digit(payload)


def _find(account_id: str) -> dict[str, Any]:
    account = accounts.get(account_id)
    if account is None:
        raise HTTPError(404, "no such account", account_id=account_id)
    return account


@app.post("/accounts", idempotent=True)
async def open_account(request: Request) -> Response:
    fields = Fields(request.json_object())
    customer_id = fields.text("customer_id", max_len=64)
    product = fields.choice("product", PRODUCTS, default="savings")
    currency = fields.choice("currency", CURRENCIES, default="IDR")
    city = fields.text("city", max_len=50, default="").lower()
    fields.done()
    if not customer_id.startswith("cus_"):
        raise HTTPError(400, "invalid request", fields={"customer_id": "must start with cus_"})
    account = {
        "account_id": new_id("acc"),
        "account_number": account_number(city),
        "customer_id": customer_id,
        "product": product,
        "currency": currency,
        "status": "active",
        "opened_at": now_iso(),
    }
    if database is not None:
        return json_response(await _db_open(account, city), 201)
    owned = by_customer.setdefault(customer_id, [])
    if len(owned) >= MAX_PER_CUSTOMER:
        raise HTTPError(409, f"a customer can hold at most {MAX_PER_CUSTOMER} accounts")
    accounts.put(account["account_id"], account)
    owned.append(account["account_id"])
    return json_response(account, 201)


@app.get("/accounts/{account_id}")
async def get_account(request: Request) -> Response:
    if database is not None:
        return json_response(await _db_get(request.params["account_id"]))
    return json_response(_find(request.params["account_id"]))


@app.get("/accounts")
async def list_accounts(request: Request) -> Response:
    customer_id = request.query.get("customer_id", "")
    if not customer_id:
        raise HTTPError(400, "invalid request", fields={"customer_id": "is required"})
    limit = query_int(request, "limit", 20, 1, 100)
    if database is not None:
        listed = await _db_list(customer_id, limit)
        return json_response({"customer_id": customer_id, "accounts": listed})
    found = [accounts.get(a) for a in by_customer.get(customer_id, [])[:limit]]
    return json_response({"customer_id": customer_id, "accounts": [a for a in found if a]})


@app.get("/accounts/{account_id}/balance")
async def balance(request: Request) -> Response:
    if database is not None:
        account = await _db_get(request.params["account_id"], with_balance=True)
        amount = account.pop("balance")
        served_by = {"accounts": app.instance}
    else:
        account = _find(request.params["account_id"])
        ledger, ledger_by = await call(
            request, "ledger", "GET", f"/ledger/accounts/{account['account_id']}/balance"
        )
        amount = ledger.get("balances", {}).get(account["currency"], 0)
        served_by = {"accounts": app.instance, "ledger": ledger_by}
    return json_response(
        {
            "account_id": account["account_id"],
            "account_number": account["account_number"],
            "currency": account["currency"],
            "balance": amount,
            "served_by": served_by,
        }
    )


# --------------------------------------------------------------------------- PostgreSQL


def _row(row: dict[str, Any]) -> dict[str, Any]:
    account = {
        "account_id": row["id"],
        "account_number": row["number"],
        "customer_id": row["customer_id"],
        "product": row["product"],
        "currency": row["currency"],
        "status": row["status"],
        "opened_at": db.iso(row["opened_at"]),
    }
    if "balance" in row:
        account["balance"] = row["balance"]
    return account


async def _db_open(account: dict[str, Any], city: str) -> dict[str, Any]:
    assert database is not None

    async def work(cur: Cursor) -> dict[str, Any]:
        # One opening per customer at a time, so the limit holds across instances.
        await cur.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
            (db.ACCOUNT_LOCKS, account["customer_id"]),
        )
        await cur.execute(
            "SELECT count(*) AS n FROM accounts WHERE kind = 'customer' AND customer_id = %s",
            (account["customer_id"],),
        )
        row = await cur.fetchone()
        if row is not None and row["n"] >= MAX_PER_CUSTOMER:
            raise HTTPError(409, f"a customer can hold at most {MAX_PER_CUSTOMER} accounts")
        number = account["account_number"]
        for _ in range(20):  # a number already in use: draw another
            await cur.execute("SELECT 1 FROM accounts WHERE number = %s", (number,))
            if await cur.fetchone() is None:
                break
            number = account_number(city)
        await cur.execute(
            "INSERT INTO accounts (id, kind, customer_id, number, product, currency, status,"
            " balance) VALUES (%s, 'customer', %s, %s, %s, %s, %s, 0) RETURNING opened_at",
            (
                account["account_id"],
                account["customer_id"],
                number,
                account["product"],
                account["currency"],
                account["status"],
            ),
        )
        opened = await cur.fetchone()
        assert opened is not None
        return {**account, "account_number": number, "opened_at": db.iso(opened["opened_at"])}

    # Two openings drawing the same new number at once: the loser tries again.
    return await database.run_again_on_conflict(work)


async def _db_get(account_id: str, *, with_balance: bool = False) -> dict[str, Any]:
    assert database is not None
    columns = COLUMNS + (", balance" if with_balance else "")

    async def work(cur: Cursor) -> dict[str, Any] | None:
        await cur.execute(
            f"SELECT {columns} FROM accounts WHERE id = %s AND kind = 'customer'", (account_id,)
        )
        return await cur.fetchone()

    row = await database.run(work)
    if row is None:
        raise HTTPError(404, "no such account", account_id=account_id)
    return _row(row)


async def _db_list(customer_id: str, limit: int) -> list[dict[str, Any]]:
    assert database is not None

    async def work(cur: Cursor) -> list[dict[str, Any]]:
        await cur.execute(
            f"SELECT {COLUMNS} FROM accounts WHERE kind = 'customer' AND customer_id = %s"
            " ORDER BY opened_at, id LIMIT %s",
            (customer_id, limit),
        )
        return await cur.fetchall()

    return [_row(row) for row in await database.run(work)]


if __name__ == "__main__":
    run(app)
