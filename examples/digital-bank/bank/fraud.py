"""fraud: scores a money movement 0-100 with explainable rules; allow, review or block.

Velocity and known-payee memory are per instance (in memory), which is what a real
deployment would keep in a shared store.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from bank.money import CURRENCIES, approx_idr
from bank.server import run
from bank.store import now_iso
from bank.validate import MAX_AMOUNT, Fields
from bank.web import App, HTTPError, Request, Response, json_response

app = App("fraud", "Scores transfers and payments for fraud risk with explainable rules.")
decisions = app.metrics.counter("bank_fraud_decisions_total", "Fraud decisions by outcome.")
REVIEW_AT = 50
BLOCK_AT = 80
HIGH_RISK_COUNTRIES = {"KP", "IR", "MM", "SY"}
RULES: list[tuple[str, int, str]] = [
    ("very_large_amount", 40, "at least IDR 100,000,000"),
    ("large_amount", 20, "at least IDR 25,000,000"),
    ("round_amount", 10, "a multiple of IDR 1,000,000"),
    ("velocity", 30, "more than 5 movements from the account in 60 s"),
    ("burst", 50, "more than 10 movements from the account in 60 s"),
    ("new_payee", 10, "first movement to this payee"),
    ("high_risk_country", 25, "country is one of " + ", ".join(sorted(HIGH_RISK_COUNTRIES))),
    ("night", 5, "between 00:00 and 05:00 WIB"),
    ("blocklisted", 100, "either account is on the block list"),
]
POINTS = {name: points for name, points, _ in RULES}

recent: dict[str, deque[float]] = {}
payees: dict[str, set[str]] = {}
blocklist: dict[str, dict[str, Any]] = {}
MAX_TRACKED = 100_000


def score(account: str, amount_idr: float, to_account: str, country: str, now: float) -> list[str]:
    """The rules that fire for one movement (updates velocity and payee memory)."""
    hits: list[str] = []
    if amount_idr >= 100_000_000:
        hits.append("very_large_amount")
    elif amount_idr >= 25_000_000:
        hits.append("large_amount")
    if amount_idr >= 1_000_000 and amount_idr % 1_000_000 == 0:
        hits.append("round_amount")
    if len(recent) > MAX_TRACKED:
        recent.clear()
        payees.clear()
    window = recent.setdefault(account, deque(maxlen=50))
    while window and window[0] < now - 60:
        window.popleft()
    window.append(now)
    if len(window) > 10:
        hits.append("burst")
    elif len(window) > 5:
        hits.append("velocity")
    if to_account:
        known = payees.setdefault(account, set())
        if to_account not in known:
            hits.append("new_payee")
            known.add(to_account)
    if country in HIGH_RISK_COUNTRIES:
        hits.append("high_risk_country")
    if time.gmtime(now + 7 * 3600).tm_hour < 5:
        hits.append("night")
    if account in blocklist or to_account in blocklist:
        hits.append("blocklisted")
    return hits


@app.post("/fraud/score")
async def score_movement(request: Request) -> Response:
    fields = Fields(request.json_object())
    account = fields.text("account_id", max_len=64)
    amount = fields.integer("amount", minimum=1, maximum=MAX_AMOUNT)
    currency = fields.choice("currency", CURRENCIES, default="IDR")
    to_account = fields.text("to_account", max_len=64, default="")
    country = fields.text("country", min_len=2, max_len=2, default="ID").upper()
    channel = fields.choice("channel", {"transfer", "payment", "card"}, default="transfer")
    fields.done()
    hits = score(account, approx_idr(amount, currency), to_account, country, time.time())
    points = min(100, sum(POINTS[h] for h in hits))
    decision = "block" if points >= BLOCK_AT else "review" if points >= REVIEW_AT else "allow"
    decisions.inc(decision=decision)
    return json_response(
        {
            "account_id": account,
            "channel": channel,
            "score": points,
            "decision": decision,
            "reasons": hits,
            "scored_at": now_iso(),
        }
    )


@app.get("/fraud/rules")
async def rules(request: Request) -> Response:
    listed = [{"rule": name, "points": points, "when": when} for name, points, when in RULES]
    return json_response({"rules": listed, "review_at": REVIEW_AT, "block_at": BLOCK_AT})


@app.post("/fraud/blocklist")
async def add_to_blocklist(request: Request) -> Response:
    fields = Fields(request.json_object())
    account = fields.text("account_id", max_len=64)
    reason = fields.text("reason", max_len=200)
    fields.done()
    if account in blocklist:
        raise HTTPError(409, "account already on the block list", account_id=account)
    blocklist[account] = {"account_id": account, "reason": reason, "added_at": now_iso()}
    return json_response(blocklist[account], 201)


if __name__ == "__main__":
    run(app)
