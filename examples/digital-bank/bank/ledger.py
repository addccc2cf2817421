"""ledger: double-entry bookkeeping. Every entry's debits equal its credits, per currency.

Balances are credit-normal (credits minus debits): a customer's deposit is a credit to their
account. Customer accounts (``acc_…``) can never go below zero; the bank's own general-ledger
accounts (``gl:…``, e.g. ``gl:cash:teller``) can. Entries are idempotent by ``entry_id``.
"""

from __future__ import annotations

import re
import time
from collections import deque
from typing import Any

from bank.money import CURRENCIES
from bank.server import run
from bank.store import Store, new_id, now_iso
from bank.validate import MAX_AMOUNT, Fields
from bank.web import App, HTTPError, Request, Response, json_response

app = App("ledger", "Double-entry ledger: balanced entries, balances, postings, trial balance.")
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
    entry = entries.get(request.params["entry_id"])
    if entry is None:
        raise HTTPError(404, "no such entry", entry_id=request.params["entry_id"])
    return json_response(entry)


@app.get("/ledger/accounts/{account}/balance")
async def get_balance(request: Request) -> Response:
    account = request.params["account"]
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


if __name__ == "__main__":
    run(app)
