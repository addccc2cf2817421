"""payments: money in (top-ups by virtual account, ATM or teller) and bill payments.

A bill payment checks the customer reference against the biller's format, asks fraud for a
score and posts one ledger entry: the account pays the bill plus a fee, the biller's
settlement account and the fee income account are credited.
"""

from __future__ import annotations

import re
from typing import Any

from bank.calls import call
from bank.server import run
from bank.store import Store, new_id, now_iso
from bank.validate import Fields
from bank.web import App, HTTPError, Request, Response, json_response

app = App("payments", "Top-ups into accounts and bill payments to billers (PLN, PDAM, BPJS…).")
BILL_FEE = 2_500
TOPUP_CHANNELS = {"va", "atm", "teller"}
BILLERS: dict[str, tuple[str, str, int]] = {
    # code: (name, customer reference pattern, minimum amount in IDR)
    "pln": ("PLN electricity", r"\d{11,12}", 20_000),
    "pdam": ("PDAM water", r"\d{6,12}", 10_000),
    "bpjs": ("BPJS health insurance", r"\d{13}", 35_000),
    "telkomsel": ("Telkomsel prepaid", r"08\d{8,11}", 5_000),
    "indihome": ("IndiHome internet", r"\d{12}", 100_000),
}
payments: Store[dict[str, Any]] = Store()


def _account(fields: Fields) -> str:
    account = fields.text("account_id", max_len=64)
    if account and not account.startswith("acc_"):
        fields.fail("account_id", "must be an account id starting with acc_")
    return account


@app.post("/payments/topups", idempotent=True)
async def top_up(request: Request) -> Response:
    fields = Fields(request.json_object())
    account = _account(fields)
    amount = fields.integer("amount", minimum=10_000, maximum=500_000_000)
    channel = fields.choice("channel", TOPUP_CHANNELS, default="va")
    fields.done()
    payment_id = new_id("top")
    entry = {
        "entry_id": payment_id,
        "description": f"top-up by {channel}",
        "currency": "IDR",
        "postings": [
            {"account": f"gl:cash:{channel}", "direction": "debit", "amount": amount},
            {"account": account, "direction": "credit", "amount": amount},
        ],
    }
    _, ledger_by = await call(
        request, "ledger", "POST", "/ledger/entries", json=entry, idempotency_key=payment_id
    )
    payment = {
        "payment_id": payment_id,
        "kind": "topup",
        "account_id": account,
        "amount": amount,
        "currency": "IDR",
        "channel": channel,
        "status": "completed",
        "created_at": now_iso(),
    }
    payments.put(payment_id, payment)
    served_by = {"payments": app.instance, "ledger": ledger_by}
    return json_response({**payment, "served_by": served_by}, 201)


@app.post("/payments/bills", idempotent=True)
async def pay_bill(request: Request) -> Response:
    fields = Fields(request.json_object())
    account = _account(fields)
    biller = fields.choice("biller", BILLERS)
    reference = fields.text("customer_ref", max_len=20)
    amount = fields.integer("amount", minimum=1, maximum=100_000_000)
    if biller and reference:
        name, pattern, minimum = BILLERS[biller]
        if not re.fullmatch(pattern, reference):
            fields.fail("customer_ref", f"is not a valid {name} customer number")
        if amount and amount < minimum:
            fields.fail("amount", f"{name} accepts at least IDR {minimum:,}")
    fields.done()
    payment_id = new_id("pay")
    served_by = {"payments": app.instance}
    risk, served_by["fraud"] = await call(
        request,
        "fraud",
        "POST",
        "/fraud/score",
        json={
            "account_id": account,
            "to_account": f"biller:{biller}",
            "amount": amount,
            "channel": "payment",
        },
    )
    if risk.get("decision") != "allow":
        raise HTTPError(422, "payment refused by the fraud check", hop="fraud", fraud=risk)
    entry = {
        "entry_id": payment_id,
        "description": f"{BILLERS[biller][0]} {reference}",
        "currency": "IDR",
        "postings": [
            {"account": account, "direction": "debit", "amount": amount + BILL_FEE},
            {"account": f"gl:billers:{biller}", "direction": "credit", "amount": amount},
            {"account": "gl:fees:bills", "direction": "credit", "amount": BILL_FEE},
        ],
    }
    _, served_by["ledger"] = await call(
        request, "ledger", "POST", "/ledger/entries", json=entry, idempotency_key=payment_id
    )
    payment = {
        "payment_id": payment_id,
        "kind": "bill",
        "account_id": account,
        "biller": biller,
        "customer_ref": reference,
        "amount": amount,
        "fee": BILL_FEE,
        "currency": "IDR",
        "status": "completed",
        "created_at": now_iso(),
    }
    payments.put(payment_id, payment)
    return json_response({**payment, "served_by": served_by}, 201)


@app.get("/payments/billers")
async def list_billers(request: Request) -> Response:
    billers = [
        {"biller": code, "name": name, "min_amount": minimum, "fee": BILL_FEE}
        for code, (name, _, minimum) in BILLERS.items()
    ]
    return json_response({"billers": billers})


@app.get("/payments/{payment_id}")
async def get_payment(request: Request) -> Response:
    payment = payments.get(request.params["payment_id"])
    if payment is None:
        raise HTTPError(404, "no such payment", payment_id=request.params["payment_id"])
    return json_response(payment)


if __name__ == "__main__":
    run(app)
