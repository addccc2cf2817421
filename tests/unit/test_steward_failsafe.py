"""The failsafe acted out by two stewards on the in-memory etcd and a manual clock: a
primary that cannot reach etcd lives on its standby's confirmations, and only on them.

Each site reaches etcd through its own :class:`Reach` (so one can be cut off while the
other still reaches it) and the primary asks the standby's steward in process
(:class:`InProcess`); the HTTP side of the question is at the end. Nothing here starts a
process: the postmaster is a fake, and the renewal and the decisions are driven by hand
as the steward's loops would drive them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from tests.unit.stewardfakes import HERE, THERE, TTL, FakeEngine, FakePostmaster, config

from alwayson.data.board import Board
from alwayson.data.deciding import (
    RENEWAL_DEADLINE,
    Action,
    Role,
    decide,
    watchdog_must_stop,
)
from alwayson.data.engines import Engine, Postmaster
from alwayson.data.failsafe import HttpAsker, failsafe_router
from alwayson.data.leases import LeaseRefused
from alwayson.data.promoting import take_handed_lease
from alwayson.data.stewarding import Steward
from alwayson.store.etcd_types import EtcdClient, EtcdUnavailable
from alwayson.store.memory_etcd import MemoryEtcd
from alwayson.util.clocks import ManualClock
from alwayson.util.errors import TemporaryError
from alwayson.util.sitelinks import Partitions

ROOT = "/alwayson/t"
DB = "bank"


class Reach:
    """One site's way to etcd: through, or cut off (every call unavailable). An
    ``on_grant`` hook runs before the next lease grant (to race a reclaim)."""

    def __init__(self, etcd: MemoryEtcd) -> None:
        self.etcd = etcd
        self.cut = False
        self.on_grant: Callable[[], Awaitable[None]] | None = None

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.etcd, name)
        if not callable(real):
            return real

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.cut:
                await asyncio.sleep(0)
                raise EtcdUnavailable(f"etcd: {name}: no member answered (cut off)")
            if name == "grant" and self.on_grant is not None:
                hook, self.on_grant = self.on_grant, None
                await hook()
            return await real(*args, **kwargs)

        return call


class InProcess:
    """The primary's asker, straight into the other steward's ``promise`` (optionally
    slow, unreachable, or returning a doctored answer)."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.stewards: dict[str, Steward] = {}
        self.latency = 0.0
        self.unreachable = False
        self.questions: list[tuple[str, dict[str, Any], float, float]] = []
        """(peer, question, timeout, when it was sent)."""

    async def ask(
        self, peer: str, db: str, question: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        self.questions.append((peer, question, timeout, self.clock.monotonic()))
        if self.unreachable:
            raise TemporaryError(f"{peer}'s agent did not answer: ConnectError()")
        await self.clock.sleep(self.latency)
        return self.stewards[peer].promise(question["site"], question["epoch"], question["ttl"])


class Pair:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = ManualClock(autojump=True)
        self.etcd = MemoryEtcd(self.clock)
        self.asker = InProcess(self.clock)
        self.reach = {HERE: Reach(self.etcd), THERE: Reach(self.etcd)}
        self.boards = {
            site: Board(cast(EtcdClient, self.reach[site]), ROOT, self.clock)
            for site in (HERE, THERE)
        }
        self.primary = self.steward(tmp_path, HERE, THERE)
        self.standby = self.steward(tmp_path, THERE, HERE)
        self.asker.stewards = {HERE: self.primary, THERE: self.standby}

    def steward(self, tmp_path: Path, site: str, other: str) -> Steward:
        root = tmp_path / site
        (root / "bank" / "pgdata").mkdir(parents=True)
        cfg = config(root).model_copy(
            update={"site": site, "peers": {other: f"{other}:5432"}, "sites": [HERE, THERE]}
        )
        return Steward(
            cfg,
            self.boards[site],
            cast(Engine, FakeEngine()),
            Partitions(tmp_path / "partitions.json"),
            root,
            self.clock,
            self.asker,
        )

    async def start(self) -> None:
        """Both agents up for a ttl; the primary holds epoch 1, the standby has seen it."""
        self.clock.advance(TTL)
        lease, sent = await self.primary.acquire(2.0)
        self.primary.hold(lease, sent)
        self.primary.postmaster = cast(Postmaster, FakePostmaster())
        self.primary.role = Role.PRIMARY
        self.primary.writable = True
        self.standby.role = Role.STANDBY
        self.standby.postmaster = cast(Postmaster, FakePostmaster())
        await self.standby._refresh_view()

    async def renew_at(self, when: float) -> bool:
        """The renewal task's next turn, at ``when`` (monotonic)."""
        self.clock.advance_to(when)
        return await self.primary.renew_now()

    async def restarted_standby(self, tmp_path: Path) -> Steward:
        """The standby's agent started again just now (its promises forgotten)."""
        again = self.steward(tmp_path / "again", THERE, HERE)
        again.role = Role.STANDBY
        await again._refresh_view()
        return again

    async def on_failsafe_until(self, until: float) -> None:
        """Renew every ttl/3 until ``until``: the primary lives on confirmations."""
        tenure = tenure_of(self.primary)
        while tenure.renewed_at + TTL / 3 < until:
            assert await self.renew_at(tenure.renewed_at + TTL / 3)

    async def close(self) -> None:
        for steward in (self.primary, self.standby):
            await steward.settle(wait=1.0)


class ShortPromise:
    """A standby (of another version, say) that promises less than the primary's ttl."""

    async def ask(
        self, peer: str, db: str, question: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        return {"ok": True, "promise_seconds": TTL / 2}


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    made = Pair(tmp_path)
    await made.start()
    yield made
    await made.close()


def tenure_of(steward: Steward) -> Any:
    assert steward.tenure is not None
    return steward.tenure


# -- the primary lives on its standby's confirmations ----------------------------------


async def test_a_primary_without_etcd_lives_on_its_standbys_confirmations(pair: Pair) -> None:
    primary, standby, clock = pair.primary, pair.standby, pair.clock
    tenure = tenure_of(primary)
    pair.etcd.available = False  # two members lost: no quorum

    for turn in range(1, 11):  # 20 s, more than three ttls
        asked = tenure.renewed_at + TTL / 3
        assert await pair.renew_at(asked)
        assert tenure.renewed_at == asked  # from when the question left
        assert standby.promised_until == asked + TTL and standby.promised_to == HERE
        assert not watchdog_must_stop(Role.PRIMARY, tenure, True, clock.monotonic() + 1.9)
        assert primary.endpoint_target() is not None
        assert len(pair.asker.questions) == turn

    peer, question, timeout, _ = pair.asker.questions[0]
    assert (peer, question) == (THERE, {"site": HERE, "epoch": 1, "ttl": TTL})
    assert timeout == RENEWAL_DEADLINE  # the renewal budget (etcd failed at once here)
    status = primary.status()
    assert status["failsafe"] is True and status["failsafe_since"] is not None
    assert standby.status()["promised_to"] == HERE
    assert [e[0] for e in primary.unsent_events] == ["db-failsafe"]  # once
    assert primary.unsent_events[0][1] == (
        f"{HERE} keeps its primary at epoch 1 without etcd: {THERE} confirmed it follows and "
        "will not take over (failsafe)"
    )

    pair.etcd.available = True  # a new leader extends every lease: the key is there
    assert await pair.renew_at(tenure.renewed_at + TTL / 3)
    assert not primary.on_failsafe and primary.status()["failsafe"] is False
    assert len(pair.asker.questions) == 10  # etcd answered: nobody was asked
    await primary.file_unsent_events()
    # (filed at one instant of the manual clock: etcd's key order between them is random)
    filed = {e.kind: e for _, e in await pair.boards[HERE].pending_events()}
    assert sorted(filed) == ["db-failsafe", "db-failsafe-ended"]
    ended = filed["db-failsafe-ended"]
    assert ended.message.endswith("s: etcd answers again: the lease renewed")
    assert ended.data["since"] == filed["db-failsafe"].data["since"]
    lease = await pair.boards[HERE].read_lease(DB)
    assert lease is not None and (lease.holder, lease.epoch) == (HERE, 1)


async def test_a_confirmation_counts_from_when_the_question_left(pair: Pair) -> None:
    tenure = tenure_of(pair.primary)
    pair.etcd.available = False
    pair.asker.latency = 0.3
    asked = tenure.renewed_at + TTL / 3

    assert await pair.renew_at(asked)

    assert pair.clock.monotonic() == pytest.approx(asked + 0.3)
    assert tenure.renewed_at == asked
    assert pair.standby.promised_until == pytest.approx(asked + 0.3 + TTL)  # from its answer


@pytest.mark.parametrize(
    ("trouble", "why"),
    [
        ("unreachable", f"{THERE}: no answer ({THERE}'s agent did not answer: ConnectError())"),
        ("acquiring", f"{THERE}: this site is acquiring the lease"),
        ("promoted", f"{THERE}: this site is not a standby (primary)"),
        ("restarted", f"{THERE}: this agent started less than a ttl ago: it promises nothing yet"),
        ("short-promise", f"{THERE}: promised 3.0s, less than the ttl"),
    ],
)
async def test_a_primary_whose_standby_does_not_confirm_runs_out_and_fences(
    pair: Pair, tmp_path: Path, trouble: str, why: str
) -> None:
    primary, standby = pair.primary, pair.standby
    tenure = tenure_of(primary)
    fence_at = tenure.fence_at()
    if trouble == "unreachable":
        pair.asker.unreachable = True
    elif trouble == "acquiring":
        standby.acquiring = True
    elif trouble == "promoted":
        standby.role = Role.PRIMARY
    elif trouble == "restarted":
        pair.asker.stewards[THERE] = await pair.restarted_standby(tmp_path)
    else:
        primary.asker = ShortPromise()
    pair.etcd.available = False

    assert not await pair.renew_at(tenure.renewed_at + TTL / 3)

    assert tenure.fence_at() == fence_at  # nothing changed
    assert not primary.on_failsafe and primary.unsent_events == []
    assert primary.failsafe_trouble == why
    assert primary.last_error == f"etcd unreachable, no failsafe: {why}"
    assert primary.endpoint_target() is not None
    pair.clock.advance_to(fence_at)
    assert watchdog_must_stop(Role.PRIMARY, tenure, True, pair.clock.monotonic())
    assert primary.endpoint_target() is None


async def test_a_confirmation_that_comes_after_the_tenure_ended_is_not_used(pair: Pair) -> None:
    primary = pair.primary
    tenure = tenure_of(primary)
    fence_at = tenure.fence_at()
    pair.asker.latency = fence_at - (tenure.renewed_at + TTL / 3)  # lands exactly at the end
    pair.etcd.available = False

    assert not await pair.renew_at(tenure.renewed_at + TTL / 3)

    # (a real answer this slow would also be cut off by the question's deadline, 1.5 s)
    assert pair.asker.questions[0][2] == RENEWAL_DEADLINE
    assert tenure.fence_at() == fence_at
    assert primary.failsafe_trouble == "the confirmations came after the tenure ended"


async def test_why_a_standby_does_not_confirm_reaches_the_primary(pair: Pair) -> None:
    pair.standby.acquiring = True
    pair.etcd.available = False

    await pair.renew_at(tenure_of(pair.primary).renewed_at + TTL / 3)

    assert pair.primary.failsafe_trouble == f"{THERE}: this site is acquiring the lease"


async def test_without_standby_sites_or_an_asker_there_is_no_failsafe(pair: Pair) -> None:
    pair.primary.asker = None
    pair.etcd.available = False
    assert not await pair.renew_at(tenure_of(pair.primary).renewed_at + TTL / 3)
    assert pair.asker.questions == []


async def test_a_synchronous_change_is_not_confirmed_by_the_failsafe(pair: Pair) -> None:
    """A standby's yes extends the tenure but writes no record: a primary that wanted to
    stop naming its standby (before letting commits go without it) must not go on."""
    primary = pair.primary
    tenure = tenure_of(primary)
    pair.etcd.available = False
    primary.sync_standby = THERE  # what the record would say after the renewal

    assert not await pair.renew_at(tenure.renewed_at + TTL / 3)

    assert tenure.renewed_at == pair.clock.monotonic()  # the tenure was extended anyway
    assert primary.on_failsafe


# -- the standby's side ----------------------------------------------------------------


async def test_a_standby_confirms_only_the_primary_and_epoch_it_follows(pair: Pair) -> None:
    standby = pair.standby
    assert standby.promise(HERE, 2, TTL) == {
        "ok": False,
        "site": THERE,
        "why": f"the lease this site saw names {HERE} at epoch 1, not {HERE} at epoch 2",
    }
    assert standby.promised_until == 0.0  # a refusal promises nothing

    answer = standby.promise(HERE, 1, 2 * TTL)  # a primary with a longer ttl

    assert answer["ok"] is True and answer["promise_seconds"] == 2 * TTL
    assert answer["promise_until"] == pair.clock.wall() + 2 * TTL
    assert standby.promised_until == pair.clock.monotonic() + 2 * TTL


async def test_a_standby_whose_acquire_was_lost_confirms_nothing_until_it_reads_etcd(
    pair: Pair,
) -> None:
    standby = pair.standby
    pair.reach[THERE].cut = True
    with pytest.raises(TemporaryError):
        await standby.acquire(1.5)  # it may have landed

    assert standby.promise(HERE, 1, TTL)["why"] == "this site is acquiring the lease"
    pair.reach[THERE].cut = False
    await standby._refresh_view()
    assert standby.promise(HERE, 1, TTL)["ok"] is True


async def test_a_standby_stops_confirming_once_the_lease_is_revoked_for_it(pair: Pair) -> None:
    standby = pair.standby
    assert standby.promise(HERE, 1, TTL)["ok"] is True
    await pair.boards[THERE].revoke(DB, THERE)  # `db failover --to surabaya`
    await standby._refresh_view()

    answer = standby.promise(HERE, 1, TTL)

    assert answer == {
        "ok": False,
        "site": THERE,
        "why": f"the lease is revoked for a failover to {THERE}",
    }


async def test_a_restarted_standby_agent_promises_nothing_for_a_ttl(
    pair: Pair, tmp_path: Path
) -> None:
    again = await pair.restarted_standby(tmp_path)

    assert again.promise(HERE, 1, TTL)["why"] == (
        "this agent started less than a ttl ago: it promises nothing yet"
    )
    pair.clock.advance(TTL)
    assert again.promise(HERE, 1, TTL)["ok"] is True


async def test_a_standby_with_a_running_promise_does_not_take_the_lease(pair: Pair) -> None:
    """The primary is cut off from etcd, its standby is not: it sees the holder key
    expire and still does not take over while its promise runs."""
    standby, clock = pair.standby, pair.clock
    pair.reach[HERE].cut = True
    await pair.on_failsafe_until(clock.monotonic() + TTL + 1.0)  # the key expires meanwhile
    await standby._refresh_view()
    seen = standby.lease
    assert seen is not None and seen.expired(standby.board_now())  # etcd let it go

    decision = decide(standby.observe())

    assert decision.action is Action.FOLLOW
    assert decision.verdict.startswith(
        f"not taking the lease after {HERE}'s expired: promised {HERE} not to take over until "
    )
    with pytest.raises(LeaseRefused, match=f"promised {HERE} not to take over"):
        await standby.acquire(1.5)
    assert standby.promise(HERE, 1, TTL)["ok"] is True  # the record still names it

    # The primary stops asking (it died): the promise ends a ttl after the last answer.
    clock.advance_to(standby.promised_until)
    assert decide(standby.observe()).action is Action.ACQUIRE_AND_PROMOTE
    taken, _ = await standby.acquire(1.5)
    assert (taken.holder, taken.epoch) == (THERE, 2)
    assert standby.promise(HERE, 1, TTL)["why"] == (  # before it even promotes
        f"the lease this site saw names {THERE} at epoch 2, not {HERE} at epoch 1"
    )


async def test_a_hand_over_during_a_promise_waits_and_survives_its_key_expiring(
    pair: Pair,
) -> None:
    standby, clock = pair.standby, pair.clock
    assert standby.promise(HERE, 1, TTL)["ok"] is True
    await pair.boards[HERE].lease(DB, "handover", HERE, 1, TTL, 2.0, to=THERE)
    await standby._refresh_view()

    held = decide(standby.observe())

    assert held.action is Action.FOLLOW
    assert held.verdict.startswith(f"named holder, not promoting yet: promised {HERE} ")
    clock.advance(TTL + 1.0)  # the promise is over, and so is the handed etcd lease
    await standby._refresh_view()
    assert decide(standby.observe()).action is Action.PROMOTE
    assert not (await pair.boards[THERE].snapshot(DB)).live()

    assert await take_handed_lease(standby)  # reclaimed at the handed epoch

    assert standby.tenure is not None and standby.tenure.epoch == 2
    assert (await pair.boards[THERE].snapshot(DB)).live()


# -- etcd answers again ----------------------------------------------------------------


async def test_a_primary_back_in_reach_of_etcd_reclaims_its_expired_key(pair: Pair) -> None:
    primary, standby, clock = pair.primary, pair.standby, pair.clock
    pair.reach[HERE].cut = True
    tenure = tenure_of(primary)
    await pair.on_failsafe_until(clock.monotonic() + TTL + 3.0)
    assert not (await pair.boards[THERE].snapshot(DB)).live()
    pair.reach[HERE].cut = False
    sent = tenure.renewed_at + TTL / 3

    assert await pair.renew_at(sent)

    assert tenure.renewed_at == sent and primary.role is Role.PRIMARY
    assert not primary.on_failsafe
    assert primary.unsent_events[-1][1].endswith(
        "s: etcd answers again: holder key reclaimed at epoch 1"
    )
    snap = await pair.boards[THERE].snapshot(DB)
    assert snap.live() and snap.holder is not None and snap.holder.epoch == 1
    await standby._refresh_view()
    assert decide(standby.observe()).verdict == f"standby following {HERE}"


async def test_a_primary_whose_reclaim_is_refused_fences(pair: Pair) -> None:
    primary, clock = pair.primary, pair.clock
    pm = cast(FakePostmaster, primary.postmaster)
    pair.reach[HERE].cut = True
    tenure = tenure_of(primary)
    await pair.on_failsafe_until(clock.monotonic() + TTL + 1.0)
    pair.reach[HERE].cut = False

    async def rogue_takeover() -> None:  # a site that ignores promises, just in time
        await pair.boards[THERE].lease(DB, "acquire", THERE, 0, TTL, 2.0)

    pair.reach[HERE].on_grant = rogue_takeover

    assert not await pair.renew_at(tenure.renewed_at + TTL / 3)

    assert primary.role is Role.FENCED and pm.stops == ["immediate"]
    assert primary.fence_reason == (
        "renewal refused (lease expired before the renewal arrived); reclaim refused: "
        f"{HERE} no longer holds the lease at epoch 1 (the record names {THERE} at epoch 2)"
    )
    assert primary.unsent_events[-1][0] == "db-failsafe-ended"
    assert "fenced: renewal refused" in primary.unsent_events[-1][1]


async def test_a_primary_fenced_after_a_failsafe_files_its_events_once_etcd_answers(
    pair: Pair,
) -> None:
    primary = pair.primary
    tenure = tenure_of(primary)
    pair.etcd.available = False
    assert await pair.renew_at(tenure.renewed_at + TTL / 3)
    await primary.cycle()  # etcd does not answer: nothing to file yet
    assert [e[0] for e in primary.unsent_events] == ["db-failsafe"]
    pair.etcd.available = True
    await pair.boards[THERE].revoke(DB, THERE)  # the operator chose the other site

    assert not await pair.renew_at(tenure.renewed_at + TTL / 3)
    assert primary.role is Role.FENCED
    await primary.cycle()

    assert primary.unsent_events == []
    # (filed at one instant of the manual clock: etcd's key order between them is random)
    filed = {e.kind: e.message for _, e in await pair.boards[HERE].pending_events()}
    assert sorted(filed) == ["db-failsafe", "db-failsafe-ended", "db-fenced"]
    assert filed["db-failsafe-ended"].endswith(
        f"s: fenced: renewal refused: lease revoked for a failover to {THERE}"
    )


async def test_a_revoked_lease_is_not_reclaimed(pair: Pair) -> None:
    primary = pair.primary
    tenure = tenure_of(primary)
    await pair.boards[THERE].revoke(DB, THERE)

    assert not await pair.renew_at(tenure.renewed_at + TTL / 3)

    assert primary.role is Role.FENCED
    assert primary.fence_reason == f"renewal refused: lease revoked for a failover to {THERE}"


# -- the question over HTTP ------------------------------------------------------------


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("s3cret-token\n")
    return path


def standby_app(pair: Pair, token_file: Path) -> httpx.ASGITransport:
    app = FastAPI()
    app.include_router(failsafe_router({DB: pair.standby}, token_file))
    return httpx.ASGITransport(app=app)


async def test_the_question_over_http_needs_the_platform_token(
    pair: Pair, token_file: Path
) -> None:
    transport = standby_app(pair, token_file)
    body = {"site": HERE, "epoch": 1, "ttl": TTL}
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            refused = await client.post(f"/v1/failsafe/{DB}", json=body, headers=headers)
            assert refused.status_code == 401
        assert pair.standby.promised_until == 0.0  # nothing promised to a stranger
        good = {"Authorization": "Bearer s3cret-token"}
        assert (await client.post("/v1/failsafe/nope", json=body, headers=good)).status_code == 404
        bad = await client.post(f"/v1/failsafe/{DB}", json={"site": HERE}, headers=good)
        assert bad.status_code == 422
        answered = await client.post(f"/v1/failsafe/{DB}", json=body, headers=good)
    assert answered.status_code == 200 and answered.json()["ok"] is True
    assert pair.standby.promised_to == HERE


async def test_the_primary_asks_over_http_and_lives_on_the_answer(
    pair: Pair, token_file: Path, tmp_path: Path
) -> None:
    app = standby_app(pair, token_file)
    asker = HttpAsker({THERE: "agent-of-surabaya:7400"}, token_file, app)
    pair.primary.asker = asker
    tenure = tenure_of(pair.primary)
    pair.etcd.available = False
    question = {"site": HERE, "epoch": 1, "ttl": TTL}
    other = tmp_path / "other-token"
    other.write_text("another platform's\n")
    stranger = HttpAsker({THERE: "agent-of-surabaya:7400"}, other, app)
    try:
        assert await pair.renew_at(tenure.renewed_at + TTL / 3)
        assert pair.primary.on_failsafe and pair.standby.promised_to == HERE
        with pytest.raises(TemporaryError, match="HTTP 401"):
            await stranger.ask(THERE, DB, question, 1.0)
        with pytest.raises(TemporaryError, match="no address for medan's agent"):
            await asker.ask("medan", DB, question, 1.0)
    finally:
        await asker.close()
        await stranger.close()


async def test_the_agents_admin_api_serves_the_question(pair: Pair, token_file: Path) -> None:
    from alwayson.data.agent import Agent, build_app  # loads grpc: only this test

    agent = SimpleNamespace(
        cfg=SimpleNamespace(site=THERE, token_file=str(token_file)),
        stewards=[pair.standby],
        status=dict,
    )
    app = build_app(cast(Agent, agent))
    asker = HttpAsker({THERE: "127.2.0.9:7400"}, token_file, httpx.ASGITransport(app=app))
    try:
        answer = await asker.ask(THERE, DB, {"site": HERE, "epoch": 1, "ttl": TTL}, 1.0)
    finally:
        await asker.close()
    assert answer["ok"] is True and pair.standby.promised_to == HERE
