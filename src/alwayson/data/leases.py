"""The lease that lets one site's PostgreSQL accept writes (pure rules, injected time).

``data/board.py`` applies these rules inside one etcd transaction on the lease record and
the holder key (attached to an etcd lease: liveness is etcd's). An agent keeps its own,
stricter view (:class:`Tenure`) on its monotonic clock and fences its primary when that
view runs out, whatever etcd or the other site are doing. See docs/DATA-DESIGN.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


class LeaseRefused(Exception):
    """The answer to a renewal or acquisition it will not grant."""

    def __init__(self, reason: str, lease: Lease | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.lease = lease


@dataclass(frozen=True)
class Lease:
    holder: str | None
    epoch: int
    ttl: float
    expires_at: float
    granted_at: float
    revoked_for: str | None = None
    """A forced failover: the holder may not renew, only ``revoked_for`` may acquire."""
    synchronous: bool = False
    """The holder runs synchronous replication ..."""
    sync_standby: str | None = None
    """... and this site has every acknowledged commit (None: degraded or asynchronous)."""
    previous_holder: str | None = None
    released_at: float | None = None
    released_why: str = ""
    fault_at: float | None = None
    """When the previous holder stopped taking writes, as best it knew (its process exit
    seen, a switchover's hold on writes, an operator's revocation); None after an expiry,
    where only the previous holder's last renewal is known. For the failover record."""

    def expired(self, now: float) -> bool:
        return self.holder is None or now >= self.expires_at

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lease:
        return cls(**data)


def renew(
    lease: Lease | None,
    site: str,
    epoch: int,
    ttl: float,
    now: float,
    synchronous: bool = False,
    sync_standby: str | None = None,
) -> Lease:
    """Extend the holder's lease; refused once it expired or was revoked. The holder
    also says whether a standby has every acknowledged commit (who may take over)."""
    if lease is None or lease.holder != site or lease.epoch != epoch:
        raise LeaseRefused(
            f"{site} does not hold the lease at epoch {epoch}"
            + (f" (held by {lease.holder} at epoch {lease.epoch})" if lease else ""),
            lease,
        )
    if lease.revoked_for is not None:
        raise LeaseRefused(f"lease revoked for a failover to {lease.revoked_for}", lease)
    if now >= lease.expires_at:
        raise LeaseRefused("lease expired before the renewal arrived", lease)
    return replace(
        lease,
        ttl=ttl,
        expires_at=now + ttl,
        synchronous=synchronous,
        sync_standby=sync_standby,
    )


def acquire(
    lease: Lease | None, site: str, ttl: float, now: float, synchronous: bool = False
) -> Lease:
    """A new holder, epoch + 1; only when nobody holds a live lease."""
    if lease is not None and not lease.expired(now):
        raise LeaseRefused(
            f"{lease.holder} holds the lease for {lease.expires_at - now:.1f}s more", lease
        )
    if lease is not None and lease.revoked_for not in (None, site):
        raise LeaseRefused(f"a failover to {lease.revoked_for} is under way", lease)
    if lease is not None and lease.revoked_for != site:
        last = lease.holder or lease.previous_holder
        if lease.synchronous and site not in (last, lease.sync_standby):
            raise LeaseRefused(
                f"{site} is not known to have every acknowledged commit (synchronous "
                f"replication was degraded); `alwayson db failover --to {site}` accepts the loss",
                lease,
            )
    epoch = (lease.epoch if lease else 0) + 1
    return Lease(
        holder=site,
        epoch=epoch,
        ttl=ttl,
        expires_at=now + ttl,
        granted_at=now,
        previous_holder=(lease.holder or lease.previous_holder) if lease else None,
        synchronous=synchronous,
    )


def release(
    lease: Lease | None,
    site: str,
    epoch: int,
    now: float,
    why: str = "",
    fault_at: float | None = None,
) -> Lease:
    """The holder gives the lease up at once (its primary is known stopped). A revoked
    lease stays reserved for its target and keeps the revocation as its fault time."""
    if lease is None or lease.holder != site or lease.epoch != epoch:
        raise LeaseRefused(f"{site} does not hold the lease at epoch {epoch}", lease)
    return replace(
        lease,
        holder=None,
        previous_holder=site,
        expires_at=now,
        released_at=now,
        released_why=why,
        fault_at=lease.fault_at if lease.revoked_for is not None else (fault_at or now),
    )


def hand_over(
    lease: Lease | None,
    site: str,
    epoch: int,
    to: str,
    ttl: float,
    now: float,
    fault_at: float | None = None,
) -> Lease:
    """The holder, stopped and caught up with, passes the lease straight to ``to``
    (``fault_at``: when it stopped taking writes)."""
    if lease is None or lease.holder != site or lease.epoch != epoch:
        raise LeaseRefused(f"{site} does not hold the lease at epoch {epoch}", lease)
    if now >= lease.expires_at:
        raise LeaseRefused("lease expired before the handover arrived", lease)
    if lease.revoked_for not in (None, to):
        raise LeaseRefused(f"a forced failover to {lease.revoked_for} is under way", lease)
    return Lease(
        holder=to,
        epoch=epoch + 1,
        ttl=ttl,
        expires_at=now + ttl,
        granted_at=now,
        previous_holder=site,
        synchronous=lease.synchronous,
        fault_at=fault_at or now,
    )


def reclaim(lease: Lease | None, site: str, epoch: int, ttl: float, now: float) -> Lease:
    """The holder takes its own lease back at the same epoch after its liveness (the
    holder key) was lost with nobody taking over: after a failsafe period, when etcd
    answers again. Any other holder in between would have raised the epoch, so the
    record still naming ``site`` at ``epoch``, not revoked, means none ever existed."""
    if lease is None or lease.holder != site or lease.epoch != epoch:
        now_held = ""
        if lease is not None:
            now_held = (
                f" (the record names {lease.holder} at epoch {lease.epoch})"
                if lease.holder
                else " (it was released)"
            )
        raise LeaseRefused(f"{site} no longer holds the lease at epoch {epoch}{now_held}", lease)
    if lease.revoked_for is not None:
        raise LeaseRefused(f"lease revoked for a failover to {lease.revoked_for}", lease)
    if not lease.expired(now):
        raise LeaseRefused("the lease is live: renew it, there is nothing to reclaim", lease)
    return replace(lease, ttl=ttl, expires_at=now + ttl)


def reclaimable(lease: Lease | None, site: str, epoch: int) -> bool:
    """Whether a renewal refused for ``site`` at ``epoch`` may be followed by a reclaim:
    the record still names it at that epoch, not revoked (only its holder key is gone)."""
    return (
        lease is not None
        and (lease.holder, lease.epoch) == (site, epoch)
        and lease.revoked_for is None
    )


def revoke(lease: Lease | None, to: str, now: float) -> Lease:
    """A forced failover: the holder can no longer renew; it expires within its ttl."""
    if lease is None:
        return Lease(
            holder=None,
            epoch=0,
            ttl=0,
            expires_at=now,
            granted_at=now,
            revoked_for=to,
            fault_at=now,
        )
    again = lease.revoked_for == to and lease.fault_at is not None
    return replace(lease, revoked_for=to, fault_at=lease.fault_at if again else now)


@dataclass
class Tenure:
    """An agent's own view of its lease, on its monotonic clock.

    ``renewed_at`` is when the agent *sent* its last successful renewal, so etcd's
    ``expires_at`` (set when that request arrived) is at least ``ttl`` after it: fencing at
    ``renewed_at + ttl - margin`` leaves ``margin`` for clock-rate differences and for
    the stop itself.
    """

    epoch: int
    ttl: float
    margin: float
    renewed_at: float

    def fence_at(self) -> float:
        return self.renewed_at + self.ttl - self.margin

    def must_fence(self, now: float) -> bool:
        return now >= self.fence_at()

    def renew_due(self, now: float) -> bool:
        return now >= self.renewed_at + self.ttl / 3
