"""kyc: know-your-customer checks of a national id number (NIK) and a name.

A NIK has 16 digits: province (2), regency (2), district (2), birth date DDMMYY (women add
40 to the day), serial (4). A check is ``approved``, ``rejected`` (with reasons) or
``review`` when the name is on the (fictional) watch list.
"""

from __future__ import annotations

import time
from typing import Any

from bank.server import run
from bank.store import Store, new_id, now_iso
from bank.validate import Fields
from bank.web import App, HTTPError, Request, Response, json_response

app = App("kyc", "Know-your-customer checks: NIK format, age, name and watch-list screening.")
checks: Store[dict[str, Any]] = Store()
outcomes = app.metrics.counter("bank_kyc_checks_total", "KYC checks by outcome.")

PROVINCE_CODES = (
    "11 12 13 14 15 16 17 18 19 21 31 32 33 34 35 36 51 52 53 61 62 63 64 65"
    " 71 72 73 74 75 76 81 82 91 92 93 94 95 96"
)
PROVINCES = frozenset(PROVINCE_CODES.split())
WATCHLIST = {"budi watchlist", "sanctioned person", "test sanctions"}
NAME_SYMBOLS = set(" .'-,")
MIN_AGE = 17
DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def check_nik(nik: str, today: time.struct_time) -> tuple[list[str], dict[str, Any]]:
    """Problems with ``nik`` and what it says about its holder."""
    if len(nik) != 16 or not nik.isdigit():
        return ["id_number: a NIK has exactly 16 digits"], {}
    reasons: list[str] = []
    province = nik[:2]
    if province not in PROVINCES:
        reasons.append(f"id_number: {province} is not an Indonesian province code")
    day, month, yy = int(nik[6:8]), int(nik[8:10]), int(nik[10:12])
    sex = "female" if day > 40 else "male"
    day = day - 40 if day > 40 else day
    year = 2000 + yy if 2000 + yy <= today.tm_year else 1900 + yy
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if (
        not 1 <= month <= 12
        or not 1 <= day <= DAYS[month - 1]
        or (month == 2 and day == 29 and not leap)
    ):
        reasons.append("id_number: digits 7-12 are not a valid birth date (DDMMYY)")
        return reasons, {}
    age = today.tm_year - year - ((today.tm_mon, today.tm_mday) < (month, day))
    if age < MIN_AGE:
        reasons.append(f"id_number: the holder is {age}, a KTP holder is at least {MIN_AGE}")
    if nik[12:] == "0000":
        reasons.append("id_number: serial 0000 is never issued")
    info = {
        "province_code": province,
        "birth_date": f"{year:04d}-{month:02d}-{day:02d}",
        "sex": sex,
        "age": age,
    }
    return reasons, info


def check_name(name: str) -> list[str]:
    letters = sum(ch.isalpha() for ch in name)
    if letters < 2:
        return ["name: needs at least two letters"]
    if any(not (ch.isalpha() or ch in NAME_SYMBOLS) for ch in name):
        return ["name: only letters, spaces and . ' - , are allowed"]
    return []


@app.post("/kyc/checks", idempotent=True)
async def create_check(request: Request) -> Response:
    fields = Fields(request.json_object())
    name = fields.text("name", min_len=1, max_len=100)
    nik = fields.text("id_number", max_len=32).replace(" ", "").replace(".", "")
    fields.done()
    reasons, info = check_nik(nik, time.localtime())
    reasons += check_name(name)
    normalized = " ".join(name.lower().split())
    if reasons:
        status = "rejected"
    elif normalized in WATCHLIST:
        status = "review"
        reasons = ["name: matches the watch list; needs manual review"]
    else:
        status = "approved"
    check = {
        "check_id": new_id("kyc"),
        "status": status,
        "reasons": reasons,
        "name": name,
        "id_number_masked": nik[:6] + "******" + nik[-4:] if len(nik) == 16 else "invalid",
        **info,
        "checked_at": now_iso(),
    }
    checks.put(check["check_id"], check)
    outcomes.inc(status=status)
    return json_response(check, 201)


@app.get("/kyc/checks/{check_id}")
async def get_check(request: Request) -> Response:
    check = checks.get(request.params["check_id"])
    if check is None:
        raise HTTPError(404, "no such KYC check", check_id=request.params["check_id"])
    return json_response(check)


@app.get("/kyc/stats")
async def stats(request: Request) -> Response:
    counts = {"approved": 0, "rejected": 0, "review": 0}
    for check in checks.values():
        counts[check["status"]] += 1
    return json_response({"instance": app.instance, "checks": len(checks), **counts})


if __name__ == "__main__":
    run(app)
