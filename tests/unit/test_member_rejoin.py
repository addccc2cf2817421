"""An etcd member whose data folder was lost rejoins (control/consensus.py): removed and
added back, started as ``existing``; a cluster's first start and a member with data are
left alone. On the in-memory etcd's membership calls."""

from __future__ import annotations

from pathlib import Path

import pytest

from alwayson.control.consensus import join_state, joining_marker, with_join_state
from alwayson.runtime.base import InstanceSpec, Kind, Probe
from alwayson.store.members import Member
from alwayson.store.memory_etcd import MemoryEtcd
from alwayson.util.clocks import ManualClock
from alwayson.util.errors import PermanentError

ENDPOINTS = ("127.1.0.5:2379", "127.2.0.5:2379", "127.3.0.5:2379")


def lost_member(tmp_path: Path) -> Member:
    member = Member("member-0", "127.1.0.5", tmp_path / "etcd" / "member-0")
    member.data_dir.mkdir(parents=True)  # made by the controller, empty: the data are gone
    return member


async def test_a_member_that_ran_and_lost_its_data_is_replaced_and_joins_as_existing(
    tmp_path: Path,
) -> None:
    etcd = MemoryEtcd(ManualClock(), ENDPOINTS)
    member = lost_member(tmp_path)
    before = {m.name: m.id for m in await etcd.member_list()}
    state, done = await join_state(etcd, member)
    assert state == "existing"
    assert done and "lost its data folder" in done
    after = await etcd.member_list()
    assert before["member-0"] not in [m.id for m in after]
    added = [m for m in after if m.peer_urls == [member.peer_url]]
    assert len(added) == 1 and added[0].name == "", "added back, not started yet"
    assert joining_marker(member).exists()
    # The start did not stick (it crashed): the next start joins again, changing nothing.
    assert await join_state(etcd, member) == ("existing", None)
    assert len(await etcd.member_list()) == 3
    # Once it has data, the marker goes.
    (member.data_dir / "member").mkdir()
    assert await join_state(etcd, member) == ("new", None)
    assert not joining_marker(member).exists()


async def test_a_members_first_start_is_new(tmp_path: Path) -> None:
    etcd = MemoryEtcd(ManualClock(), ENDPOINTS)
    member = lost_member(tmp_path)
    ours = next(m for m in await etcd.member_list() if m.name == "member-0")
    await etcd.member_remove(ours.id)
    await etcd.member_add([member.peer_url])  # listed, never started: a forming cluster
    assert await join_state(etcd, member) == ("new", None)
    etcd.available = False  # nobody answers: the cluster's first start, or all are down
    assert await join_state(etcd, member) == ("new", None)


async def test_a_member_that_cannot_be_added_back_says_so(tmp_path: Path) -> None:
    etcd = MemoryEtcd(ManualClock(), ENDPOINTS)
    member = lost_member(tmp_path)

    async def refuse(peer_urls: object, timeout: float | None = None) -> int:
        raise etcd._refuse("member add", "too many learner members")

    etcd.member_add = refuse  # type: ignore[method-assign, assignment]
    with pytest.raises(PermanentError, match="member-0 lost its data folder"):
        await join_state(etcd, member)
    assert not joining_marker(member).exists()


def test_the_join_state_is_not_part_of_the_members_identity() -> None:
    spec = InstanceSpec(
        id="etcd@jakarta",
        kind=Kind.ETCD,
        site="jakarta",
        service="etcd",
        version="builtin",
        argv=["/usr/bin/etcd", "--name=jakarta", "--initial-cluster-state=new"],
        cwd="/",
        env={},
        host="127.1.0.5",
        port=2381,
        readiness=Probe(http="/health"),
    )
    joined = with_join_state(spec, "existing")
    assert "--initial-cluster-state=existing" in joined.argv
    assert joined.template_hash() == spec.template_hash()
