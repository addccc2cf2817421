"""statements: monthly account statements (JSON or CSV) built from the ledger's postings.

Months are calendar months in Western Indonesian Time (WIB, UTC+7).
"""

from __future__ import annotations

import calendar
import time
from typing import Any

from bank.calls import call
from bank.money import CURRENCIES, display
from bank.server import run
from bank.web import App, HTTPError, Request, Response, json_response, text_response

app = App("statements", "Monthly account statements from ledger postings, as JSON or CSV.")
WIB = 7 * 3600


def month_window(month: str) -> tuple[float, float]:
    """``"2024-05"`` → unix times of 1 May and 1 June 00:00 WIB."""
    year_text, sep, month_text = month.partition("-")
    if not (sep and len(year_text) == 4 and year_text.isdigit() and month_text.isdigit()):
        raise HTTPError(400, "invalid request", fields={"month": "must look like 2024-05"})
    year, number = int(year_text), int(month_text)
    if not (2000 <= year <= 2100 and 1 <= number <= 12):
        raise HTTPError(400, "invalid request", fields={"month": "must be a month from 2000-01"})
    start = calendar.timegm((year, number, 1, 0, 0, 0)) - WIB
    next_year, next_month = (year + 1, 1) if number == 12 else (year, number + 1)
    end = calendar.timegm((next_year, next_month, 1, 0, 0, 0)) - WIB
    return float(start), float(end)


async def build(request: Request) -> dict[str, Any]:
    account = request.params["account_id"]
    if not account.startswith("acc_"):
        raise HTTPError(400, "invalid request", fields={"account_id": "must start with acc_"})
    month = request.query.get("month") or time.strftime("%Y-%m", time.gmtime(time.time() + WIB))
    currency = request.query.get("currency", "IDR")
    if currency not in CURRENCIES:
        raise HTTPError(400, "invalid request", fields={"currency": "unknown currency"})
    since, until = month_window(month)
    path = f"/ledger/accounts/{account}/postings?since={since:.0f}&until={until:.0f}"
    ledger, ledger_by = await call(request, "ledger", "GET", f"{path}&currency={currency}")
    running = int(ledger["opening"])
    lines = []
    money_in = money_out = 0
    for posting in ledger["postings"]:
        amount = int(posting["amount"])
        if posting["direction"] == "credit":
            running += amount
            money_in += amount
        else:
            running -= amount
            money_out += amount
        lines.append(
            {
                "at": posting["at"],
                "description": posting["description"],
                "reference": posting["entry_id"],
                "credit": amount if posting["direction"] == "credit" else 0,
                "debit": amount if posting["direction"] == "debit" else 0,
                "balance": running,
            }
        )
    return {
        "account_id": account,
        "month": month,
        "currency": currency,
        "opening_balance": ledger["opening"],
        "money_in": money_in,
        "money_out": money_out,
        "closing_balance": ledger["closing"],
        "closing_display": display(int(ledger["closing"]), currency),
        "lines": lines,
        "served_by": {"statements": app.instance, "ledger": ledger_by},
    }


@app.get("/statements/{account_id}")
async def statement(request: Request) -> Response:
    return json_response(await build(request))


@app.get("/statements/{account_id}/csv")
async def statement_csv(request: Request) -> Response:
    data = await build(request)
    rows = ["date,description,reference,debit,credit,balance"]
    rows.append(f"{data['month']}-01,opening balance,,,,{data['opening_balance']}")
    for line in data["lines"]:
        description = str(line["description"]).replace('"', '""')
        rows.append(
            f'{line["at"]},"{description}",{line["reference"]},'
            f"{line['debit']},{line['credit']},{line['balance']}"
        )
    rows.append(
        f",closing balance,,{data['money_out']},{data['money_in']},{data['closing_balance']}"
    )
    return text_response("\n".join(rows) + "\n", content_type="text/csv")


if __name__ == "__main__":
    run(app)
