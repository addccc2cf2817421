"""onboarding: the customer registration journey, across five services through the gateway.

``POST /onboarding/register`` runs:

1. kyc           ``POST /kyc/checks``     rejected → 422, review → 202 (pending), else go on
2. customers     ``POST /customers``      a NIK or email already registered → 409
3. accounts      ``POST /accounts``       opens a savings account in IDR
4. notifications ``POST /notifications``  welcome email      } after the account exists, in
   audit         ``POST /audit/events``   customer.registered } parallel; a failure there is
                                                              } a warning, not an error

A failed step answers with the step named in ``hop`` (the hop's own 4xx, else 502/504) and
what was already created, so nothing is silently half-done. Each hop carries the request id
and an idempotency key derived from the registration id.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bank.calls import call
from bank.server import run
from bank.store import Store, new_id, now_iso
from bank.validate import Fields
from bank.web import App, HTTPError, Request, Response, json_response

app = App("onboarding", "Customer registration journey: KYC, customer, account, welcome, audit.")
journeys = app.metrics.counter("bank_registrations_total", "Registrations by outcome.")
registrations: Store[dict[str, Any]] = Store()


class Journey:
    """One registration: calls hops, times them and remembers who served each."""

    def __init__(self, request: Request, registration_id: str) -> None:
        self.request = request
        self.registration_id = registration_id
        self.served_by: dict[str, str] = {"onboarding": app.instance}
        self.steps: list[dict[str, Any]] = []
        self.created: dict[str, str] = {}

    async def hop(self, hop: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            result, served_by = await call(
                self.request,
                hop,
                "POST",
                path,
                json=body,
                idempotency_key=f"{self.registration_id}-{hop}",
            )
        except HTTPError as exc:
            self._step(hop, started, f"failed: {exc.status}")
            exc.details.update(
                registration_id=self.registration_id,
                steps=self.steps,
                created=self.created,
                served_by={
                    **self.served_by,
                    **({hop: exc.details["served_by"]} if "served_by" in exc.details else {}),
                },
            )
            raise
        self.served_by[hop] = served_by
        self._step(hop, started, "ok")
        if not isinstance(result, dict):
            raise HTTPError(502, f"{hop}: answered something other than a JSON object", hop=hop)
        return result

    def _step(self, hop: str, started: float, outcome: str) -> None:
        ms = round((time.perf_counter() - started) * 1000, 2)
        self.steps.append({"hop": hop, "outcome": outcome, "ms": ms})


def _applicant(request: Request) -> dict[str, str]:
    fields = Fields(request.json_object())
    applicant = {
        "name": fields.text("name", min_len=2, max_len=100),
        "email": fields.email("email"),
        "id_number": fields.text("id_number", max_len=32),
        "city": fields.text("city", min_len=2, max_len=50).lower(),
    }
    phone = fields.text("phone", max_len=16, default="")
    if phone:
        applicant["phone"] = phone
    fields.done()
    return applicant


@app.post("/onboarding/register", idempotent=True)
async def register(request: Request) -> Response:
    applicant = _applicant(request)
    started = time.perf_counter()
    journey = Journey(request, new_id("reg"))
    record: dict[str, Any] = {
        "registration_id": journey.registration_id,
        "email": applicant["email"],
        "started_at": now_iso(),
    }
    try:
        result = await _run(journey, applicant, record)
    except HTTPError as exc:
        journeys.inc(outcome=f"failed_{exc.details.get('hop', 'onboarding')}")
        registrations.put(
            journey.registration_id,
            {**record, "status": "failed", "error": exc.message, "hop": exc.details.get("hop")},
        )
        raise
    result["duration_ms"] = round((time.perf_counter() - started) * 1000, 2)
    registrations.put(journey.registration_id, {k: v for k, v in result.items()})
    journeys.inc(outcome=result["status"])
    return json_response(result, 201 if result["status"] == "completed" else 202)


async def _run(
    journey: Journey, applicant: dict[str, str], record: dict[str, Any]
) -> dict[str, Any]:
    kyc = await journey.hop(
        "kyc", "/kyc/checks", {"name": applicant["name"], "id_number": applicant["id_number"]}
    )
    kyc_summary = {
        "check_id": kyc.get("check_id"),
        "status": kyc.get("status"),
        "reasons": kyc.get("reasons", []),
    }
    if kyc_summary["status"] == "rejected":
        raise HTTPError(
            422,
            "KYC rejected the applicant",
            hop="kyc",
            kyc=kyc_summary,
            registration_id=journey.registration_id,
            served_by=journey.served_by,
        )
    common = {**record, "kyc": kyc_summary, "served_by": journey.served_by}
    if kyc_summary["status"] != "approved":
        return {**common, "status": "pending_review", "steps": journey.steps}
    customer = await journey.hop(
        "customers", "/customers", {**applicant, "kyc_check_id": kyc_summary["check_id"]}
    )
    journey.created["customer_id"] = customer["customer_id"]
    account = await journey.hop(
        "accounts",
        "/accounts",
        {
            "customer_id": customer["customer_id"],
            "product": "savings",
            "currency": "IDR",
            "city": applicant["city"],
        },
    )
    journey.created["account_id"] = account["account_id"]
    welcome = {
        "channel": "email",
        "to": applicant["email"],
        "template": "welcome",
        "data": {"name": applicant["name"], "account_number": account["account_number"]},
    }
    event = {
        "actor": "onboarding",
        "action": "customer.registered",
        "subject": customer["customer_id"],
        "details": {
            "account_id": account["account_id"],
            "kyc_check_id": kyc_summary["check_id"],
            "registration_id": journey.registration_id,
            "city": applicant["city"],
        },
    }
    outcomes = await asyncio.gather(
        journey.hop("notifications", "/notifications", welcome),
        journey.hop("audit", "/audit/events", event),
        return_exceptions=True,
    )
    notified, audited = outcomes
    warnings = [
        {"hop": hop, "error": outcome.message, "status": outcome.status}
        for hop, outcome in (("notifications", notified), ("audit", audited))
        if isinstance(outcome, HTTPError)
    ]
    for outcome in (notified, audited):
        if isinstance(outcome, BaseException) and not isinstance(outcome, HTTPError):
            raise outcome
    return {
        **common,
        "status": "completed",
        "customer_id": customer["customer_id"],
        "account_id": account["account_id"],
        "account_number": account["account_number"],
        "notification_id": notified.get("notification_id") if isinstance(notified, dict) else None,
        "audit_event_id": audited.get("event_id") if isinstance(audited, dict) else None,
        "warnings": warnings,
        "steps": journey.steps,
    }


@app.get("/onboarding/registrations/{registration_id}")
async def get_registration(request: Request) -> Response:
    registration = registrations.get(request.params["registration_id"])
    if registration is None:
        raise HTTPError(404, "no such registration", id=request.params["registration_id"])
    return json_response(registration)


if __name__ == "__main__":
    run(app)
