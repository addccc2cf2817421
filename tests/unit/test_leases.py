"""The lease rules (the keeper's judgement) and the agent's own view of it (``Tenure``).

Everything runs on explicit times: no clock, no sleeps. The last part is the safety
argument of docs/DATA-DESIGN.md as a hypothesis search: a primary renewing over a slow,
lossy network and a standby grabbing the lease as soon as the keeper lets it are never
both writable at one moment, from the lease arithmetic alone.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alwayson.data.failovers import fault_of, lease_free_at
from alwayson.data.leases import (
    Lease,
    LeaseRefused,
    Tenure,
    acquire,
    hand_over,
    reclaim,
    release,
    renew,
    revoke,
)
from alwayson.spec.models import LeaseSettings

TTL = 6.0


def held_by_west(now: float = 0.0) -> Lease:
    return acquire(None, "west", TTL, now)


# ---------------------------------------------------------------- acquire


def test_acquire_on_an_empty_key_starts_at_epoch_one() -> None:
    lease = acquire(None, "west", TTL, 100.0)

    assert lease == Lease(
        holder="west", epoch=1, ttl=TTL, expires_at=106.0, granted_at=100.0, previous_holder=None
    )
    assert not lease.expired(105.999)
    assert lease.expired(106.0)


def test_acquire_is_refused_while_the_lease_is_live() -> None:
    lease = held_by_west(0.0)

    with pytest.raises(LeaseRefused) as refused:
        acquire(lease, "east", TTL, 5.5)

    assert refused.value.reason == "west holds the lease for 0.5s more"
    assert refused.value.lease == lease


def test_the_holder_cannot_acquire_its_own_live_lease_again() -> None:
    lease = held_by_west(0.0)

    with pytest.raises(LeaseRefused):
        acquire(lease, "west", TTL, 1.0)


def test_acquire_after_expiry_bumps_the_epoch_and_remembers_the_previous_holder() -> None:
    lease = held_by_west(0.0)

    taken = acquire(lease, "east", TTL, 6.0)  # exactly at expires_at: expired

    assert (taken.holder, taken.epoch, taken.previous_holder) == ("east", 2, "west")
    assert (taken.granted_at, taken.expires_at) == (6.0, 12.0)


# ---------------------------------------------------------------- renew


def test_renew_by_the_holder_extends_from_the_keepers_now() -> None:
    lease = held_by_west(0.0)

    renewed = renew(lease, "west", 1, 8.0, 4.0, synchronous=True, sync_standby="east")

    assert (renewed.holder, renewed.epoch) == ("west", 1)
    assert (renewed.ttl, renewed.expires_at, renewed.granted_at) == (8.0, 12.0, 0.0)
    assert (renewed.synchronous, renewed.sync_standby) == (True, "east")


@pytest.mark.parametrize(
    ("site", "epoch", "reason"),
    [
        ("east", 1, "east does not hold the lease at epoch 1 (held by west at epoch 1)"),
        ("west", 2, "west does not hold the lease at epoch 2 (held by west at epoch 1)"),
    ],
)
def test_renew_is_refused_for_the_wrong_site_or_epoch(site: str, epoch: int, reason: str) -> None:
    lease = held_by_west(0.0)

    with pytest.raises(LeaseRefused) as refused:
        renew(lease, site, epoch, TTL, 1.0)

    assert refused.value.reason == reason
    assert refused.value.lease == lease


def test_renew_of_no_lease_is_refused() -> None:
    with pytest.raises(LeaseRefused) as refused:
        renew(None, "west", 1, TTL, 1.0)

    assert refused.value.reason == "west does not hold the lease at epoch 1"
    assert refused.value.lease is None


@pytest.mark.parametrize("now", [6.0, 9.0])
def test_renew_is_refused_once_the_lease_expired(now: float) -> None:
    with pytest.raises(LeaseRefused) as refused:
        renew(held_by_west(0.0), "west", 1, TTL, now)

    assert refused.value.reason == "lease expired before the renewal arrived"


def test_renew_is_refused_after_a_revoke_even_before_expiry() -> None:
    lease = revoke(held_by_west(0.0), "east", 1.0)

    with pytest.raises(LeaseRefused) as refused:
        renew(lease, "west", 1, TTL, 2.0)

    assert refused.value.reason == "lease revoked for a failover to east"


# ---------------------------------------------------------------- release, hand over


def test_release_lets_the_other_site_acquire_at_once() -> None:
    lease = held_by_west(0.0)

    released = release(lease, "west", 1, 2.0, why="switchover")
    taken = acquire(released, "east", TTL, 2.0)

    assert (released.holder, released.previous_holder) == (None, "west")
    assert (released.expires_at, released.released_at, released.released_why) == (
        2.0,
        2.0,
        "switchover",
    )
    assert released.expired(2.0)
    assert (taken.holder, taken.epoch, taken.previous_holder) == ("east", 2, "west")
    assert taken.expires_at == 8.0


@pytest.mark.parametrize(("site", "epoch"), [("east", 1), ("west", 2)])
def test_release_by_a_non_holder_is_refused(site: str, epoch: int) -> None:
    with pytest.raises(LeaseRefused):
        release(held_by_west(0.0), site, epoch, 1.0)


def test_hand_over_gives_the_next_epoch_to_the_target() -> None:
    lease = renew(held_by_west(0.0), "west", 1, TTL, 3.0)

    handed = hand_over(lease, "west", 1, "east", 4.0, 5.0)

    assert handed == Lease(
        holder="east",
        epoch=2,
        ttl=4.0,
        expires_at=9.0,
        granted_at=5.0,
        previous_holder="west",
        fault_at=5.0,
    )
    with pytest.raises(LeaseRefused):
        renew(handed, "west", 1, TTL, 5.5)
    assert renew(handed, "east", 2, 4.0, 6.0).expires_at == 10.0


def test_hand_over_is_refused_after_expiry_or_by_a_non_holder() -> None:
    lease = held_by_west(0.0)

    with pytest.raises(LeaseRefused) as late:
        hand_over(lease, "west", 1, "east", TTL, 6.0)
    with pytest.raises(LeaseRefused):
        hand_over(lease, "east", 1, "east", TTL, 1.0)
    with pytest.raises(LeaseRefused):
        hand_over(lease, "west", 2, "east", TTL, 1.0)

    assert late.value.reason == "lease expired before the handover arrived"


def test_hand_over_carries_when_the_old_primary_stopped_taking_writes() -> None:
    handed = hand_over(held_by_west(0.0), "west", 1, "east", TTL, 2.0, fault_at=1.5)

    assert handed.fault_at == 1.5
    assert fault_of(handed, detected=2.2) == (
        1.5,
        "the old primary stopped taking writes for the switchover",
    )
    assert lease_free_at(handed) == 2.0


# ---------------------------------------------------------------- fault times


def test_a_release_carries_the_holders_fault_time() -> None:
    released = release(held_by_west(0.0), "west", 1, 3.0, "process exited", fault_at=2.9)

    assert (released.fault_at, released.released_at, released.released_why) == (
        2.9,
        3.0,
        "process exited",
    )
    assert fault_of(released, detected=3.2) == (2.9, "the old primary's agent: process exited")
    assert lease_free_at(released) == 3.0


def test_a_release_without_a_fault_time_uses_its_own() -> None:
    assert release(held_by_west(0.0), "west", 1, 3.0).fault_at == 3.0


def test_an_expired_lease_dates_the_fault_at_the_last_renewal() -> None:
    lease = renew(held_by_west(0.0), "west", 1, TTL, 2.0)

    when, basis = fault_of(lease, detected=8.3)

    assert when == 2.0 and "last successful renewal" in basis
    assert lease_free_at(lease) == 8.0


def test_a_revocation_is_the_fault_even_after_the_fenced_holder_releases() -> None:
    revoked = revoke(held_by_west(0.0), "east", 1.0)
    again = revoke(revoked, "east", 1.5)
    released = release(again, "west", 1, 1.8, "fenced", fault_at=1.7)

    assert (revoked.fault_at, again.fault_at, released.fault_at) == (1.0, 1.0, 1.0)
    assert released.revoked_for == "east", "still reserved for the operator's choice"
    with pytest.raises(LeaseRefused):
        acquire(released, "west", TTL, 2.0)
    assert acquire(released, "east", TTL, 2.0).epoch == 2
    assert fault_of(released, detected=2.0) == (
        1.0,
        "the operator revoked the lease (db failover)",
    )
    assert lease_free_at(released) == 1.8
    assert revoke(revoked, "north", 2.0).fault_at == 2.0


def test_no_lease_seen_dates_the_fault_at_the_detection() -> None:
    when, basis = fault_of(None, detected=4.0)

    assert when == 4.0 and basis.startswith("unknown")


# ---------------------------------------------------------------- revoke


def test_revoke_lets_only_the_target_acquire_and_only_after_expiry() -> None:
    lease = revoke(held_by_west(0.0), "east", 1.0)

    assert (lease.holder, lease.epoch, lease.expires_at, lease.revoked_for) == (
        "west",
        1,
        6.0,
        "east",
    )
    with pytest.raises(LeaseRefused) as early:
        acquire(lease, "east", TTL, 5.0)
    assert early.value.reason == "west holds the lease for 1.0s more"
    for other in ("west", "north"):
        with pytest.raises(LeaseRefused) as wrong:
            acquire(lease, other, TTL, 6.0)
        assert wrong.value.reason == "a failover to east is under way"

    taken = acquire(lease, "east", TTL, 6.0)

    assert (taken.holder, taken.epoch, taken.previous_holder, taken.revoked_for) == (
        "east",
        2,
        "west",
        None,
    )


def test_revoke_of_an_empty_key_reserves_it_for_the_target() -> None:
    lease = revoke(None, "east", 3.0)

    assert lease.expired(3.0)
    with pytest.raises(LeaseRefused):
        acquire(lease, "west", TTL, 3.0)
    assert acquire(lease, "east", TTL, 3.0).epoch == 1


# ---------------------------------------------------------------- reclaim (failsafe)


def test_the_holder_reclaims_its_lost_lease_at_the_same_epoch() -> None:
    lease = renew(held_by_west(0.0), "west", 1, TTL, 1.0, synchronous=True, sync_standby="east")

    back = reclaim(lease, "west", 1, 9.0, 30.0)  # long after the holder key went

    assert (back.holder, back.epoch, back.ttl, back.expires_at) == ("west", 1, 9.0, 39.0)
    assert (back.synchronous, back.sync_standby, back.granted_at) == (True, "east", 0.0)


@pytest.mark.parametrize(
    ("lease", "reason"),
    [
        (None, "west no longer holds the lease at epoch 1"),
        (
            acquire(held_by_west(0.0), "east", TTL, 7.0),
            "west no longer holds the lease at epoch 1 (the record names east at epoch 2)",
        ),
        (
            release(held_by_west(0.0), "west", 1, 2.0),
            "west no longer holds the lease at epoch 1 (it was released)",
        ),
        (revoke(held_by_west(0.0), "east", 1.0), "lease revoked for a failover to east"),
        (held_by_west(5.0), "the lease is live: renew it, there is nothing to reclaim"),
    ],
    ids=["no-lease", "taken-over", "released", "revoked", "still-live"],
)
def test_a_reclaim_is_refused_unless_the_record_still_names_the_holder(
    lease: Lease | None, reason: str
) -> None:
    with pytest.raises(LeaseRefused) as refused:
        reclaim(lease, "west", 1, TTL, 10.0)

    assert refused.value.reason == reason
    assert refused.value.lease == lease


# ---------------------------------------------------------------- synchronous replication


def degraded_sync_lease() -> Lease:
    """West held the lease with synchronous replication but no caught-up standby."""
    return renew(held_by_west(0.0), "west", 1, TTL, 1.0, synchronous=True, sync_standby=None)


def test_a_degraded_synchronous_lease_refuses_a_site_that_may_miss_commits() -> None:
    lease = degraded_sync_lease()

    with pytest.raises(LeaseRefused) as refused:
        acquire(lease, "east", TTL, 7.0)

    assert "alwayson db failover --to east" in refused.value.reason
    assert "not known to have every acknowledged commit" in refused.value.reason


def test_a_degraded_synchronous_lease_refuses_the_other_site_after_a_release_too() -> None:
    released = release(degraded_sync_lease(), "west", 1, 2.0)

    with pytest.raises(LeaseRefused) as refused:
        acquire(released, "east", TTL, 2.0)

    assert "alwayson db failover --to east" in refused.value.reason
    assert acquire(released, "west", TTL, 2.0).epoch == 2


def test_a_degraded_synchronous_lease_can_go_back_to_its_holder() -> None:
    taken = acquire(degraded_sync_lease(), "west", TTL, 7.0)

    assert (taken.holder, taken.epoch) == ("west", 2)


def test_a_synchronous_lease_can_go_to_the_standby_that_has_every_commit() -> None:
    lease = renew(held_by_west(0.0), "west", 1, TTL, 1.0, synchronous=True, sync_standby="east")

    taken = acquire(lease, "east", TTL, 7.0)

    assert (taken.holder, taken.epoch, taken.previous_holder) == ("east", 2, "west")
    assert (taken.synchronous, taken.sync_standby) == (False, None)


def test_a_forced_failover_accepts_the_loss_of_a_degraded_synchronous_lease() -> None:
    lease = revoke(degraded_sync_lease(), "east", 2.0)

    taken = acquire(lease, "east", TTL, 7.0)

    assert (taken.holder, taken.epoch) == ("east", 2)


def test_an_asynchronous_lease_goes_to_any_site_after_expiry() -> None:
    lease = renew(held_by_west(0.0), "west", 1, TTL, 1.0, synchronous=False, sync_standby=None)

    assert acquire(lease, "east", TTL, 7.0).holder == "east"


def test_a_lease_survives_its_json_form() -> None:
    lease = revoke(degraded_sync_lease(), "east", 2.0)

    assert Lease.from_json(lease.to_json()) == lease


# ---------------------------------------------------------------- the agent's tenure


def test_tenure_arithmetic() -> None:
    tenure = Tenure(epoch=3, ttl=6.0, margin=2.0, renewed_at=100.0)

    assert tenure.fence_at() == 104.0
    assert not tenure.must_fence(103.999)
    assert tenure.must_fence(104.0)
    assert tenure.must_fence(200.0)
    assert not tenure.renew_due(101.999)
    assert tenure.renew_due(102.0)

    tenure.renewed_at = 102.0

    assert tenure.fence_at() == 106.0
    assert not tenure.must_fence(105.0)
    assert not tenure.renew_due(103.0)


@given(
    ttl=st.floats(min_value=1.5, max_value=120.0),
    fraction=st.floats(min_value=0.001, max_value=0.666),
    renewed_at=st.floats(min_value=0.0, max_value=1e6),
)
def test_a_valid_margin_leaves_time_to_renew_before_fencing(
    ttl: float, fraction: float, renewed_at: float
) -> None:
    margin = ttl * fraction
    LeaseSettings(ttl=ttl, margin=margin)  # the spec accepts it
    tenure = Tenure(epoch=1, ttl=ttl, margin=margin, renewed_at=renewed_at)

    due = renewed_at + ttl / 3

    assert tenure.renew_due(due)
    assert not tenure.must_fence(due)
    assert tenure.must_fence(tenure.fence_at())


# ---------------------------------------------------------------- two writers, never


@dataclass(frozen=True)
class Renewal:
    """One request of the primary's agent A to the keeper (also its first acquisition)."""

    sent: float
    delay: float
    """Transit to the keeper."""
    back: float
    """Transit of the answer back to A."""
    lost: str | None
    """None, "request" (never reaches the keeper) or "answer" (A never hears)."""


@dataclass(frozen=True)
class Attempt:
    """One acquisition request of the standby's agent B."""

    sent: float
    delay: float
    lost: bool


@dataclass
class Run:
    a_holds: list[tuple[float, Tenure]]
    """(when A learns it, the tenure it keeps from then on), in time order."""
    b_from: float | None
    """When the keeper granted B the lease (B writes from then on)."""
    points: list[float]

    def a_writable(self, t: float) -> bool:
        known = [tenure for learnt, tenure in self.a_holds if learnt <= t]
        return bool(known) and not known[-1].must_fence(t)

    def b_writable(self, t: float) -> bool:
        return self.b_from is not None and t >= self.b_from

    def overlaps(self) -> list[float]:
        """Every checked moment at which both A and B accept writes."""
        points = sorted(set(self.points))
        checks = points + [(x + y) / 2 for x, y in itertools.pairwise(points)]
        checks.append(points[-1] + 1.0)
        return [t for t in checks if self.a_writable(t) and self.b_writable(t)]


def simulate(
    ttl: float,
    margin: float,
    first: Renewal,
    renewals: list[Renewal],
    attempts: list[Attempt],
    stamp: str = "sent",
) -> Run:
    """One keeper and two agents on one clock (real time).

    A acquires with ``first`` and renews with ``renewals`` (only those sent once it has
    heard of its epoch); its tenure's ``renewed_at`` is the send time of the newest
    successful request it heard back from (``stamp="received"`` models the mistake of
    stamping the answer's arrival instead). B tries ``attempts`` and writes from the
    keeper's grant on, without ever fencing.
    """
    heard = first.sent + first.delay + first.back
    a_requests = [first] + [r for r in renewals if r.sent >= heard]
    events: list[tuple[float, int, object]] = []
    for order, request in enumerate(a_requests):
        if request.lost != "request":
            events.append((request.sent + request.delay, order, request))
    for order, attempt in enumerate(attempts, start=len(a_requests)):
        if not attempt.lost:
            events.append((attempt.sent + attempt.delay, order, attempt))
    events.sort(key=lambda e: (e[0], e[1]))

    lease: Lease | None = None
    a_epoch: int | None = None
    granted: list[tuple[float, float]] = []  # (answer arrives at A, stamp)
    b_from: float | None = None
    points = [0.0]
    for arrival, _, request in events:
        points.append(arrival)
        try:
            if isinstance(request, Attempt):
                if a_epoch is None:
                    # B is A's standby: it exists only once A holds the lease (and B,
                    # which never fences here, must not be the first holder).
                    continue
                lease = acquire(lease, "b", ttl, arrival)
                if b_from is None:
                    b_from = arrival
                continue
            assert isinstance(request, Renewal)
            if request is first:
                lease = acquire(lease, "a", ttl, arrival)
                a_epoch = lease.epoch
            elif a_epoch is None:
                continue
            else:
                lease = renew(lease, "a", a_epoch, ttl, arrival)
        except LeaseRefused:
            continue
        answered = arrival + request.back
        if request.lost != "answer":
            granted.append((answered, request.sent if stamp == "sent" else answered))
        points.append(answered)

    a_holds: list[tuple[float, Tenure]] = []
    renewed_at: float | None = None
    for answered, stamped in sorted(granted):
        renewed_at = stamped if renewed_at is None else max(renewed_at, stamped)
        assert a_epoch is not None
        tenure = Tenure(epoch=a_epoch, ttl=ttl, margin=margin, renewed_at=renewed_at)
        a_holds.append((answered, tenure))
        points.append(tenure.fence_at())
    points += [r.sent for r in a_requests] + [a.sent for a in attempts]
    return Run(a_holds=a_holds, b_from=b_from, points=points)


delays = st.floats(min_value=0.0, max_value=3.0)
losses = st.sampled_from([None, None, None, "request", "answer"])


@dataclass(frozen=True)
class Scenario:
    ttl: float
    margin: float
    first: Renewal
    renewals: list[Renewal]
    attempts: list[Attempt]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """A renews at drawn gaps (on time or late, any request or answer may be lost); B
    polls the keeper at a drawn interval (as its agent does) and also at drawn moments."""
    ttl = draw(st.floats(min_value=1.5, max_value=20.0))
    margin = ttl * draw(st.floats(min_value=0.001, max_value=0.666))
    LeaseSettings(ttl=ttl, margin=margin)  # a value the spec accepts
    first = Renewal(sent=0.0, delay=draw(delays), back=draw(delays), lost=None)
    renewals: list[Renewal] = []
    sent = 0.0
    for gap, delay, back, lost in draw(
        st.lists(st.tuples(st.floats(0.0, 0.8), delays, delays, losses), max_size=30)
    ):
        sent += gap * ttl
        renewals.append(Renewal(sent=sent, delay=delay, back=back, lost=lost))
    horizon = sent + 2 * ttl + 3.0
    start = draw(st.floats(min_value=0.0, max_value=horizon))
    interval = draw(st.floats(min_value=0.01, max_value=1.0))
    b_delays = draw(st.lists(delays, min_size=1, max_size=8))
    b_lost = draw(st.sets(st.integers(min_value=0, max_value=50), max_size=10))
    polls = min(int((horizon - start) / interval) + 1, 400)
    attempts = [
        Attempt(
            sent=start + k * interval,
            delay=b_delays[k % len(b_delays)],
            lost=k in b_lost,
        )
        for k in range(polls)
    ]
    attempts += draw(
        st.lists(
            st.builds(Attempt, sent=st.floats(0.0, horizon), delay=delays, lost=st.booleans()),
            max_size=5,
        )
    )
    return Scenario(ttl, margin, first, renewals, attempts)


@settings(max_examples=600, deadline=None)
@given(scenario=scenarios())
def test_the_old_primary_and_the_new_one_are_never_writable_together(
    scenario: Scenario,
) -> None:
    run = simulate(
        scenario.ttl, scenario.margin, scenario.first, scenario.renewals, scenario.attempts
    )

    assert run.overlaps() == []


def test_the_property_check_catches_a_primary_that_stamps_the_answer_not_the_request() -> None:
    """The checker is not vacuous: stamping renewed_at when the (slow) answer arrives
    lets A write past the keeper's expiry, into B's lease."""
    first = Renewal(sent=0.0, delay=0.0, back=3.0, lost=None)
    grab = [Attempt(sent=6.0, delay=0.0, lost=False)]

    wrong = simulate(TTL, 1.0, first, [], grab, stamp="received")
    right = simulate(TTL, 1.0, first, [], grab)

    assert wrong.b_from == 6.0
    assert wrong.overlaps() != []
    assert min(wrong.overlaps()) == 6.0
    assert right.b_from == 6.0
    assert right.overlaps() == []
    assert right.a_writable(4.999) and not right.a_writable(5.0)


def test_a_standby_takes_over_right_after_a_primary_cut_off_from_the_keeper() -> None:
    """A renews on time until its requests stop arriving; B gets the lease the moment it
    expires and A has fenced by then, with the margin to spare."""
    first = Renewal(sent=0.0, delay=0.5, back=0.5, lost=None)
    on_time = [Renewal(sent=2.0 * k, delay=0.5, back=0.5, lost=None) for k in range(1, 5)]
    cut = [Renewal(sent=10.0 + 2.0 * k, delay=0.0, back=0.0, lost="request") for k in range(5)]
    grabs = [Attempt(sent=10.0 + 0.5 * k, delay=0.0, lost=False) for k in range(20)]

    run = simulate(TTL, 2.0, first, on_time + cut, grabs)

    assert run.b_from == 14.5  # the last renewal arrived at 8.5
    assert run.a_writable(11.999)
    assert not run.a_writable(12.0)  # sent at 8.0, fenced at 8 + 6 - 2
    assert run.overlaps() == []


def test_an_expiry_is_dated_by_the_old_primarys_last_report_when_known() -> None:
    """A new etcd leader re-grants every lease its ttl: "expiry - ttl" can come seconds
    after the real fault; the old agent's last report (several a second) does not."""
    expired = Lease(
        holder="jakarta", epoch=2, ttl=6.0, expires_at=109.0, granted_at=90.0
    )  # seen gone at 109: "renewed at 103", though the site died at 100.1
    when, basis = fault_of(expired, detected=109.2, last_report=100.0)
    assert when == 100.0 and "last report" in basis
    assert fault_of(expired, detected=109.2)[0] == 103.0  # unknown report: as before
