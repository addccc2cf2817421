"""loans: personal loan simulation, applications with an affordability rule, disbursement.

Instalments are annuities at a fixed yearly rate per tenor. An application is approved when
the instalment is at most 30% of the monthly income (debt-service ratio). Disbursing posts
the principal from the loan book to the customer's account through the ledger.
"""

from __future__ import annotations

import math
from typing import Any

from bank.calls import call
from bank.server import run
from bank.store import Store, new_id, now_iso
from bank.validate import Fields, query_int
from bank.web import App, HTTPError, Request, Response, json_response

app = App("loans", "Personal loans: simulate, apply (affordability check) and disburse.")
YEARLY_RATE = {6: 0.085, 12: 0.095, 24: 0.105, 36: 0.115, 48: 0.125, 60: 0.125}
MIN_AMOUNT = 1_000_000
MAX_AMOUNT = 500_000_000
MAX_DSR = 0.30
applications: Store[dict[str, Any]] = Store()


def instalment(amount: int, tenor: int) -> int:
    monthly = YEARLY_RATE[tenor] / 12
    return math.ceil(amount * monthly / (1 - (1 + monthly) ** -tenor))


def simulation(amount: int, tenor: int) -> dict[str, Any]:
    monthly = instalment(amount, tenor)
    return {
        "amount": amount,
        "tenor_months": tenor,
        "yearly_rate": YEARLY_RATE[tenor],
        "monthly_instalment": monthly,
        "total_repayment": monthly * tenor,
        "total_interest": monthly * tenor - amount,
    }


def _tenor_problem(tenor: int) -> str | None:
    if tenor not in YEARLY_RATE:
        return f"must be one of {', '.join(map(str, sorted(YEARLY_RATE)))}"
    return None


@app.get("/loans/simulate")
async def simulate(request: Request) -> Response:
    amount = query_int(request, "amount", 0, MIN_AMOUNT, MAX_AMOUNT)
    tenor = query_int(request, "tenor_months", 12, 1, 120)
    if not amount:
        raise HTTPError(400, "invalid request", fields={"amount": "is required"})
    problem = _tenor_problem(tenor)
    if problem:
        raise HTTPError(400, "invalid request", fields={"tenor_months": problem})
    return json_response(simulation(amount, tenor))


@app.post("/loans/applications", idempotent=True)
async def apply(request: Request) -> Response:
    fields = Fields(request.json_object())
    customer_id = fields.text("customer_id", max_len=64)
    account_id = fields.text("account_id", max_len=64)
    amount = fields.integer("amount", minimum=MIN_AMOUNT, maximum=MAX_AMOUNT)
    tenor = fields.integer("tenor_months", minimum=1, maximum=120)
    income = fields.integer("monthly_income", minimum=1, maximum=10**12)
    problem = _tenor_problem(tenor) if tenor else None
    if problem:
        fields.fail("tenor_months", problem)
    if account_id and not account_id.startswith("acc_"):
        fields.fail("account_id", "must be an account id starting with acc_")
    fields.done()
    terms = simulation(amount, tenor)
    ratio = terms["monthly_instalment"] / income
    approved = ratio <= MAX_DSR
    application = {
        "application_id": new_id("lna"),
        "customer_id": customer_id,
        "account_id": account_id,
        **terms,
        "monthly_income": income,
        "debt_service_ratio": round(ratio, 4),
        "status": "approved" if approved else "declined",
        "reason": None if approved else f"instalment is over {MAX_DSR:.0%} of monthly income",
        "applied_at": now_iso(),
    }
    applications.put(application["application_id"], application)
    return json_response(application, 201)


@app.get("/loans/applications/{application_id}")
async def get_application(request: Request) -> Response:
    application = applications.get(request.params["application_id"])
    if application is None:
        raise HTTPError(404, "no such application", id=request.params["application_id"])
    return json_response(application)


@app.post("/loans/applications/{application_id}/disburse")
async def disburse(request: Request) -> Response:
    application = applications.get(request.params["application_id"])
    if application is None:
        raise HTTPError(404, "no such application", id=request.params["application_id"])
    if application["status"] != "approved":
        raise HTTPError(409, f"cannot disburse a loan that is {application['status']}")
    application["status"] = "disbursing"
    entry = {
        "entry_id": application["application_id"],
        "description": f"loan disbursement {application['application_id']}",
        "currency": "IDR",
        "postings": [
            {
                "account": "gl:loans:receivable",
                "direction": "debit",
                "amount": application["amount"],
            },
            {
                "account": application["account_id"],
                "direction": "credit",
                "amount": application["amount"],
            },
        ],
    }
    try:
        _, ledger_by = await call(
            request,
            "ledger",
            "POST",
            "/ledger/entries",
            json=entry,
            idempotency_key=application["application_id"],
        )
    except HTTPError:
        application["status"] = "approved"
        raise
    application["status"] = "disbursed"
    application["disbursed_at"] = now_iso()
    served_by = {"loans": app.instance, "ledger": ledger_by}
    return json_response({**application, "served_by": served_by})


if __name__ == "__main__":
    run(app)
