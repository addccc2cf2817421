"""fx: foreign exchange at fixed mid rates with a 0.5% spread, in exact decimal arithmetic.

The bank buys a currency below the mid rate and sells it above; results are rounded down
to the target currency's minor unit. A quote locks a conversion for 30 seconds.
"""

from __future__ import annotations

import time
from decimal import ROUND_DOWN, Decimal
from typing import Any

from bank.money import CURRENCIES, MID_RATES_IDR
from bank.server import run
from bank.store import Store, new_id, now_iso
from bank.validate import MAX_AMOUNT, Fields
from bank.web import App, HTTPError, Request, Response, json_response

app = App("fx", "Foreign exchange: rates, exact conversions and 30-second quotes.")
SPREAD = Decimal("0.005")
QUOTE_TTL = 30
MID = {code: Decimal(rate) for code, rate in MID_RATES_IDR.items()}
quotes: Store[dict[str, Any]] = Store()


def buy_rate(currency: str) -> Decimal:
    """Rupiah the bank pays for one unit of ``currency``."""
    return MID[currency] if currency == "IDR" else MID[currency] * (1 - SPREAD)


def sell_rate(currency: str) -> Decimal:
    """Rupiah the bank asks for one unit of ``currency``."""
    return MID[currency] if currency == "IDR" else MID[currency] * (1 + SPREAD)


def convert(amount: int, source: str, target: str) -> tuple[int, Decimal]:
    """(converted amount in the target's minor unit, effective rate per unit)."""
    units = Decimal(amount).scaleb(-CURRENCIES[source])
    rupiah = units * buy_rate(source)
    out_units = (rupiah / sell_rate(target)).quantize(
        Decimal(1).scaleb(-CURRENCIES[target]), rounding=ROUND_DOWN
    )
    converted = int(out_units.scaleb(CURRENCIES[target]))
    rate = (out_units / units).quantize(Decimal("0.00000001")) if units else Decimal(0)
    return converted, rate


def _parse(request: Request) -> tuple[str, str, int]:
    fields = Fields(request.json_object())
    source = fields.choice("from", CURRENCIES)
    target = fields.choice("to", CURRENCIES)
    amount = fields.integer("amount", minimum=1, maximum=MAX_AMOUNT)
    if source and source == target:
        fields.fail("to", "must differ from 'from'")
    fields.done()
    return source, target, amount


def _conversion(source: str, target: str, amount: int) -> dict[str, Any]:
    converted, rate = convert(amount, source, target)
    return {
        "from": source,
        "to": target,
        "amount": amount,
        "converted": converted,
        "rate": str(rate),
        "mid_rate": str((MID[source] / MID[target]).quantize(Decimal("0.00000001"))),
    }


@app.get("/fx/rates")
async def rates(request: Request) -> Response:
    table = {
        code: {
            "mid": str(MID[code]),
            "bank_buys": str(buy_rate(code)),
            "bank_sells": str(sell_rate(code)),
        }
        for code in CURRENCIES
        if code != "IDR"
    }
    return json_response({"base": "IDR", "spread": str(SPREAD), "rates": table})


@app.post("/fx/convert")
async def convert_amount(request: Request) -> Response:
    source, target, amount = _parse(request)
    return json_response(_conversion(source, target, amount))


@app.post("/fx/quotes")
async def create_quote(request: Request) -> Response:
    source, target, amount = _parse(request)
    now = time.time()
    quote = {
        "quote_id": new_id("fxq"),
        **_conversion(source, target, amount),
        "created_at": now_iso(now),
        "expires_at": now_iso(now + QUOTE_TTL),
        "expires_unix": now + QUOTE_TTL,
    }
    quotes.put(quote["quote_id"], quote)
    return json_response(quote, 201)


@app.get("/fx/quotes/{quote_id}")
async def get_quote(request: Request) -> Response:
    quote = quotes.get(request.params["quote_id"])
    if quote is None:
        raise HTTPError(404, "no such quote", quote_id=request.params["quote_id"])
    return json_response({**quote, "valid": quote["expires_unix"] > time.time()})


if __name__ == "__main__":
    run(app)
