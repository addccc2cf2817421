"""Money: amounts are integers in a currency's minor unit (IDR has none, USD has cents)."""

from __future__ import annotations

# ISO 4217 exponent of each currency the bank handles.
CURRENCIES = {"IDR": 0, "USD": 2, "EUR": 2, "SGD": 2, "JPY": 0, "AUD": 2, "MYR": 2, "CNY": 2}


def display(amount: int, currency: str) -> str:
    """``display(150000, "IDR")`` → ``IDR 150,000``; ``display(1999, "USD")`` → ``USD 19.99``."""
    exponent = CURRENCIES.get(currency, 2)
    sign = "-" if amount < 0 else ""
    whole, minor = divmod(abs(amount), 10**exponent)
    text = f"{whole:,}" + (f".{minor:0{exponent}d}" if exponent else "")
    return f"{currency} {sign}{text}"


# Fixed mid-market rates: rupiah for one unit of each currency (a demo has no market feed).
MID_RATES_IDR = {
    "IDR": "1",
    "USD": "16250",
    "EUR": "17600",
    "SGD": "12050",
    "JPY": "104.5",
    "AUD": "10700",
    "MYR": "3450",
    "CNY": "2240",
}


def approx_idr(amount: int, currency: str) -> float:
    """Rough rupiah value of an amount, for risk scoring (fx does exact conversions)."""
    return float(amount / 10 ** CURRENCIES[currency] * float(MID_RATES_IDR[currency]))
