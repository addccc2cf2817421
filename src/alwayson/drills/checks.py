"""What a drill checks in the data, straight from PostgreSQL (never from the services).

- **Acknowledged writes lost**, a set check: every registration a client was told
  succeeded must be stored afterwards; registrations stored without the client having
  been told (the answer was lost in the fault) are reported too, as they are not a loss.
- **Ledger invariants** of the sample bank: every currency's balances sum to 0, every
  entry's rows sum to 0, every balance equals its postings, no customer is overdrawn.
- **Writable primaries**: how many sites accept writes at one moment (a partition must
  never show two).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

LEDGER_CHECKS = (
    (
        "SELECT currency, sum(balance) FROM accounts GROUP BY 1 HAVING sum(balance) <> 0",
        "{0} balances sum to {1}, not 0",
    ),
    (
        "SELECT entry_id, sum(amount) FROM ledger_entries GROUP BY 1 HAVING sum(amount) <> 0",
        "entry {0} sums to {1}",
    ),
    (
        "SELECT a.id, a.balance, coalesce(p.total, 0) FROM accounts a LEFT JOIN"
        " (SELECT account_id, sum(amount) AS total FROM ledger_entries GROUP BY 1) p"
        " ON p.account_id = a.id WHERE a.balance <> coalesce(p.total, 0)",
        "account {0} holds {1} but its postings sum to {2}",
    ),
    (
        "SELECT id FROM accounts WHERE kind = 'customer' AND balance < 0",
        "customer account {0} is overdrawn",
    ),
)


@dataclass
class WriteCheck:
    checked: bool = False
    acknowledged: int = 0
    attempted: int = 0
    stored: int = 0
    lost: list[str] = field(default_factory=list)
    unacknowledged_stored: list[str] = field(default_factory=list)
    ledger_checked: bool = False
    ledger_problems: list[str] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "acknowledged": self.acknowledged,
            "attempted": self.attempted,
            "stored": self.stored,
            "lost_count": len(self.lost),
            "lost": self.lost[:1000],
            "unacknowledged_stored_count": len(self.unacknowledged_stored),
            "unacknowledged_stored": self.unacknowledged_stored[:1000],
            "ledger": {"checked": self.ledger_checked, "problems": self.ledger_problems[:100]},
            "note": self.note,
        }


async def connect(url: str, timeout: float = 5.0) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(
        make_conninfo(url, connect_timeout=max(int(timeout), 1)), autocommit=True
    )


async def check_registrations(
    url: str, acknowledged: dict[str, str], attempted: set[str]
) -> WriteCheck:
    """``acknowledged``: customer id -> the id number it was registered with;
    ``attempted``: every id number a client sent."""
    result = WriteCheck(acknowledged=len(acknowledged), attempted=len(attempted))
    async with await connect(url) as conn:
        rows = await (
            await conn.execute(
                "SELECT id, id_number FROM customers WHERE id = ANY(%s) OR id_number = ANY(%s)",
                (list(acknowledged), list(attempted)),
            )
        ).fetchall()
        stored = {str(r[0]): str(r[1]) for r in rows}
        result.stored = len(stored)
        result.lost = sorted(set(acknowledged) - set(stored))
        result.unacknowledged_stored = sorted(set(stored) - set(acknowledged))
        result.checked = True
        result.ledger_problems = await ledger_problems(conn)
        result.ledger_checked = True
    return result


async def ledger_problems(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    problems: list[str] = []
    for sql, text in LEDGER_CHECKS:
        for row in await (await conn.execute(sql)).fetchall():
            problems.append(text.format(*row))
    return problems


async def writable(url: str, timeout: float = 1.0) -> bool | None:
    """Whether this PostgreSQL accepts writes now: a primary (not in recovery) that is not
    read-only. None when it cannot be reached (a stopped or cut-off server writes nothing
    anyone can see)."""
    try:
        async with asyncio.timeout(timeout):
            async with await connect(url, timeout) as conn:
                row = await (
                    await conn.execute(
                        "SELECT pg_is_in_recovery(),"
                        " current_setting('default_transaction_read_only')"
                    )
                ).fetchone()
    except (OSError, TimeoutError, psycopg.Error):
        return None
    if row is None:
        return None
    return not bool(row[0]) and str(row[1]) == "off"
