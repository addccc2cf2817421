"""accounts: opens savings and current accounts; balances come from the ledger.

An account number has 10 digits: a 3-digit branch code from the customer's city, 6 random
digits and a Luhn check digit, so a mistyped number is caught before money moves.
"""

from __future__ import annotations

from typing import Any

from bank.calls import call
from bank.money import CURRENCIES
from bank.server import run
from bank.store import Store, luhn_digit, new_id, now_iso, random_digits
from bank.validate import Fields, query_int
from bank.web import App, HTTPError, Request, Response, json_response

app = App("accounts", "Opens and lists customer accounts; balances are read from the ledger.")
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
    owned = by_customer.setdefault(customer_id, [])
    if len(owned) >= MAX_PER_CUSTOMER:
        raise HTTPError(409, f"a customer can hold at most {MAX_PER_CUSTOMER} accounts")
    account = {
        "account_id": new_id("acc"),
        "account_number": account_number(city),
        "customer_id": customer_id,
        "product": product,
        "currency": currency,
        "status": "active",
        "opened_at": now_iso(),
    }
    accounts.put(account["account_id"], account)
    owned.append(account["account_id"])
    return json_response(account, 201)


@app.get("/accounts/{account_id}")
async def get_account(request: Request) -> Response:
    return json_response(_find(request.params["account_id"]))


@app.get("/accounts")
async def list_accounts(request: Request) -> Response:
    customer_id = request.query.get("customer_id", "")
    if not customer_id:
        raise HTTPError(400, "invalid request", fields={"customer_id": "is required"})
    limit = query_int(request, "limit", 20, 1, 100)
    found = [accounts.get(a) for a in by_customer.get(customer_id, [])[:limit]]
    return json_response({"customer_id": customer_id, "accounts": [a for a in found if a]})


@app.get("/accounts/{account_id}/balance")
async def balance(request: Request) -> Response:
    account = _find(request.params["account_id"])
    ledger, served_by = await call(
        request, "ledger", "GET", f"/ledger/accounts/{account['account_id']}/balance"
    )
    amount = ledger.get("balances", {}).get(account["currency"], 0)
    return json_response(
        {
            "account_id": account["account_id"],
            "account_number": account["account_number"],
            "currency": account["currency"],
            "balance": amount,
            "served_by": {"accounts": app.instance, "ledger": served_by},
        }
    )


if __name__ == "__main__":
    run(app)
