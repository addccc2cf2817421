"""customers: the customer master file (name, email, NIK, city, KYC reference).

A NIK or an email address belongs to one customer only: registering it twice is a 409.
With ``DATABASE_URL`` the file is the ``customers`` table in PostgreSQL (see :mod:`bank.db`),
shared by every instance; without it, an in-memory table per instance.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from bank import db
from bank.server import run
from bank.store import Store, new_id, now_iso
from bank.validate import Fields, query_int
from bank.web import App, HTTPError, Request, Response, json_response

if TYPE_CHECKING:
    from psycopg import AsyncCursor

    Cursor = AsyncCursor[dict[str, Any]]

app = App("customers", "The customer master file: create, read, search and update customers.")
database = db.setup(app, "/customers/db")  # None: in-memory tables
COLUMNS = "id, name, email, id_number, city, phone, kyc_check_id, status, created_at, updated_at"
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
    if database is not None:
        return json_response(_public(await _db_create(customer)), 201)
    if nik in by_nik:
        raise HTTPError(409, "a customer with this id_number exists", customer_id=by_nik[nik])
    if email in by_email:
        raise HTTPError(409, "a customer with this email exists", customer_id=by_email[email])
    customers.put(customer["customer_id"], customer)
    by_nik[nik] = customer["customer_id"]
    by_email[email] = customer["customer_id"]
    return json_response(_public(customer), 201)


@app.get("/customers/{customer_id}")
async def get_customer(request: Request) -> Response:
    if database is not None:
        return json_response(_public(await _db_get(request.params["customer_id"])))
    return json_response(_public(_find(request)))


@app.get("/customers")
async def search_customers(request: Request) -> Response:
    query = request.query
    limit = query_int(request, "limit", 50, 1, 500)
    if database is not None:
        found = [_public(c) for c in await _db_search(query, limit)]
        return json_response({"customers": found, "count": len(found)})
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
    customer = _find(request) if database is None else None
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
    if customer is None:
        changes = {"email": email, "city": city, "phone": phone}
        return json_response(_public(await _db_update(request.params["customer_id"], changes)))
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


# --------------------------------------------------------------------------- PostgreSQL


def _row(row: dict[str, Any]) -> dict[str, Any]:
    customer = {
        "customer_id": row["id"],
        "name": row["name"],
        "email": row["email"],
        "id_number": row["id_number"],
        "city": row["city"],
        "phone": row["phone"],
        "kyc_check_id": row["kyc_check_id"],
        "status": row["status"],
        "created_at": db.iso(row["created_at"]),
    }
    if row["updated_at"] is not None:
        customer["updated_at"] = db.iso(row["updated_at"])
    return customer


async def _taken(cur: Cursor, *, nik: str = "", email: str = "", other_than: str = "") -> None:
    """409 if the NIK or the email belongs to a customer (other than ``other_than``)."""
    await cur.execute(
        "SELECT id, id_number = %s AS same_nik FROM customers"
        " WHERE (id_number = %s OR email = %s) AND id <> %s ORDER BY 2 DESC LIMIT 1",
        (nik, nik, email, other_than),
    )
    found = await cur.fetchone()
    if found is not None:
        what = "id_number" if found["same_nik"] else "email"
        raise HTTPError(409, f"a customer with this {what} exists", customer_id=found["id"])


async def _db_create(customer: dict[str, Any]) -> dict[str, Any]:
    assert database is not None

    async def work(cur: Cursor) -> dict[str, Any]:
        await _taken(cur, nik=customer["id_number"], email=customer["email"])
        await cur.execute(
            "INSERT INTO customers (id, name, email, id_number, city, phone, kyc_check_id,"
            " status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING created_at",
            (
                customer["customer_id"],
                customer["name"],
                customer["email"],
                customer["id_number"],
                customer["city"],
                customer["phone"],
                customer["kyc_check_id"],
                customer["status"],
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        return {**customer, "created_at": db.iso(row["created_at"])}

    # Two instances registering the same NIK at once: the loser's INSERT violates the unique
    # constraint, and its second attempt sees the winner's row: a 409 naming it.
    return await database.run_again_on_conflict(work)


async def _db_get(customer_id: str) -> dict[str, Any]:
    assert database is not None

    async def work(cur: Cursor) -> dict[str, Any] | None:
        await cur.execute(f"SELECT {COLUMNS} FROM customers WHERE id = %s", (customer_id,))
        return await cur.fetchone()

    row = await database.run(work)
    if row is None:
        raise HTTPError(404, "no such customer", customer_id=customer_id)
    return _row(row)


async def _db_search(query: dict[str, str], limit: int) -> list[dict[str, Any]]:
    assert database is not None

    async def work(cur: Cursor) -> list[dict[str, Any]]:
        if "email" in query:
            where, value = "email = %s", query["email"].strip().lower()
        elif "id_number" in query:
            where, value = "id_number = %s", query["id_number"].strip()
        else:
            await cur.execute(
                f"SELECT {COLUMNS} FROM customers ORDER BY created_at DESC, id LIMIT %s",
                (limit,),
            )
            return await cur.fetchall()
        await cur.execute(f"SELECT {COLUMNS} FROM customers WHERE {where}", (value,))
        return await cur.fetchall()

    return [_row(row) for row in await database.run(work)]


async def _db_update(customer_id: str, changes: dict[str, str]) -> dict[str, Any]:
    assert database is not None

    async def work(cur: Cursor) -> dict[str, Any]:
        await cur.execute(
            f"SELECT {COLUMNS} FROM customers WHERE id = %s FOR UPDATE", (customer_id,)
        )
        if await cur.fetchone() is None:
            raise HTTPError(404, "no such customer", customer_id=customer_id)
        if changes["email"]:
            await _taken(cur, email=changes["email"], other_than=customer_id)
        await cur.execute(
            "UPDATE customers SET email = coalesce(nullif(%s, ''), email),"
            " city = coalesce(nullif(%s, ''), city), phone = coalesce(nullif(%s, ''), phone),"
            f" updated_at = now() WHERE id = %s RETURNING {COLUMNS}",
            (changes["email"], changes["city"], changes["phone"], customer_id),
        )
        row = await cur.fetchone()
        assert row is not None
        return _row(row)

    return await database.run_again_on_conflict(work)


if __name__ == "__main__":
    run(app)
