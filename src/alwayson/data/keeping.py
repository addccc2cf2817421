"""The lease keeper's side of the store: every lease change is one compare-and-set.

Used by the keeper process (agents reach it over their site links) and by the controller
(which runs in the witness site beside the store) for operator requests. Keys:

- ``db/<name>/lease``: the :class:`~alwayson.data.leases.Lease`
- ``db/<name>/site/<site>``: the last status an agent reported
- ``db/<name>/request``: an operator's request (switchover, failback, backup…) to the agents
- ``db/<name>/record/<id>``: a failover, switchover or failback record
- ``db/<name>/backup/<id>``: a backup and its verification
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alwayson.data.leases import Lease, LeaseRefused
from alwayson.store.base import StateStore
from alwayson.util.clocks import Clock
from alwayson.util.errors import TemporaryError

CAS_ATTEMPTS = 8


def lease_key(db: str) -> str:
    return f"db/{db}/lease"


def site_key(db: str, site: str) -> str:
    return f"db/{db}/site/{site}"


def request_key(db: str) -> str:
    return f"db/{db}/request"


async def read_lease(store: StateStore, db: str) -> Lease | None:
    found = await store.get(lease_key(db))
    return Lease.from_json(found.value) if found else None


async def change_lease(
    store: StateStore, db: str, clock: Clock, change: Callable[[Lease | None, float], Lease]
) -> Lease:
    """Apply ``change(current, now)`` atomically; raises LeaseRefused from ``change``."""
    for _ in range(CAS_ATTEMPTS):
        found = await store.get(lease_key(db))
        current = Lease.from_json(found.value) if found else None
        new = change(current, clock.wall())
        if await store.compare_and_set(
            lease_key(db), found.version if found else None, new.to_json()
        ):
            return new
    raise TemporaryError(f"db/{db}/lease changed {CAS_ATTEMPTS} times under us; try again")


async def database_view(
    store: StateStore, db: str, sites: list[str], clock: Clock
) -> dict[str, Any]:
    lease = await read_lease(store, db)
    statuses: dict[str, Any] = {}
    for site in sites:
        found = await store.get(site_key(db, site))
        if found:
            statuses[site] = found.value
    request = await store.get(request_key(db))
    return {
        "lease": lease.to_json() if lease else None,
        "now": clock.wall(),
        "sites": statuses,
        "request": request.value if request else None,
    }


__all__ = [
    "LeaseRefused",
    "change_lease",
    "database_view",
    "lease_key",
    "read_lease",
    "request_key",
    "site_key",
]
