"""The database lease (``data/board.py``) on the in-memory etcd and the manual clock: the
same checks as on a real cluster (``tests/integration/test_board.py``), plus what only a
fake can arrange quickly (no quorum)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tests.integration import test_board as suite

from alwayson.data.board import Board
from alwayson.data.leases import LeaseRefused
from alwayson.store.etcd_types import EtcdUnavailable
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
