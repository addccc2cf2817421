"""customers: the customer master file (name, email, NIK, city, KYC reference).

A NIK or an email address belongs to one customer only: registering it twice is a 409.
"""

from __future__ import annotations

import re
from typing import Any

from bank.server import run
from bank.store import Store, new_id, now_iso
from bank.validate import Fields, query_int
from bank.web import App, HTTPError, Request, Response, json_response

app = App("customers", "The customer master file: create, read, search and update customers.")
PHONE = re.compile(r"^\+62[0-9]{8,13}$")
by_nik: dict[str, str] = {}
by_email: dict[str, str] = {}


def _forget(customer_id: str, customer: dict[str, Any]) -> None:
    by_nik.pop(customer["id_number"], None)
    by_email.pop(customer["email"], None)


customers: Store[dict[str, Any]] = Store(on_evict=_forget)


def _public(customer: dict[str, Any]) -> dict[str, Any]:
    nik = customer["id_number"]
    return {**customer, "id_number": nik[:6] + "******" + nik[-4:]}


def _find(request: Request) -> dict[str, Any]:
    customer = customers.get(request.params["customer_id"])
    if customer is None:
        raise HTTPError(404, "no such customer", customer_id=request.params["customer_id"])
    return customer


def _check_phone(fields: Fields, phone: str) -> None:
    if phone and not PHONE.match(phone):
        fields.fail("phone", "must be an Indonesian number in E.164 form, like +6281234567890")


@app.post("/customers", idempotent=True)
async def create_customer(request: Request) -> Response:
    fields = Fields(request.json_object())
    name = fields.text("name", min_len=2, max_len=100)
    email = fields.email("email")
    nik = fields.text("id_number", min_len=16, max_len=16)
    city = fields.text("city", min_len=2, max_len=50).lower()
    phone = fields.text("phone", max_len=16, default="")
    kyc_check_id = fields.text("kyc_check_id", max_len=64, default="")
    _check_phone(fields, phone)
    fields.done()
    if nik in by_nik:
        raise HTTPError(409, "a customer with this id_number exists", customer_id=by_nik[nik])
    if email in by_email:
        raise HTTPError(409, "a customer with this email exists", customer_id=by_email[email])
    customer: dict[str, Any] = {
        "customer_id": new_id("cus"),
        "name": name,
        "email": email,
        "id_number": nik,
        "city": city,
        "phone": phone or None,
        "kyc_check_id": kyc_check_id or None,
        "status": "active",
        "created_at": now_iso(),
    }
    customers.put(customer["customer_id"], customer)
    by_nik[nik] = customer["customer_id"]
    by_email[email] = customer["customer_id"]
    return json_response(_public(customer), 201)


@app.get("/customers/{customer_id}")
async def get_customer(request: Request) -> Response:
    return json_response(_public(_find(request)))


@app.get("/customers")
async def search_customers(request: Request) -> Response:
    query = request.query
    limit = query_int(request, "limit", 50, 1, 500)
    if "email" in query:
        ids = [by_email.get(query["email"].strip().lower(), "")]
    elif "id_number" in query:
        ids = [by_nik.get(query["id_number"].strip(), "")]
    else:
        found = [_public(c) for c in customers.latest(limit)]
        return json_response({"customers": found, "count": len(found)})
    found = [_public(c) for c in map(customers.get, ids) if c is not None]
    return json_response({"customers": found, "count": len(found)})


@app.patch("/customers/{customer_id}")
async def update_customer(request: Request) -> Response:
    customer = _find(request)
    body = request.json_object()
    fields = Fields(body)
    email = fields.email("email", default="")
    city = fields.text("city", min_len=2, max_len=50, default="").lower()
    phone = fields.text("phone", max_len=16, default="")
    _check_phone(fields, phone)
    unknown = set(body) - {"email", "city", "phone"}
    if unknown:
        fields.fail(sorted(unknown)[0], "cannot be changed (only email, city and phone can)")
    fields.done()
    if email and email != customer["email"]:
        if email in by_email:
            raise HTTPError(409, "a customer with this email exists", customer_id=by_email[email])
        by_email.pop(customer["email"], None)
        by_email[email] = customer["customer_id"]
        customer["email"] = email
    if city:
        customer["city"] = city
    if phone:
        customer["phone"] = phone
    customer["updated_at"] = now_iso()
    return json_response(_public(customer))


if __name__ == "__main__":
    run(app)
