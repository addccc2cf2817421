"""cards: issues debit and virtual cards, blocks them, and authorizes card purchases.

Card numbers are Luhn-valid 16-digit PANs and are only ever shown masked. Authorizations
answer with ISO 8583 response codes: 00 approved, 57 not permitted (merchant category),
61 over the daily limit, 62 restricted (blocked) card.
"""

from __future__ import annotations

import time
from typing import Any

from bank.server import run
from bank.store import Store, luhn_digit, new_id, now_iso, random_digits
from bank.validate import Fields
from bank.web import App, HTTPError, Request, Response, json_response

app = App("cards", "Debit and virtual cards: issue, block, and authorize purchases.")
BIN = "522184"
BLOCKED_MCC = {"7995": "gambling", "5993": "tobacco"}
decisions = app.metrics.counter("bank_card_authorizations_total", "Card authorizations by code.")
cards: Store[dict[str, Any]] = Store()


def _find(request: Request) -> dict[str, Any]:
    card = cards.get(request.params["card_id"])
    if card is None:
        raise HTTPError(404, "no such card", card_id=request.params["card_id"])
    return card


def _public(card: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in card.items() if k not in ("pan", "spent")}


@app.post("/cards", idempotent=True)
async def issue_card(request: Request) -> Response:
    fields = Fields(request.json_object())
    account = fields.text("account_id", max_len=64)
    kind = fields.choice("kind", {"debit", "virtual"}, default="debit")
    limit = fields.integer("daily_limit", minimum=100_000, maximum=100_000_000, default=10_000_000)
    if account and not account.startswith("acc_"):
        fields.fail("account_id", "must be an account id starting with acc_")
    fields.done()
    payload = BIN + random_digits(9)
    pan = payload + luhn_digit(payload)
    expiry = time.gmtime(time.time() + 5 * 365 * 86400)
    card: dict[str, Any] = {
        "card_id": new_id("crd"),
        "account_id": account,
        "kind": kind,
        "pan": pan,
        "pan_masked": f"{pan[:6]}******{pan[-4:]}",
        "expiry": f"{expiry.tm_mon:02d}/{expiry.tm_year % 100:02d}",
        "daily_limit": limit,
        "status": "active",
        "spent": {},
        "issued_at": now_iso(),
    }
    cards.put(card["card_id"], card)
    return json_response(_public(card), 201)


@app.get("/cards/{card_id}")
async def get_card(request: Request) -> Response:
    return json_response(_public(_find(request)))


@app.post("/cards/{card_id}/block")
async def block_card(request: Request) -> Response:
    card = _find(request)
    fields = Fields(request.json_object())
    reason = fields.choice("reason", {"lost", "stolen", "fraud", "customer_request"})
    fields.done()
    card["status"] = "blocked"
    card["blocked_reason"] = reason
    card["blocked_at"] = now_iso()
    return json_response(_public(card))


@app.post("/cards/{card_id}/authorizations")
async def authorize(request: Request) -> Response:
    card = _find(request)
    fields = Fields(request.json_object())
    amount = fields.integer("amount", minimum=1, maximum=1_000_000_000)
    merchant = fields.text("merchant", max_len=100)
    mcc = fields.text("mcc", min_len=4, max_len=4, default="5411")
    if not mcc.isdigit():
        fields.fail("mcc", "must be a 4-digit merchant category code")
    fields.done()
    today = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 7 * 3600))
    spent = card["spent"].get(today, 0)
    if card["status"] != "active":
        code, reason = "62", f"card is {card['status']}"
    elif mcc in BLOCKED_MCC:
        code, reason = "57", f"{BLOCKED_MCC[mcc]} merchants are not permitted"
    elif spent + amount > card["daily_limit"]:
        code, reason = "61", f"daily limit {card['daily_limit']} would be exceeded"
    else:
        code, reason = "00", "approved"
        card["spent"] = {today: spent + amount}
    decisions.inc(code=code)
    return json_response(
        {
            "authorization_id": new_id("aut"),
            "card_id": card["card_id"],
            "approved": code == "00",
            "response_code": code,
            "reason": reason,
            "auth_code": random_digits(6) if code == "00" else None,
            "amount": amount,
            "merchant": merchant,
            "mcc": mcc,
            "at": now_iso(),
        }
    )


if __name__ == "__main__":
    run(app)
