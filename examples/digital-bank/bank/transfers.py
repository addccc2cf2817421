"""transfers: moves money between two accounts: fraud scoring first, then a ledger entry.

``allow`` posts the entry (201, completed); ``review`` holds the transfer (202); ``block``
refuses it (422). The ledger refuses an overdraft (409). The transfer id is the ledger
entry id, so a retried transfer can never post twice.
"""

from __future__ import annotations

from typing import Any

from bank.calls import call
from bank.money import CURRENCIES
from bank.server import run
from bank.store import Store, new_id, now_iso
from bank.validate import MAX_AMOUNT, Fields, query_int
from bank.web import App, HTTPError, Request, Response, json_response

app = App("transfers", "Account-to-account transfers: fraud check, then a double-entry posting.")
transfers: Store[dict[str, Any]] = Store()
outcomes = app.metrics.counter("bank_transfers_total", "Transfers by final status.")


def _finish(transfer: dict[str, Any], status: str) -> dict[str, Any]:
    transfer["status"] = status
    transfer["updated_at"] = now_iso()
    transfers.put(transfer["transfer_id"], transfer)
    outcomes.inc(status=status)
    return transfer


@app.post("/transfers", idempotent=True)
async def create_transfer(request: Request) -> Response:
    fields = Fields(request.json_object())
    source = fields.text("from_account", max_len=64)
    target = fields.text("to_account", max_len=64)
    amount = fields.integer("amount", minimum=1, maximum=MAX_AMOUNT)
    currency = fields.choice("currency", CURRENCIES, default="IDR")
    reference = fields.text("reference", max_len=140, default="")
    for name, value in (("from_account", source), ("to_account", target)):
        if value and not value.startswith("acc_"):
            fields.fail(name, "must be an account id starting with acc_")
    if source and source == target:
        fields.fail("to_account", "must differ from from_account")
    fields.done()
    transfer: dict[str, Any] = {
        "transfer_id": new_id("trf"),
        "from_account": source,
        "to_account": target,
        "amount": amount,
        "currency": currency,
        "reference": reference,
        "status": "scoring",
        "created_at": now_iso(),
    }
    served_by = {"transfers": app.instance}
    risk, served_by["fraud"] = await call(
        request,
        "fraud",
        "POST",
        "/fraud/score",
        json={
            "account_id": source,
            "to_account": target,
            "amount": amount,
            "currency": currency,
            "channel": "transfer",
        },
    )
    transfer["fraud"] = {k: risk.get(k) for k in ("score", "decision", "reasons")}
    if risk.get("decision") == "block":
        _finish(transfer, "blocked")
        raise HTTPError(
            422,
            "transfer blocked by the fraud check",
            hop="fraud",
            transfer=transfer,
            served_by=served_by,
        )
    if risk.get("decision") == "review":
        _finish(transfer, "held_for_review")
        return json_response({**transfer, "served_by": served_by}, 202)
    entry = {
        "entry_id": transfer["transfer_id"],
        "description": f"transfer {reference}".strip(),
        "currency": currency,
        "postings": [
            {"account": source, "direction": "debit", "amount": amount},
            {"account": target, "direction": "credit", "amount": amount},
        ],
    }
    try:
        _, served_by["ledger"] = await call(
            request,
            "ledger",
            "POST",
            "/ledger/entries",
            json=entry,
            idempotency_key=transfer["transfer_id"],
        )
    except HTTPError as exc:
        _finish(transfer, "failed")
        exc.details["transfer"] = transfer
        raise
    transfer["entry_id"] = transfer["transfer_id"]
    _finish(transfer, "completed")
    return json_response({**transfer, "served_by": served_by}, 201)


@app.get("/transfers/{transfer_id}")
async def get_transfer(request: Request) -> Response:
    transfer = transfers.get(request.params["transfer_id"])
    if transfer is None:
        raise HTTPError(404, "no such transfer", transfer_id=request.params["transfer_id"])
    return json_response(transfer)


@app.get("/transfers")
async def list_transfers(request: Request) -> Response:
    account = request.query.get("account_id", "")
    if not account:
        raise HTTPError(400, "invalid request", fields={"account_id": "is required"})
    limit = query_int(request, "limit", 50, 1, 500)
    found = [
        t for t in transfers.latest(10 * limit) if account in (t["from_account"], t["to_account"])
    ][:limit]
    return json_response({"account_id": account, "transfers": found})


if __name__ == "__main__":
    run(app)
