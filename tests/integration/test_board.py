"""The database lease on a real etcd cluster (``data/board.py``): one holder at a time,
liveness by etcd's lease, the record and the holder key in one transaction.

The same checks run on the in-memory etcd in ``tests/unit/test_board.py``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from tests.support_etcd import Cluster, shared_etcd  # noqa: F401 - the fixture

from alwayson.data.board import Board
from alwayson.data.leases import LeaseRefused
from alwayson.store.etcd import Etcd
from alwayson.util.clocks import SystemClock

DB = "bank"


Boards = tuple[Board, Board, Callable[[float], Awaitable[None]]]


@pytest.fixture
async def boards(shared_etcd: Cluster) -> AsyncIterator[Boards]:  # noqa: F811
    root = f"/alwayson/board-{uuid.uuid4().hex[:8]}"
    one = Board(Etcd(shared_etcd.endpoints("jakarta"), shared_etcd.client), root, SystemClock())
    two = Board(Etcd(shared_etcd.endpoints("surabaya"), shared_etcd.client), root, SystemClock())
    try:
        yield one, two, asyncio.sleep
    finally:
        await one.close()
        await two.close()


async def test_one_holder_at_a_time_and_the_epoch_grows(boards: Boards) -> None:
    jakarta, surabaya, _ = boards
    first = await jakarta.lease(DB, "acquire", "jakarta", 0, 2.0, 2.0)
    assert (first.holder, first.epoch) == ("jakarta", 1)

    with pytest.raises(LeaseRefused, match="holds the lease"):
        await surabaya.lease(DB, "acquire", "surabaya", 0, 2.0, 2.0)
    renewed = await jakarta.lease(DB, "renew", "jakarta", 1, 2.0, 2.0)
    assert renewed.epoch == 1
    with pytest.raises(LeaseRefused):
        await surabaya.lease(DB, "renew", "surabaya", 1, 2.0, 2.0)

    seen = await surabaya.view(DB, ["jakarta", "surabaya"])
    assert seen["lease"]["holder"] == "jakarta"


async def test_an_unrenewed_lease_runs_out_and_another_site_takes_it(
    boards: Boards,
) -> None:
    jakarta, surabaya, advance = boards
    await jakarta.lease(DB, "acquire", "jakarta", 0, 2.0, 2.0)
    # etcd's lease (2 s, its minimum here) runs out on etcd's own clock: poll.
    for _ in range(100):
        try:
            taken = await surabaya.lease(DB, "acquire", "surabaya", 0, 2.0, 2.0)
            break
        except LeaseRefused:
            await advance(0.1)
    else:
        raise AssertionError("the lease never ran out")
    assert (taken.holder, taken.epoch, taken.previous_holder) == ("surabaya", 2, "jakarta")
    # The record tells when the old holder was last seen live (its takeover's fault time).
    assert taken.granted_at >= 0
    with pytest.raises(LeaseRefused):
        await jakarta.lease(DB, "renew", "jakarta", 1, 2.0, 2.0)


async def test_release_frees_the_lease_at_once(boards: Boards) -> None:
    jakarta, surabaya, _ = boards
    await jakarta.lease(DB, "acquire", "jakarta", 0, 5.0, 2.0)
    released = await jakarta.lease(DB, "release", "jakarta", 1, 5.0, 2.0, why="fenced")
    assert released.holder is None and released.released_why == "fenced"
    taken = await surabaya.lease(DB, "acquire", "surabaya", 0, 5.0, 2.0)
    assert taken.epoch == 2


async def test_hand_over_gives_the_target_a_lease_it_keeps_alive(
    boards: Boards,
) -> None:
    jakarta, surabaya, _ = boards
    await jakarta.lease(DB, "acquire", "jakarta", 0, 5.0, 2.0)
    handed = await jakarta.lease(DB, "handover", "jakarta", 1, 5.0, 2.0, to="surabaya")
    assert (handed.holder, handed.epoch) == ("surabaya", 2)
    renewed = await surabaya.lease(DB, "renew", "surabaya", 2, 5.0, 2.0)
    assert renewed.holder == "surabaya"
    with pytest.raises(LeaseRefused):
        await jakarta.lease(DB, "renew", "jakarta", 1, 5.0, 2.0)


async def test_a_revoked_lease_cannot_be_renewed_and_only_its_target_may_take_it(
    boards: Boards,
) -> None:
    jakarta, surabaya, _ = boards
    await jakarta.lease(DB, "acquire", "jakarta", 0, 5.0, 2.0)
    await surabaya.revoke(DB, "surabaya")
    with pytest.raises(LeaseRefused, match="revoked"):
        await jakarta.lease(DB, "renew", "jakarta", 1, 5.0, 2.0)
    with pytest.raises(LeaseRefused, match="holds the lease"):
        await surabaya.lease(DB, "acquire", "surabaya", 0, 5.0, 2.0)  # not before it is gone
    await jakarta.lease(DB, "release", "jakarta", 1, 5.0, 2.0, why="revoked")
    with pytest.raises(LeaseRefused, match="failover to surabaya"):
        await jakarta.lease(DB, "acquire", "jakarta", 0, 5.0, 2.0)
    taken = await surabaya.lease(DB, "acquire", "surabaya", 0, 5.0, 2.0)
    assert taken.epoch == 2


async def test_synchronous_takeover_needs_the_site_with_every_commit(
    boards: Boards,
) -> None:
    jakarta, surabaya, _ = boards
    await jakarta.lease(DB, "acquire", "jakarta", 0, 5.0, 2.0, synchronous=True)
    # Degraded: the standby is not known to have every commit; the record says so first.
    await jakarta.lease(DB, "renew", "jakarta", 1, 5.0, 2.0, synchronous=True, sync=None)
    await jakarta.lease(DB, "release", "jakarta", 1, 5.0, 2.0, why="crashed")
    with pytest.raises(LeaseRefused, match="acknowledged commit"):
        await surabaya.lease(DB, "acquire", "surabaya", 0, 5.0, 2.0, synchronous=True)


async def test_two_sites_racing_for_a_free_lease_have_one_winner(
    boards: Boards,
) -> None:
    jakarta, surabaya, _ = boards
    results = await asyncio.gather(
        jakarta.lease(DB, "acquire", "jakarta", 0, 5.0, 2.0),
        surabaya.lease(DB, "acquire", "surabaya", 0, 5.0, 2.0),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert isinstance(next(r for r in results if r not in winners), LeaseRefused)
    lease = await jakarta.read_lease(DB)
    assert lease is not None and lease.holder == winners[0].holder and lease.epoch == 1


async def test_reports_requests_records_and_events(boards: Boards) -> None:
    jakarta, _, _ = boards
    await jakarta.report(DB, "jakarta", {"role": "primary"})
    await jakarta.record(DB, "record", "r1", {"kind": "failover"})
    await jakarta.event("db-fenced", DB, "stopped", {"why": "test"})
    view = await jakarta.view(DB, ["jakarta", "surabaya"])
    assert view["sites"]["jakarta"]["role"] == "primary"
    pending = await jakarta.pending_events()
    assert [(e.kind, e.message) for _, e in pending] == [("db-fenced", "stopped")]
    assert await jakarta.pending_events() == pending  # until forgotten
    await jakarta.forget_events([key for key, _ in pending])
    assert await jakarta.pending_events() == []


async def lose_holder_key(board: Board) -> int:
    """Delete the holder key as etcd does when its lease runs out (revoking the lease),
    the record untouched; returns the lost lease's id."""
    snap = await board.snapshot(DB)
    assert snap.holder is not None
    await board.etcd.revoke(snap.holder.lease_id)
    return snap.holder.lease_id


async def test_a_holder_whose_key_is_gone_reclaims_it_at_the_same_epoch(boards: Boards) -> None:
    jakarta, surabaya, _ = boards
    await jakarta.lease(DB, "acquire", "jakarta", 0, 5.0, 2.0)
    before = await jakarta.snapshot(DB)
    lost = await lose_holder_key(jakarta)
    with pytest.raises(LeaseRefused, match="expired"):
        await jakarta.lease(DB, "renew", "jakarta", 1, 5.0, 2.0)

    back = await jakarta.lease(DB, "reclaim", "jakarta", 1, 5.0, 2.0)

    assert (back.holder, back.epoch) == ("jakarta", 1)
    after = await jakarta.snapshot(DB)
    assert after.live() and after.holder is not None and after.holder.lease_id != lost
    assert after.record_version == before.record_version  # the record itself unchanged
    assert (await jakarta.lease(DB, "renew", "jakarta", 1, 5.0, 2.0)).epoch == 1
    with pytest.raises(LeaseRefused, match="holds the lease"):
        await surabaya.lease(DB, "acquire", "surabaya", 0, 5.0, 2.0)


async def test_a_reclaim_with_a_new_ttl_writes_it_into_the_record(boards: Boards) -> None:
    jakarta, _, _ = boards
    await jakarta.lease(DB, "acquire", "jakarta", 0, 5.0, 2.0)
    await lose_holder_key(jakarta)

    back = await jakarta.lease(DB, "reclaim", "jakarta", 1, 7.0, 2.0)

    assert back.ttl == 7.0
    snap = await jakarta.snapshot(DB)
    assert snap.record is not None and snap.record.ttl == 7.0 and snap.live()


async def test_a_reclaim_is_refused_once_another_site_took_over(boards: Boards) -> None:
    jakarta, surabaya, _ = boards
    await jakarta.lease(DB, "acquire", "jakarta", 0, 5.0, 2.0)
    await lose_holder_key(jakarta)
    await surabaya.lease(DB, "acquire", "surabaya", 0, 5.0, 2.0)

    with pytest.raises(LeaseRefused, match="names surabaya at epoch 2"):
        await jakarta.lease(DB, "reclaim", "jakarta", 1, 5.0, 2.0)

    lease = await jakarta.read_lease(DB)
    assert lease is not None and (lease.holder, lease.epoch) == ("surabaya", 2)


async def test_a_revoked_or_live_lease_cannot_be_reclaimed(boards: Boards) -> None:
    jakarta, surabaya, _ = boards
    await jakarta.lease(DB, "acquire", "jakarta", 0, 5.0, 2.0)
    with pytest.raises(LeaseRefused, match="live: renew it"):
        await jakarta.lease(DB, "reclaim", "jakarta", 1, 5.0, 2.0)
    await surabaya.revoke(DB, "surabaya")
    await lose_holder_key(jakarta)

    with pytest.raises(LeaseRefused, match="revoked for a failover to surabaya"):
        await jakarta.lease(DB, "reclaim", "jakarta", 1, 5.0, 2.0)

    assert (await surabaya.lease(DB, "acquire", "surabaya", 0, 5.0, 2.0)).epoch == 2
