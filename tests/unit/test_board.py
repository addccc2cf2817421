"""The database lease (``data/board.py``) on the in-memory etcd and the manual clock: the
same checks as on a real cluster (``tests/integration/test_board.py``), plus what only a
fake can arrange quickly (no quorum)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tests.integration import test_board as suite

from alwayson.data.board import Board
from alwayson.data.leases import LeaseRefused
from alwayson.store.etcd_types import EtcdUnavailable, Put
from alwayson.store.memory_etcd import MemoryEtcd
from alwayson.util.clocks import ManualClock
from alwayson.util.errors import TemporaryError

for _name, _check in vars(suite).items():
    if _name.startswith("test_"):
        globals()[_name] = _check

DB = suite.DB


@pytest.fixture
async def boards() -> AsyncIterator[suite.Boards]:
    clock = ManualClock()
    etcd = MemoryEtcd(clock)

    async def advance(seconds: float) -> None:
        clock.advance(seconds)

    one, two = Board(etcd, "/alwayson/t", clock), Board(etcd, "/alwayson/t", clock)
    yield one, two, advance


async def test_without_a_quorum_every_operation_is_temporary_and_nothing_expires() -> None:
    clock = ManualClock()
    etcd = MemoryEtcd(clock)
    board = Board(etcd, "/alwayson/t", clock)
    await board.lease(DB, "acquire", "jakarta", 0, 6.0, 2.0)
    etcd.available = False
    with pytest.raises(TemporaryError):
        await board.lease(DB, "renew", "jakarta", 1, 6.0, 2.0)
    with pytest.raises(EtcdUnavailable):
        await board.view(DB, ["jakarta"])
    clock.advance(60)
    etcd.available = True  # the next leader gives every lease its ttl again
    renewed = await board.lease(DB, "renew", "jakarta", 1, 6.0, 2.0)
    assert renewed.holder == "jakarta"


async def test_a_takeover_says_when_the_old_holder_was_last_seen_live() -> None:
    clock = ManualClock()
    etcd = MemoryEtcd(clock)
    jakarta, surabaya = Board(etcd, "/r", clock), Board(etcd, "/r", clock)
    await jakarta.lease(DB, "acquire", "jakarta", 0, 6.0, 2.0)
    live = await surabaya.read_lease(DB)
    assert live is not None and live.expires_at == clock.wall() + 6.0
    clock.advance(7.5)  # etcd has deleted the holder key
    gone = await surabaya.read_lease(DB)
    assert gone is not None and gone.expired(clock.wall())
    assert gone.expires_at == clock.wall()  # first seen gone now; stays that time
    clock.advance(1.0)
    again = await surabaya.read_lease(DB)
    assert again is not None and again.expires_at == gone.expires_at


async def test_a_renewal_with_a_shorter_etcd_lease_than_the_ttl_is_refused() -> None:
    clock = ManualClock()
    board = Board(MemoryEtcd(clock), "/r", clock)
    await board.lease(DB, "acquire", "jakarta", 0, 6.0, 2.0)
    with pytest.raises(LeaseRefused, match="less than the ttl"):
        await board.lease(DB, "renew", "jakarta", 1, 10.0, 2.0)


async def test_a_lease_that_ran_out_with_nobody_taking_over_is_reclaimed() -> None:
    clock = ManualClock()
    etcd = MemoryEtcd(clock)
    board = Board(etcd, "/r", clock)
    await board.lease(DB, "acquire", "jakarta", 0, 6.0, 2.0)
    clock.advance(7.0)  # the holder key is gone: etcd's lease ran out
    with pytest.raises(LeaseRefused, match="expired"):
        await board.lease(DB, "renew", "jakarta", 1, 6.0, 2.0)

    back = await board.lease(DB, "reclaim", "jakarta", 1, 6.0, 2.0)

    assert (back.holder, back.epoch, back.expires_at) == ("jakarta", 1, clock.wall() + 6.0)
    clock.advance(5.0)
    assert (await board.lease(DB, "renew", "jakarta", 1, 6.0, 2.0)).epoch == 1


async def test_a_reclaim_is_temporary_without_a_quorum() -> None:
    clock = ManualClock()
    etcd = MemoryEtcd(clock)
    board = Board(etcd, "/r", clock)
    await board.lease(DB, "acquire", "jakarta", 0, 6.0, 2.0)
    clock.advance(7.0)
    etcd.available = False
    with pytest.raises(EtcdUnavailable):
        await board.lease(DB, "reclaim", "jakarta", 1, 6.0, 2.0)


class FlakyWrites(MemoryEtcd):
    """The next transaction that writes times out: after it landed (``"landed"``: its
    answer was lost) or before (``"lost"``: it never reached a leader)."""

    next_write: str | None = None

    async def txn(  # type: ignore[no-untyped-def]
        self, compare, success=(), failure=(), timeout=None
    ):
        fault, writes = self.next_write, any(isinstance(op, Put) for op in success)
        if fault == "lost" and writes:
            self.next_write = None
            raise EtcdUnavailable("etcd: transaction: no member answered (simulated)")
        result = await super().txn(compare, success, failure, timeout)
        if fault == "landed" and writes and result[0]:
            self.next_write = None
            raise EtcdUnavailable("etcd: transaction: no answer in time (simulated)")
        return result


async def flaky_board_after_expiry() -> tuple[Board, FlakyWrites]:
    clock = ManualClock()
    etcd = FlakyWrites(clock)
    board = Board(etcd, "/r", clock)
    await board.lease(DB, "acquire", "jakarta", 0, 6.0, 2.0)
    clock.advance(7.0)  # the holder key is gone, the record still names jakarta
    return board, etcd


async def test_a_reclaim_whose_answer_was_lost_is_recognised_as_landed() -> None:
    board, etcd = await flaky_board_after_expiry()
    etcd.next_write = "landed"

    back = await board.lease(DB, "reclaim", "jakarta", 1, 6.0, 2.0)

    assert back.epoch == 1 and etcd.next_write is None
    assert (await board.snapshot(DB)).live()


async def test_a_reclaim_that_did_not_land_is_temporary_while_still_reclaimable() -> None:
    board, etcd = await flaky_board_after_expiry()
    before = await board.snapshot(DB)
    etcd.next_write = "lost"

    with pytest.raises(TemporaryError, match="still reclaimable"):
        await board.lease(DB, "reclaim", "jakarta", 1, 6.0, 2.0)

    after = await board.snapshot(DB)
    assert not after.live() and after.record == before.record and etcd.next_write is None
    assert (await board.lease(DB, "reclaim", "jakarta", 1, 6.0, 2.0)).epoch == 1
