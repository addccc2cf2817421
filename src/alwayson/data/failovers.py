"""The failover record's arithmetic (pure): when the fault was, when the lease was free,
and what the old primary had on disk that the new one never received."""

from __future__ import annotations

from typing import Any

from alwayson.data.leases import Lease
from alwayson.data.lsns import lsn_int


def fault_of(
    before: Lease | None, detected: float, last_report: float | None = None
) -> tuple[float, str]:
    """When the fault behind a takeover happened, as best known, and what that rests on.
    ``last_report``: when the old holder's agent last reported (at once when its position
    moves, at least once a second while alive)."""
    if before is None:
        return detected, "unknown: no lease was seen before; from this site's detection"
    if before.revoked_for is not None and before.fault_at is not None:
        return before.fault_at, "the operator revoked the lease (db failover)"
    if before.fault_at is not None and before.released_at is not None:
        why = before.released_why or "released"
        return before.fault_at, f"the old primary's agent: {why}"
    if before.fault_at is not None:
        return before.fault_at, "the old primary stopped taking writes for the switchover"
    renewal = before.expires_at - before.ttl
    if last_report is not None and last_report <= detected:
        # Nearer the truth than "expiry - ttl": the agent reports at least every second,
        # and an expiry can come later than ttl after the last renewal (a new etcd leader
        # grants every lease its ttl again when the old one died with the site).
        return (
            last_report,
            "the old primary's agent's last report (it reports at once when its WAL position "
            "moves and at least once a second while alive; the fault came after it, within "
            "one report)",
        )
    return (
        renewal,
        "the old primary's last successful renewal (the lease then expired; the fault "
        "came after it, at most ttl/3 later)",
    )


def lease_free_at(before: Lease | None) -> float | None:
    """When the lease could be taken: released, handed over, or expired."""
    if before is None:
        return None
    if before.released_at is not None:
        return before.released_at
    if before.holder is not None and before.revoked_for is None and before.fault_at:
        return before.granted_at  # handed over
    return before.expires_at


def with_wal_end(record: dict[str, Any], final: dict[str, Any]) -> dict[str, Any] | None:
    """The record completed with the old primary's end of WAL on disk, when ``final``
    (its report) is about the epoch this failover ended; None when it is not (yet)."""
    if final.get("epoch") != (record.get("epoch") or 0) - 1 or not final.get("lsn"):
        return None
    lag = dict(record["lag_at_fault"])
    end = lsn_int(final["lsn"])
    received = lsn_int(lag.get("standby_receive_lsn"))
    lag["old_primary_wal_end_lsn"] = final["lsn"]
    lag["wal_bytes_not_received"] = max(0, end - received) if received else None
    return {**record, "lag_at_fault": lag}
