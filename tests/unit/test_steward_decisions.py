"""Every branch of the site agent's decisions (``alwayson.data.deciding``), on numbers.

Each test builds one immutable view on a manual clock, decides, and asserts the action
and its verdict sentence: the same sentences the agent logs and reports.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from alwayson.data.deciding import (
    CATCH_UP_BYTES,
    RENEWAL_DEADLINE,
    Action,
    Role,
    StandbyRow,
    StewardView,
    SyncStep,
    SyncView,
    decide,
    decide_sync,
    endpoint_open,
    failsafe_refusal,
    renewal_budget,
    renewal_due,
    watchdog_must_stop,
)
from alwayson.data.leases import Lease, Tenure
from alwayson.util.clocks import ManualClock

TTL, MARGIN = 6.0, 2.0
HERE, THERE = "jakarta", "surabaya"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def lease(clock: ManualClock, holder: str | None, epoch: int = 3, **extra: object) -> Lease:
    """A lease as the keeper would show it now: granted a moment ago, live for ``TTL``."""
    now = clock.wall()
    fields: dict[str, object] = {
        "holder": holder,
        "epoch": epoch,
        "ttl": TTL,
        "expires_at": now + TTL,
        "granted_at": now,
        **extra,
    }
    return Lease(**fields)  # type: ignore[arg-type]


def view(clock: ManualClock, role: Role, **fields: object) -> StewardView:
    base = StewardView(
        site=HERE,
        primary_site=HERE,
        sites=(HERE, THERE),
        role=role,
        board_seen=True,
        lease=None,
        seen_lease=None,
        tenure_epoch=None,
        postmaster_alive=True,
        board_now=clock.wall(),
        monotonic=clock.monotonic(),
        wall=clock.wall(),
        reachable=frozenset({HERE, THERE}),
    )
    return replace(base, **fields)  # type: ignore[arg-type]


# -- the fencing side first ------------------------------------------------------------


def test_a_renewal_may_wait_its_full_deadline_while_the_lease_has_time(clock: ManualClock) -> None:
    tenure = Tenure(3, TTL, MARGIN, clock.monotonic())
    assert renewal_budget(tenure, clock.monotonic()) == RENEWAL_DEADLINE


def test_a_renewal_never_waits_past_the_moment_the_agent_would_fence(clock: ManualClock) -> None:
    tenure = Tenure(3, TTL, MARGIN, clock.monotonic())
    clock.advance(TTL - MARGIN - 0.5)  # 0.5 s left of this agent's own view
    budget = renewal_budget(tenure, clock.monotonic())
    assert budget == pytest.approx(0.45)
    assert budget is not None and clock.monotonic() + budget < tenure.fence_at()


def test_no_renewal_is_tried_once_nothing_is_left_of_the_lease(clock: ManualClock) -> None:
    tenure = Tenure(3, TTL, MARGIN, clock.monotonic())
    clock.advance(TTL - MARGIN - 0.05)
    assert renewal_budget(tenure, clock.monotonic()) is None
    clock.advance(10)
    assert renewal_budget(tenure, clock.monotonic()) is None


def test_a_primary_renews_every_third_of_the_ttl(clock: ManualClock) -> None:
    tenure = Tenure(3, TTL, MARGIN, clock.monotonic())
    assert not renewal_due(Role.PRIMARY, tenure, clock.monotonic())
    clock.advance(TTL / 3)
    assert renewal_due(Role.PRIMARY, tenure, clock.monotonic())
    assert not renewal_due(Role.STANDBY, tenure, clock.monotonic())
    assert not renewal_due(Role.SWITCHING, tenure, clock.monotonic())
    assert not renewal_due(Role.PRIMARY, None, clock.monotonic())


def test_the_watchdog_stops_a_running_primary_whose_lease_view_ran_out(
    clock: ManualClock,
) -> None:
    tenure = Tenure(3, TTL, MARGIN, clock.monotonic())
    clock.advance(TTL - MARGIN - 0.01)
    assert not watchdog_must_stop(Role.PRIMARY, tenure, True, clock.monotonic())
    clock.advance(0.01)
    assert watchdog_must_stop(Role.PRIMARY, tenure, True, clock.monotonic())
    # Nothing to stop: already dead, not a primary, or no tenure at all.
    assert not watchdog_must_stop(Role.PRIMARY, tenure, False, clock.monotonic())
    assert not watchdog_must_stop(Role.FENCED, tenure, True, clock.monotonic())
    assert not watchdog_must_stop(Role.PRIMARY, None, True, clock.monotonic())


def test_the_endpoint_closes_to_a_primary_when_its_lease_view_runs_out(
    clock: ManualClock,
) -> None:
    tenure = Tenure(3, TTL, MARGIN, clock.monotonic())
    assert endpoint_open(True, tenure, clock.monotonic())
    assert not endpoint_open(False, tenure, clock.monotonic())
    assert not endpoint_open(True, None, clock.monotonic())
    clock.advance(TTL - MARGIN)
    assert not endpoint_open(True, tenure, clock.monotonic())


# -- starting --------------------------------------------------------------------------


def test_starting_waits_for_etcd(clock: ManualClock) -> None:
    decision = decide(view(clock, Role.STARTING, board_seen=False, has_data=True))
    assert decision.action is Action.WAIT
    assert decision.verdict == "waiting for etcd (the lease)"


def test_starting_on_a_standbys_data_follows_the_primary(clock: ManualClock) -> None:
    decision = decide(
        view(clock, Role.STARTING, has_data=True, standby_signal=True, lease=lease(clock, THERE))
    )
    assert decision.action is Action.FOLLOW_FOUND_STANDBY
    assert decision.verdict == "found a standby; following the primary"


@pytest.mark.parametrize(
    "holder, previous, saved",
    [
        (None, None, 0),  # no lease at all
        (HERE, None, 3),  # still ours
        ("released", HERE, 3),  # released, nobody took it
        (THERE, HERE, 3),  # taken over from us at the epoch we last held
    ],
)
def test_restarting_on_a_primarys_data_takes_the_lease_back_when_nobody_else_holds_it(
    clock: ManualClock, holder: str | None, previous: str | None, saved: int
) -> None:
    if holder is None:
        seen = None
    elif holder == "released":
        seen = lease(clock, None, previous_holder=previous)
    else:
        seen = lease(clock, holder, previous_holder=previous)
    decision = decide(view(clock, Role.STARTING, has_data=True, lease=seen, saved_epoch=saved))
    assert decision.action is Action.RETAKE_LEASE
    assert decision.why == "restarted"
    assert decision.verdict == "restarted: taking the lease back"


def test_restarting_after_another_site_took_over_rejoins_it_as_a_standby(
    clock: ManualClock,
) -> None:
    taken = lease(clock, THERE, epoch=4, previous_holder=HERE)
    decision = decide(view(clock, Role.STARTING, has_data=True, lease=taken, saved_epoch=3))
    assert decision.action is Action.REJOIN
    assert decision.target == THERE
    assert decision.verdict == (
        f"rejoining as a standby of {THERE} ({THERE} became primary while this site was down)"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"reachable": frozenset({HERE})},  # the new primary cannot be reached to rewind from
        {"board_now": 1e12},  # its lease ran out too: nobody to follow
    ],
)
def test_restarting_after_another_site_took_over_waits_fenced_when_it_cannot_rejoin(
    clock: ManualClock, change: dict[str, object]
) -> None:
    taken = lease(clock, THERE, epoch=4, previous_holder=HERE)
    decision = decide(
        view(clock, Role.STARTING, has_data=True, lease=taken, saved_epoch=3, **change)
    )
    assert decision.action is Action.STAY_FENCED
    assert decision.why == f"{THERE} became primary while this site was down"
    assert decision.verdict == (
        f"fenced: {THERE} became primary while this site was down; it rejoins as a standby "
        f"once {THERE} holds a live lease and can be reached"
    )


def test_a_fenced_former_primary_rejoins_once_another_site_holds_a_live_lease(
    clock: ManualClock,
) -> None:
    taken = lease(clock, THERE, epoch=4, previous_holder=HERE)
    early = decide(fenced(clock, lease=taken))
    assert early.action is Action.WAIT  # not before retake_after (its WAL end is recorded)
    clock.advance(2 * TTL)
    decision = decide(fenced(clock, lease=lease(clock, THERE, epoch=4), retake_after=0.0))
    assert decision.action is Action.REJOIN
    assert decision.target == THERE
    assert decision.why == "the PostgreSQL process exited"


def test_the_primary_site_initialises_a_new_database(clock: ManualClock) -> None:
    decision = decide(view(clock, Role.STARTING))
    assert decision.action is Action.INITIALISE
    assert decision.verdict == "initialising a new primary"


def test_another_site_waits_for_a_primary_to_clone_from(clock: ManualClock) -> None:
    assert decide(view(clock, Role.STARTING, primary_site=THERE)).verdict == (
        "waiting for a primary to clone from"
    )
    released = lease(clock, None, previous_holder=THERE)
    decision = decide(view(clock, Role.STARTING, lease=released))
    assert decision.action is Action.WAIT
    assert decision.verdict == "waiting for a primary to clone from"


def test_a_site_without_data_clones_the_holder(clock: ManualClock) -> None:
    decision = decide(view(clock, Role.STARTING, lease=lease(clock, THERE)))
    assert decision.action is Action.CLONE
    assert decision.target == THERE
    assert decision.verdict == f"cloned a standby from {THERE} with pg_basebackup"


def test_cloning_waits_while_the_link_to_the_holder_is_cut(clock: ManualClock) -> None:
    decision = decide(
        view(clock, Role.STARTING, lease=lease(clock, THERE), reachable=frozenset({HERE}))
    )
    assert decision.action is Action.WAIT
    assert decision.verdict == f"cannot reach {THERE} to clone the standby"


# -- primary ---------------------------------------------------------------------------


def test_a_primary_whose_postgresql_exited_is_recorded_as_exited(clock: ManualClock) -> None:
    decision = decide(view(clock, Role.PRIMARY, tenure_epoch=3, postmaster_alive=False))
    assert decision.action is Action.PRIMARY_EXITED
    assert decision.why == "the PostgreSQL process exited"
    assert decision.verdict == "primary exited"


def test_a_primary_the_watchdog_stopped_says_so(clock: ManualClock) -> None:
    decision = decide(
        view(clock, Role.PRIMARY, tenure_epoch=3, postmaster_alive=False, watchdog_fired=True)
    )
    assert decision.action is Action.PRIMARY_EXITED
    assert decision.why == "lease not renewed in time: the watchdog stopped PostgreSQL"


def test_a_primary_whose_lease_was_revoked_fences_before_anything_else(
    clock: ManualClock,
) -> None:
    revoked = lease(clock, HERE, epoch=3, revoked_for=THERE)
    decision = decide(view(clock, Role.PRIMARY, tenure_epoch=3, seen_lease=revoked))
    assert decision.action is Action.FENCE
    assert decision.why == f"the operator revoked the lease for a failover to {THERE}"
    assert decision.verdict == (f"fenced: the operator revoked the lease for a failover to {THERE}")


def test_a_revocation_of_an_older_epoch_does_not_fence(clock: ManualClock) -> None:
    old = lease(clock, HERE, epoch=2, revoked_for=THERE)
    decision = decide(view(clock, Role.PRIMARY, tenure_epoch=3, seen_lease=old))
    assert decision.action is Action.KEEP_PRIMARY
    assert decision.verdict == "primary at epoch 3"


def test_a_healthy_primary_keeps_going(clock: ManualClock) -> None:
    mine = lease(clock, HERE, epoch=3)
    decision = decide(view(clock, Role.PRIMARY, tenure_epoch=3, lease=mine, seen_lease=mine))
    assert decision.action is Action.KEEP_PRIMARY
    assert decision.verdict == "primary at epoch 3"
    assert decide(view(clock, Role.PRIMARY)).verdict == "primary at epoch ?"


# -- fenced ----------------------------------------------------------------------------


def fenced(clock: ManualClock, **fields: object) -> StewardView:
    expired = lease(clock, None, epoch=3, previous_holder=HERE)
    defaults: dict[str, object] = {
        "lease": expired,
        "fence_reason": "the PostgreSQL process exited",
        "saved_epoch": 3,
        "has_data": True,
        "retake_after": clock.monotonic() + 2 * TTL,
    }
    return view(clock, Role.FENCED, **{**defaults, **fields})


def test_a_fenced_site_without_etcd_says_so(clock: ManualClock) -> None:
    decision = decide(fenced(clock, lease=None))
    assert decision.action is Action.WAIT
    assert decision.verdict == "fenced (the PostgreSQL process exited); etcd is unreachable"


def test_a_fenced_site_takes_the_lease_back_when_nobody_took_over(clock: ManualClock) -> None:
    waiting = fenced(clock)
    assert decide(waiting).action is Action.WAIT  # not before twice the ttl
    clock.advance(2 * TTL)
    decision = decide(replace(waiting, monotonic=clock.monotonic(), board_now=clock.wall()))
    assert decision.action is Action.RETAKE_LEASE
    assert decision.why == "nobody took over"
    assert decision.verdict == "nobody took over: taking the lease back"


@pytest.mark.parametrize(
    "change",
    [
        {"saved_epoch": 2},  # somebody held a newer epoch since
        {"has_data": False},  # nothing to start
        {"retake_after": 10_000.0},  # too early
    ],
)
def test_a_fenced_site_stays_fenced_unless_its_lease_is_untouched_and_it_can_start(
    clock: ManualClock, change: dict[str, object]
) -> None:
    clock.advance(2 * TTL)
    decision = decide(fenced(clock, **{"retake_after": 0.0, **change}))
    assert decision.action is Action.WAIT
    assert decision.verdict == (
        "fenced (the PostgreSQL process exited); it rejoins as a standby once another site "
        "holds a live lease and can be reached"
    )


def test_a_fenced_site_never_retakes_while_another_holds_a_live_lease(clock: ManualClock) -> None:
    for previous in (THERE, HERE):
        live = lease(clock, THERE, epoch=3, previous_holder=previous)
        assert decide(fenced(clock, lease=live, retake_after=0.0)).action is Action.REJOIN
        cut_off = fenced(clock, lease=live, retake_after=0.0, reachable=frozenset({HERE}))
        assert decide(cut_off).action is Action.WAIT


# -- standby ---------------------------------------------------------------------------


def test_a_stopped_standby_starts_following_the_holder(clock: ManualClock) -> None:
    decision = decide(view(clock, Role.STANDBY, postmaster_alive=False, lease=lease(clock, THERE)))
    assert decision.action is Action.START_STANDBY
    assert decision.target == THERE
    assert decision.verdict == f"started the standby following {THERE}"


def test_a_stopped_standby_without_a_holder_follows_the_other_site(clock: ManualClock) -> None:
    for seen in (None, lease(clock, HERE), lease(clock, None, previous_holder=THERE)):
        decision = decide(view(clock, Role.STANDBY, postmaster_alive=False, lease=seen))
        assert decision.action is Action.START_STANDBY
        assert decision.target == THERE


def test_a_stopped_standby_alone_knows_no_primary(clock: ManualClock) -> None:
    decision = decide(view(clock, Role.STANDBY, postmaster_alive=False, sites=(HERE,)))
    assert decision.action is Action.WAIT
    assert decision.verdict == "standby stopped; no primary known"


def test_a_standby_handed_the_lease_promotes(clock: ManualClock) -> None:
    decision = decide(view(clock, Role.STANDBY, lease=lease(clock, HERE, epoch=4)))
    assert decision.action is Action.PROMOTE
    assert decision.why == "the lease was handed over"
    assert decision.verdict == "promoted: the lease was handed over"


def test_a_standby_takes_an_expired_lease_and_dates_the_detection(clock: ManualClock) -> None:
    theirs = lease(clock, THERE)
    clock.advance(TTL)
    decision = decide(
        view(clock, Role.STANDBY, lease=theirs, board_now=clock.wall(), wall=clock.wall())
    )
    assert decision.action is Action.ACQUIRE_AND_PROMOTE
    assert decision.why == f"after {THERE}'s expired"
    assert decision.verdict == f"taking the lease after {THERE}'s expired"
    assert decision.detected_at == clock.wall()


def test_a_standby_keeps_the_first_detection_across_attempts(clock: ManualClock) -> None:
    first = clock.wall()
    theirs = lease(clock, None, previous_holder=THERE)
    clock.advance(1.0)
    decision = decide(view(clock, Role.STANDBY, lease=theirs, detected_at=first, wall=clock.wall()))
    assert decision.action is Action.ACQUIRE_AND_PROMOTE
    assert decision.verdict == f"taking the lease after {THERE}'s was released"
    assert decision.detected_at == first


def test_a_standby_takes_a_lease_revoked_for_it_once_expired(clock: ManualClock) -> None:
    revoked = lease(clock, THERE, revoked_for=HERE)
    assert decide(view(clock, Role.STANDBY, lease=revoked)).action is Action.FOLLOW
    clock.advance(TTL)
    decision = decide(view(clock, Role.STANDBY, lease=revoked, board_now=clock.wall()))
    assert decision.action is Action.ACQUIRE_AND_PROMOTE


def test_a_standby_leaves_a_lease_reserved_for_another_site(clock: ManualClock) -> None:
    reserved = lease(clock, None, previous_holder=THERE, revoked_for="medan")
    decision = decide(view(clock, Role.STANDBY, lease=reserved, detected_at=1.0))
    assert decision.action is Action.FOLLOW
    assert decision.verdict == "standby following None"
    assert decision.detected_at is None


def test_a_standby_follows_a_live_holder_and_forgets_a_detection(clock: ManualClock) -> None:
    decision = decide(view(clock, Role.STANDBY, lease=lease(clock, THERE), detected_at=5.0))
    assert decision.action is Action.FOLLOW
    assert decision.target == THERE
    assert decision.verdict == f"standby following {THERE}"
    assert decision.detected_at is None


def test_a_standby_that_cannot_see_the_lease_keeps_its_detection(clock: ManualClock) -> None:
    decision = decide(view(clock, Role.STANDBY, lease=None, detected_at=5.0))
    assert decision.action is Action.FOLLOW
    assert decision.detected_at == 5.0


# -- failsafe: the standby's promise and its first ttl --------------------------------


def expired_for_us(clock: ManualClock) -> tuple[Lease, float]:
    """THERE's lease, seen expired now; and when its expiry was first seen."""
    theirs = lease(clock, THERE)
    clock.advance(TTL)
    return theirs, clock.wall()


def test_a_standby_with_a_running_promise_does_not_take_an_expired_lease(
    clock: ManualClock,
) -> None:
    theirs, seen = expired_for_us(clock)
    promised = view(
        clock,
        Role.STANDBY,
        lease=theirs,
        board_now=clock.wall(),
        wall=clock.wall(),
        promised_until=clock.monotonic() + 2.5,
        promised_to=THERE,
    )

    decision = decide(promised)

    assert decision.action is Action.FOLLOW
    assert decision.verdict == (
        f"not taking the lease after {THERE}'s expired: promised {THERE} not to take over "
        "until 2.5s from now (failsafe: it confirmed that primary without etcd)"
    )
    assert decision.detected_at == seen  # the wait counts in the failover's detection
    after = replace(promised, monotonic=promised.promised_until, detected_at=seen)
    taken = decide(after)
    assert taken.action is Action.ACQUIRE_AND_PROMOTE and taken.detected_at == seen


def test_a_standby_with_a_running_promise_does_not_promote_even_when_named(
    clock: ManualClock,
) -> None:
    named = view(
        clock,
        Role.STANDBY,
        lease=lease(clock, HERE, epoch=4),
        promised_until=clock.monotonic() + 1.0,
        promised_to=THERE,
    )

    decision = decide(named)

    assert decision.action is Action.FOLLOW
    assert decision.verdict.startswith(f"named holder, not promoting yet: promised {THERE} ")
    assert decide(replace(named, promised_until=clock.monotonic())).action is Action.PROMOTE


def test_a_standby_takes_nothing_over_during_its_agents_first_ttl(clock: ManualClock) -> None:
    theirs, _ = expired_for_us(clock)
    started = view(
        clock,
        Role.STANDBY,
        lease=theirs,
        board_now=clock.wall(),
        quiet_until=clock.monotonic() + 0.5,
    )

    decision = decide(started)

    assert decision.action is Action.FOLLOW
    assert decision.verdict == (
        f"not taking the lease after {THERE}'s expired: the agent started less than a ttl "
        "ago: no takeover for 0.5s more (a failsafe promise given before it restarted may "
        "still run)"
    )
    assert decide(replace(started, monotonic=started.quiet_until)).action is (
        Action.ACQUIRE_AND_PROMOTE
    )
    named = replace(started, lease=lease(clock, HERE, epoch=4))
    assert decide(named).action is Action.FOLLOW


def test_an_agent_up_for_a_ttl_takes_over_at_once(clock: ManualClock) -> None:
    """The first-ttl rule costs a normal failover nothing: only the agent's start counts."""
    theirs, seen = expired_for_us(clock)
    up = view(
        clock,
        Role.STANDBY,
        lease=theirs,
        board_now=clock.wall(),
        wall=clock.wall(),
        quiet_until=clock.monotonic() - 30.0,
        promised_until=clock.monotonic() - 0.01,
        promised_to=THERE,
    )
    decision = decide(up)
    assert decision.action is Action.ACQUIRE_AND_PROMOTE and decision.detected_at == seen


def refusal(clock: ManualClock, **changes: object) -> str | None:
    asked: dict[str, object] = {
        "role": Role.STANDBY,
        "lease": lease(clock, THERE, epoch=3),
        "asker": THERE,
        "epoch": 3,
        "acquiring": False,
        "monotonic": clock.monotonic(),
        "quiet_until": clock.monotonic() - 1.0,
        **changes,
    }
    return failsafe_refusal(**asked)  # type: ignore[arg-type]


def test_a_following_standby_confirms_the_primary_it_saw(clock: ManualClock) -> None:
    assert refusal(clock) is None
    expired = lease(clock, THERE, epoch=3, expires_at=clock.wall() - 10.0)
    assert refusal(clock, lease=expired) is None  # etcd lost its key: still that primary


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"role": Role.PRIMARY}, "this site is not a standby (primary)"),
        ({"role": Role.STARTING}, "this site is not a standby (starting)"),
        ({"acquiring": True}, "this site is acquiring the lease"),
        ({"lease": None}, "this site has not seen the lease"),
        ({"epoch": 2}, f"the lease this site saw names {THERE} at epoch 3, not {THERE} at epoch 2"),
        (
            {"asker": "medan"},
            f"the lease this site saw names {THERE} at epoch 3, not medan at epoch 3",
        ),
        (
            {"quiet_until": 1e9},
            "this agent started less than a ttl ago: it promises nothing yet",
        ),
    ],
    ids=["primary", "starting", "acquiring", "no-lease", "old-epoch", "other-site", "restarted"],
)
def test_a_standby_refuses_to_confirm(
    clock: ManualClock, changes: dict[str, object], why: str
) -> None:
    assert refusal(clock, **changes) == why


def test_a_standby_refuses_to_confirm_a_lease_it_now_holds_or_saw_revoked(
    clock: ManualClock,
) -> None:
    mine = lease(clock, HERE, epoch=4)
    assert refusal(clock, lease=mine) == (
        f"the lease this site saw names {HERE} at epoch 4, not {THERE} at epoch 3"
    )
    for target in (HERE, "medan"):
        revoked = lease(clock, THERE, epoch=3, revoked_for=target)
        assert refusal(clock, lease=revoked) == f"the lease is revoked for a failover to {target}"
    released = lease(clock, None, epoch=3, previous_holder=THERE)
    assert refusal(clock, lease=released) == (
        f"the lease this site saw names no holder at epoch 3, not {THERE} at epoch 3"
    )


@pytest.mark.parametrize("role", [Role.SWITCHING, Role.REJOINING])
def test_a_site_in_the_middle_of_a_request_only_reports_it(clock: ManualClock, role: Role) -> None:
    decision = decide(view(clock, role, detected_at=7.0))
    assert decision.action is Action.WAIT
    assert decision.verdict == role.value
    assert decision.detected_at == 7.0


# -- synchronous replication -------------------------------------------------------------


def sync(clock: ManualClock, **fields: object) -> SyncView:
    base = SyncView(
        standby_slots=((THERE, "alwayson_surabaya"),),
        rows=(),
        sync_names=("alwayson_surabaya",),
        sync_standby=THERE,
        alerted=False,
        missing_since=None,
        now=clock.monotonic(),
        block_on_loss=False,
        standby_timeout=5.0,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def row(state: str = "streaming", sync_state: str = "sync", behind: int = 0) -> StandbyRow:
    return StandbyRow("alwayson_surabaya", state, sync_state, behind)


def test_a_caught_up_standby_is_made_synchronous(clock: ManualClock) -> None:
    got = decide_sync(sync(clock, rows=(row(sync_state="async"),), sync_names=()))
    assert (got.step, got.slot, got.missing_since) == (
        SyncStep.NAME_STANDBY,
        "alwayson_surabaya",
        None,
    )
    behind = row(sync_state="async", behind=CATCH_UP_BYTES + 1)
    assert decide_sync(sync(clock, rows=(behind,), sync_names=())).step is SyncStep.NONE


def test_a_sync_standby_is_named_in_the_lease_then_the_alert_clears(clock: ManualClock) -> None:
    got = decide_sync(sync(clock, rows=(row(),), sync_standby=None))
    assert (got.step, got.site, got.then) == (SyncStep.RECORD_SYNC_STANDBY, THERE, SyncStep.NONE)
    got = decide_sync(sync(clock, rows=(row(),), sync_standby=None, alerted=True))
    assert got.then is SyncStep.CLEAR_ALERT
    got = decide_sync(sync(clock, rows=(row(),), alerted=True))
    assert (got.step, got.site) == (SyncStep.CLEAR_ALERT, THERE)
    assert decide_sync(sync(clock, rows=(row(),))).step is SyncStep.NONE
    assert decide_sync(sync(clock, rows=(row(sync_state="potential"),))).step is SyncStep.NONE


def test_a_returning_standby_ends_the_missing_time(clock: ManualClock) -> None:
    got = decide_sync(sync(clock, rows=(row(),), missing_since=clock.monotonic() - 3))
    assert got.missing_since is None


def test_a_lost_standby_is_withdrawn_from_the_lease_first(clock: ManualClock) -> None:
    lost = decide_sync(sync(clock, rows=(row(state="catchup"),)))
    assert lost.step is SyncStep.WITHDRAW_STANDBY
    assert lost.then is SyncStep.NONE
    assert lost.missing_since == clock.monotonic()


def test_commits_go_on_alone_after_the_standby_timeout(clock: ManualClock) -> None:
    since = clock.monotonic()
    clock.advance(4.9)
    early = decide_sync(sync(clock, sync_standby=None, missing_since=since))
    assert early.step is SyncStep.NONE
    assert early.missing_for == pytest.approx(4.9)
    clock.advance(0.1)
    late = decide_sync(sync(clock, sync_standby=None, missing_since=since))
    assert late.step is SyncStep.DEGRADE
    assert late.missing_since == since
    # Still named in the lease at the timeout: withdrawn first, then degraded.
    both = decide_sync(sync(clock, missing_since=since))
    assert (both.step, both.then) == (SyncStep.WITHDRAW_STANDBY, SyncStep.DEGRADE)
    # Already degraded: nothing more to do.
    assert decide_sync(sync(clock, sync_names=(), sync_standby=None, missing_since=since)).step is (
        SyncStep.NONE
    )


def test_with_block_commits_wait_and_the_standby_stays_named(clock: ManualClock) -> None:
    since = clock.monotonic()
    assert decide_sync(sync(clock, block_on_loss=True)).step is SyncStep.NONE
    clock.advance(5.0)
    blocked = decide_sync(sync(clock, block_on_loss=True, missing_since=since))
    assert blocked.step is SyncStep.ALERT_BLOCKED
    again = decide_sync(sync(clock, block_on_loss=True, missing_since=since, alerted=True))
    assert again.step is SyncStep.NONE


def test_the_first_standby_in_spec_order_is_chosen(clock: ManualClock) -> None:
    slots = (("medan", "alwayson_medan"), (THERE, "alwayson_surabaya"))
    rows = (row(sync_state="async"), StandbyRow("alwayson_medan", "streaming", "async", 0))
    got = decide_sync(sync(clock, standby_slots=slots, rows=rows, sync_names=()))
    assert (got.site, got.slot) == ("medan", "alwayson_medan")
