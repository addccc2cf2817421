"""What a site agent does with one database next: pure decisions on an immutable view.

Patroni's ``Ha.run_cycle()`` shape: the steward observes once (:class:`StewardView`: the
lease as last read with its epoch, holder and expiry, this site's PostgreSQL, the peers it
reaches, the clocks), :func:`decide` returns a :class:`Decision` with the sentence that
explains it, and small act functions carry it out. Nothing here reads a clock, a file or
the network, so every branch is a unit test on numbers.

The fencing side comes first, because it is what keeps two writers apart:

- :func:`renewal_budget`: every renewal has a deadline shorter than what is left of the
  lease it protects; when nothing is left, there is no renewal to try (the watchdog
  fences instead).
- :func:`watchdog_must_stop`: a primary whose own view of the lease ran out is stopped,
  whatever etcd or the other site are doing.
- :func:`decide`, primary role: a postmaster gone or a revoked lease ends the primary
  before anything else is looked at.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from alwayson.data.leases import Lease, Tenure

RENEWAL_DEADLINE = 1.5
"""The longest a renewal may take (seconds), when the lease leaves more than that."""
RENEWAL_SLACK = 0.05
"""A renewal must be answered this long before the agent's own view of the lease ends."""
CATCH_UP_BYTES = 1 << 20
"""A standby this close (flushed bytes) may be named synchronous."""


class Role(StrEnum):
    STARTING = "starting"
    PRIMARY = "primary"
    STANDBY = "standby"
    FENCED = "fenced"
    """Was primary, stopped without the lease; its data may be ahead of the new primary."""
    SWITCHING = "switching"
    REJOINING = "rejoining"


# -- the fencing side ------------------------------------------------------------------


def renewal_budget(tenure: Tenure, sent: float) -> float | None:
    """How long a renewal sent at ``sent`` may wait for etcd: never past the
    moment this agent would fence (so an answer that comes too late is never used);
    None when no time is left to renew at all."""
    budget = min(RENEWAL_DEADLINE, tenure.fence_at() - sent - RENEWAL_SLACK)
    return budget if budget > 0 else None


REPORT_CLOCKWORK = frozenset(
    {"xact_total", "replay_age_seconds", "standby_missing_for", "promise_left"}
)
"""Fields of a site's report that move with time alone (the agent's own queries count as
transactions; ages and countdowns grow or shrink): they make a report due only with age."""


def report_due(
    status: Mapping[str, Any],
    last: Mapping[str, Any] | None,
    now: float,
    last_at: float,
    every: float,
) -> bool:
    """Whether a site's report must be written now: it says something new (any field but
    the clockwork ones), or the last one is ``every`` seconds old."""
    if last is None or now - last_at >= every:
        return True
    return any(
        status.get(key) != last.get(key)
        for key in status.keys() | last.keys()
        if key not in REPORT_CLOCKWORK
    )


def renewal_due(role: Role, tenure: Tenure | None, now: float) -> bool:
    return role is Role.PRIMARY and tenure is not None and tenure.renew_due(now)


def watchdog_must_stop(
    role: Role, tenure: Tenure | None, postmaster_alive: bool, now: float
) -> bool:
    """The watchdog's rule: a running primary whose lease view ran out gets SIGQUIT."""
    return (
        role is Role.PRIMARY and tenure is not None and postmaster_alive and tenure.must_fence(now)
    )


def watch_for(tenure: Tenure | None, now: float, idle: float) -> float:
    """How long the watchdog may sleep: until its tenure's fencing time, at most ``idle``
    (a tenure whose time has passed, or none, leaves only ``idle``)."""
    if tenure is None:
        return idle
    left = tenure.fence_at() - now
    return min(idle, left) if left > 0 else idle


def endpoint_open(writable: bool, tenure: Tenure | None, now: float) -> bool:
    """A primary's endpoint sends clients to it only while its lease view holds."""
    return writable and tenure is not None and not tenure.must_fence(now)


# -- the cycle -------------------------------------------------------------------------


@dataclass(frozen=True)
class StewardView:
    """Everything one cycle decides on, read once at its start."""

    site: str
    primary_site: str
    sites: tuple[str, ...]
    role: Role
    board_seen: bool
    """Whether the board (etcd) was ever read (bootstrap waits for it)."""
    lease: Lease | None
    """The lease as this agent holds it (a primary keeps its own renewed copy)."""
    seen_lease: Lease | None
    """The lease in the last view of etcd (a revocation shows here first)."""
    tenure_epoch: int | None
    postmaster_alive: bool
    board_now: float
    monotonic: float
    wall: float
    fence_reason: str = ""
    retake_after: float = 0.0
    detected_at: float | None = None
    watchdog_fired: bool = False
    has_data: bool = False
    standby_signal: bool = False
    saved_epoch: int = 0
    reachable: frozenset[str] = field(default_factory=frozenset)
    """The sites the links let this one reach now (itself included)."""
    promised_until: float = 0.0
    """Monotonic time until which this standby promised a primary on failsafe not to
    take over (0: no promise)."""
    promised_to: str | None = None
    quiet_until: float = 0.0
    """Monotonic time one ttl after this agent started: a promise given before a restart
    died with the agent's memory, so until then it takes nothing over."""

    @property
    def other_site(self) -> str | None:
        others = [s for s in self.sites if s != self.site]
        return others[0] if others else None


class Action(StrEnum):
    WAIT = "wait"
    """Nothing to change; the verdict says why."""
    FOLLOW_FOUND_STANDBY = "follow-found-standby"
    RETAKE_LEASE = "retake-lease"
    """Acquire the lease again and start this site's data directory as primary."""
    STAY_FENCED = "stay-fenced"
    INITIALISE = "initialise"
    CLONE = "clone"
    PRIMARY_EXITED = "primary-exited"
    FENCE = "fence"
    KEEP_PRIMARY = "keep-primary"
    START_STANDBY = "start-standby"
    PROMOTE = "promote"
    """The lease was handed over: renew it, then promote."""
    ACQUIRE_AND_PROMOTE = "acquire-and-promote"
    FOLLOW = "follow"
    REJOIN = "rejoin"
    """Another site holds a live lease: rewind this site's data (else re-clone it) and
    follow that site as its standby, with no command typed."""


@dataclass(frozen=True)
class Decision:
    action: Action
    verdict: str
    """The sentence logged for this cycle when the act adds nothing to it."""
    target: str | None = None
    """The site to clone from, follow, or that held the lease before."""
    why: str = ""
    detected_at: float | None = None
    """When this site first saw the lease free to take (None: not a takeover)."""


def decide(view: StewardView) -> Decision:
    if view.role is Role.STARTING:
        return _bootstrap(view)
    if view.role is Role.PRIMARY:
        return _as_primary(view)
    if view.role is Role.STANDBY:
        return _as_standby(view)
    if view.role is Role.FENCED:
        return _as_fenced(view)
    return Decision(Action.WAIT, view.role.value, detected_at=view.detected_at)


def _bootstrap(view: StewardView) -> Decision:
    keep = view.detected_at
    if not view.board_seen:
        return Decision(Action.WAIT, "waiting for etcd (the lease)", detected_at=keep)
    lease = view.lease
    if view.has_data:
        if view.standby_signal:
            return Decision(
                Action.FOLLOW_FOUND_STANDBY,
                "found a standby; following the primary",
                detected_at=keep,
            )
        if (
            lease is None
            or lease.holder in (None, view.site)
            or (lease.previous_holder == view.site and lease.epoch == view.saved_epoch)
        ):
            return Decision(
                Action.RETAKE_LEASE,
                "restarted: taking the lease back",
                why="restarted",
                detected_at=keep,
            )
        why = f"{lease.holder} became primary while this site was down"
        rejoin = _rejoin(view, lease, why)
        if rejoin is not None:
            return rejoin
        return Decision(
            Action.STAY_FENCED,
            f"fenced: {why}; it rejoins as a standby once {lease.holder} holds a live lease "
            "and can be reached",
            why=why,
            detected_at=keep,
        )
    if lease is None and view.site == view.primary_site:
        return Decision(Action.INITIALISE, "initialising a new primary", detected_at=keep)
    if lease is not None and lease.holder and lease.holder != view.site:
        if lease.holder not in view.reachable:
            return Decision(
                Action.WAIT, f"cannot reach {lease.holder} to clone the standby", detected_at=keep
            )
        return Decision(
            Action.CLONE,
            f"cloned a standby from {lease.holder} with pg_basebackup",
            target=lease.holder,
            detected_at=keep,
        )
    return Decision(Action.WAIT, "waiting for a primary to clone from", detected_at=keep)


def _as_primary(view: StewardView) -> Decision:
    keep = view.detected_at
    if not view.postmaster_alive:
        why = (
            "lease not renewed in time: the watchdog stopped PostgreSQL"
            if view.watchdog_fired
            else "the PostgreSQL process exited"
        )
        return Decision(Action.PRIMARY_EXITED, "primary exited", why=why, detected_at=keep)
    seen = view.seen_lease
    if (
        seen is not None
        and seen.revoked_for
        and seen.holder == view.site
        and view.tenure_epoch is not None
        and seen.epoch == view.tenure_epoch
    ):
        # `db failover`: the next renewal would be refused anyway; stop taking writes now.
        why = f"the operator revoked the lease for a failover to {seen.revoked_for}"
        return Decision(Action.FENCE, f"fenced: {why}", why=why, detected_at=keep)
    epoch = view.tenure_epoch if view.tenure_epoch is not None else "?"
    return Decision(Action.KEEP_PRIMARY, f"primary at epoch {epoch}", detected_at=keep)


def _as_fenced(view: StewardView) -> Decision:
    keep = view.detected_at
    lease = view.lease
    if lease is None:
        return Decision(
            Action.WAIT,
            f"fenced ({view.fence_reason}); etcd is unreachable",
            detected_at=keep,
        )
    untouched = lease.epoch == view.saved_epoch and lease.previous_holder in (None, view.site)
    if (
        untouched
        and lease.expired(view.board_now)
        and view.monotonic >= view.retake_after
        and view.has_data
    ):
        return Decision(
            Action.RETAKE_LEASE,
            "nobody took over: taking the lease back",
            why="nobody took over",
            detected_at=keep,
        )
    if view.monotonic >= view.retake_after:
        rejoin = _rejoin(view, lease, view.fence_reason)
        if rejoin is not None:
            return rejoin
    return Decision(
        Action.WAIT,
        f"fenced ({view.fence_reason}); it rejoins as a standby once another site holds a "
        "live lease and can be reached",
        detected_at=keep,
    )


def _rejoin(view: StewardView, lease: Lease, why: str) -> Decision | None:
    """Rejoin when another site holds a live lease and this one can reach it (its data
    is the source of the rewind or clone)."""
    holder = lease.holder
    if holder is None or holder == view.site or lease.expired(view.board_now):
        return None
    if holder not in view.reachable or not view.has_data:
        return None
    return Decision(
        Action.REJOIN,
        f"rejoining as a standby of {holder} ({why})",
        target=holder,
        why=why,
        detected_at=view.detected_at,
    )


def held_back(view: StewardView) -> str | None:
    """Why a standby may not take the lease over now, even when etcd would let it: a
    failsafe promise is running, or this agent started less than a ttl ago (a promise it
    gave before restarting may still run). None: nothing holds it back."""
    if view.monotonic < view.promised_until:
        left = view.promised_until - view.monotonic
        return (
            f"promised {view.promised_to} not to take over until {left:.1f}s from now "
            "(failsafe: it confirmed that primary without etcd)"
        )
    if view.monotonic < view.quiet_until:
        left = view.quiet_until - view.monotonic
        return (
            f"the agent started less than a ttl ago: no takeover for {left:.1f}s more "
            "(a failsafe promise given before it restarted may still run)"
        )
    return None


def failsafe_refusal(
    role: Role,
    lease: Lease | None,
    asker: str,
    epoch: int,
    acquiring: bool,
    monotonic: float,
    quiet_until: float,
) -> str | None:
    """Why this site will not confirm ``asker``, a primary at ``epoch`` that cannot reach
    etcd (failsafe); None: it confirms, and promises not to take over for a ttl.

    Only a standby that follows that primary at that epoch, as far as the last lease it
    saw tells, and that is not taking the lease itself, may promise. A revoked lease is
    never confirmed: etcd would refuse the holder's renewal, so the failsafe must too
    (revoked for this site, it is how the operator's failover goes on)."""
    if role is not Role.STANDBY:
        return f"this site is not a standby ({role.value})"
    if monotonic < quiet_until:
        return "this agent started less than a ttl ago: it promises nothing yet"
    if acquiring:
        return "this site is acquiring the lease"
    if lease is None:
        return "this site has not seen the lease"
    if (lease.holder, lease.epoch) != (asker, epoch):
        return (
            f"the lease this site saw names {lease.holder or 'no holder'} at epoch "
            f"{lease.epoch}, not {asker} at epoch {epoch}"
        )
    if lease.revoked_for is not None:
        return f"the lease is revoked for a failover to {lease.revoked_for}"
    return None


def may_take(lease: Lease, site: str, board_now: float) -> bool:
    """A standby may try to acquire: the lease is free (expired or released) and not
    reserved by the operator for another site. etcd's transaction still judges the attempt."""
    return lease.revoked_for in (None, site) and lease.expired(board_now)


def _as_standby(view: StewardView) -> Decision:
    keep = view.detected_at
    lease = view.lease
    holder = lease.holder if lease else None
    if not view.postmaster_alive:
        target = holder if holder and holder != view.site else view.other_site
        if target is None:
            return Decision(Action.WAIT, "standby stopped; no primary known", detected_at=keep)
        return Decision(
            Action.START_STANDBY,
            f"started the standby following {target}",
            target=target,
            detected_at=keep,
        )
    if lease is not None and holder == view.site:
        held = held_back(view)
        if held is not None:
            # Not even after a hand-over: the record may name this site through an
            # acquire of its own whose answer was lost and that landed after it promised.
            return Decision(
                Action.FOLLOW, f"named holder, not promoting yet: {held}", detected_at=keep
            )
        return Decision(
            Action.PROMOTE,
            "promoted: the lease was handed over",
            why="the lease was handed over",
            detected_at=keep,
        )
    if lease is not None and may_take(lease, view.site, view.board_now):
        before = lease.holder or lease.previous_holder
        how = "was released" if lease.holder is None else "expired"
        held = held_back(view)
        if held is not None:
            return Decision(
                Action.FOLLOW,
                f"not taking the lease after {before}'s {how}: {held}",
                target=before,
                detected_at=keep if keep is not None else view.wall,
            )
        return Decision(
            Action.ACQUIRE_AND_PROMOTE,
            f"taking the lease after {before}'s {how}",
            target=before,
            why=f"after {before}'s {how}",
            detected_at=keep if keep is not None else view.wall,
        )
    # A lease seen and not free: no takeover is under way (none was dated).
    return Decision(
        Action.FOLLOW,
        f"standby following {holder}",
        target=holder,
        detected_at=None if lease is not None else keep,
    )


# -- synchronous replication (a primary's cycle, once its standbys are read) -----------


class SyncStep(StrEnum):
    NONE = "none"
    NAME_STANDBY = "name-standby"
    """A streaming standby caught up: make it synchronous (reload the configuration)."""
    RECORD_SYNC_STANDBY = "record-sync-standby"
    """It is ``sync`` now: name it in the lease (renewal first), so it may take over."""
    CLEAR_ALERT = "clear-alert"
    ALERT_BLOCKED = "alert-blocked"
    WITHDRAW_STANDBY = "withdraw-standby"
    """Lost: the lease stops naming it (renewal) before commits may go without it."""
    DEGRADE = "degrade"
    """Lost for ``standby_timeout``: commits go on alone, and the RPO alert is raised."""


@dataclass(frozen=True)
class StandbyRow:
    slot: str
    state: str
    sync_state: str
    flush_lag_bytes: int


@dataclass(frozen=True)
class SyncView:
    standby_slots: tuple[tuple[str, str], ...]
    """(site, slot) of every site that may stream from this primary, in spec order."""
    rows: tuple[StandbyRow, ...]
    sync_names: tuple[str, ...]
    sync_standby: str | None
    alerted: bool
    missing_since: float | None
    now: float
    block_on_loss: bool
    standby_timeout: float


@dataclass(frozen=True)
class SyncDecision:
    step: SyncStep
    site: str | None = None
    slot: str | None = None
    missing_since: float | None = None
    """What the primary records as the moment its standby went missing."""
    missing_for: float = 0.0
    then: SyncStep = SyncStep.NONE
    """The step that follows in the same cycle once this one succeeded (a renewal)."""


def decide_sync(view: SyncView) -> SyncDecision:
    """One step of keeping synchronous replication honest (Patroni's synchronous_mode)."""
    streaming = {r.slot: r for r in view.rows if r.state == "streaming"}
    present = [(site, slot) for site, slot in view.standby_slots if slot in streaming]
    if present:
        site, slot = present[0]
        row = streaming[slot]
        if not view.sync_names and row.flush_lag_bytes <= CATCH_UP_BYTES:
            return SyncDecision(SyncStep.NAME_STANDBY, site, slot)
        if view.sync_names and row.sync_state == "sync":
            if view.sync_standby != site:
                then = SyncStep.CLEAR_ALERT if view.alerted else SyncStep.NONE
                return SyncDecision(SyncStep.RECORD_SYNC_STANDBY, site, slot, then=then)
            if view.alerted:
                return SyncDecision(SyncStep.CLEAR_ALERT, site, slot)
        return SyncDecision(SyncStep.NONE, site, slot)
    since = view.missing_since if view.missing_since is not None else view.now
    missing_for = view.now - since
    timed_out = bool(view.sync_names) and missing_for >= view.standby_timeout
    if view.block_on_loss:
        # Commits wait for the standby, so it still has every acknowledged one: it stays
        # named in the lease and may take over if this primary is lost meanwhile.
        step = SyncStep.ALERT_BLOCKED if timed_out and not view.alerted else SyncStep.NONE
        return SyncDecision(step, missing_since=since, missing_for=missing_for)
    degrade = SyncStep.DEGRADE if timed_out else SyncStep.NONE
    if view.sync_standby is not None:
        return SyncDecision(
            SyncStep.WITHDRAW_STANDBY, missing_since=since, missing_for=missing_for, then=degrade
        )
    return SyncDecision(degrade, missing_since=since, missing_for=missing_for)
