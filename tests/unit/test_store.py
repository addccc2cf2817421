"""The ``StateStore`` conformance suite, run against every implementation.

``MemoryStore`` is the fake the layers above test with; it must behave like the real
``SQLiteStore`` in everything this suite checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from alwayson.store.base import AuditEntry, Event, StateStore, Versioned
from alwayson.store.etcd_store import EtcdStore
from alwayson.store.etcd_types import Compare
from alwayson.store.memory import MemoryStore
from alwayson.store.memory_etcd import MemoryEtcd
from alwayson.store.sqlite import SQLiteStore
from alwayson.util.clocks import ManualClock
from alwayson.util.errors import TemporaryError


@pytest.fixture(params=["memory", "sqlite", "etcd-memory", "etcd-guarded"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    backend: StateStore
    if request.param == "memory":
        backend = MemoryStore()
    elif request.param.startswith("etcd"):
        # EtcdStore over the in-memory etcd (the real cluster runs this suite in
        # tests/integration/test_etcd_store.py); guarded: every write also compares a key
        # outside the store's root, as the leader controller's term is compared.
        etcd = MemoryEtcd(ManualClock())
        guard = None
        if request.param == "etcd-guarded":
            _, revision = await etcd.put("/control/leader", b"{}")
            guard = lambda: [Compare("/control/leader", "create", revision)]  # noqa: E731
        backend = EtcdStore(etcd, "/alwayson/t", guard)
    else:
        backend = await SQLiteStore(tmp_path / "state" / "alwayson.db").open()
    try:
        yield backend
    finally:
        await backend.close()


# ---------------------------------------------------------------- key/value


async def test_absent_key_reads_none(store: StateStore) -> None:
    assert await store.get("desired") is None


async def test_put_returns_increasing_versions(store: StateStore) -> None:
    assert await store.put("desired", {"n": 1}) == 1
    assert await store.put("desired", {"n": 2}) == 2
    assert await store.put("other", {"n": 1}) == 1

    assert await store.get("desired") == Versioned({"n": 2}, 2)
    assert await store.get("other") == Versioned({"n": 1}, 1)


async def test_values_round_trip_nested_json(store: StateStore) -> None:
    value = {"text": "platform: p\n", "overrides": [["accounts", "jakarta", 3]], "x": None}

    await store.put("desired", value)

    got = await store.get("desired")
    assert got is not None
    assert got.value == value


async def test_stored_values_are_copies(store: StateStore) -> None:
    value = {"items": [1, 2]}
    await store.put("k", value)
    value["items"].append(3)

    got = await store.get("k")
    assert got is not None
    got.value["items"].append(4)

    again = await store.get("k")
    assert again is not None
    assert again.value == {"items": [1, 2]}


async def test_cas_creates_an_absent_key_with_none(store: StateStore) -> None:
    assert await store.compare_and_set("lease", None, {"owner": "a"}) is True

    assert await store.get("lease") == Versioned({"owner": "a"}, 1)


async def test_cas_with_none_refuses_an_existing_key(store: StateStore) -> None:
    await store.put("lease", {"owner": "a"})

    assert await store.compare_and_set("lease", None, {"owner": "b"}) is False

    assert await store.get("lease") == Versioned({"owner": "a"}, 1)


async def test_cas_with_a_version_refuses_an_absent_key(store: StateStore) -> None:
    assert await store.compare_and_set("lease", 1, {"owner": "a"}) is False

    assert await store.get("lease") is None


async def test_cas_with_the_wrong_version_is_refused(store: StateStore) -> None:
    await store.put("lease", {"owner": "a"})
    await store.put("lease", {"owner": "a", "renewed": True})

    assert await store.compare_and_set("lease", 1, {"owner": "b"}) is False

    assert await store.get("lease") == Versioned({"owner": "a", "renewed": True}, 2)


async def test_cas_with_the_right_version_is_accepted(store: StateStore) -> None:
    await store.put("lease", {"owner": "a"})

    assert await store.compare_and_set("lease", 1, {"owner": "b"}) is True
    assert await store.get("lease") == Versioned({"owner": "b"}, 2)
    # The version it read is spent: a second writer with it loses.
    assert await store.compare_and_set("lease", 1, {"owner": "c"}) is False
    assert await store.get("lease") == Versioned({"owner": "b"}, 2)


async def test_delete(store: StateStore) -> None:
    await store.put("lease", {"owner": "a"})
    await store.put("keep", {"n": 1})

    await store.delete("lease")
    await store.delete("never-there")

    assert await store.get("lease") is None
    assert await store.get("keep") == Versioned({"n": 1}, 1)
    assert await store.compare_and_set("lease", None, {"owner": "b"}) is True
    assert await store.get("lease") == Versioned({"owner": "b"}, 1)


# ---------------------------------------------------------------- audit and events


async def test_audit_lists_newest_first_with_increasing_ids(store: StateStore) -> None:
    for n in range(3):
        await store.append_audit(AuditEntry(at=100.0 + n, actor="cli", action=f"a{n}"))

    entries = await store.list_audit()

    assert [e.action for e in entries] == ["a2", "a1", "a0"]
    assert [e.at for e in entries] == [102.0, 101.0, 100.0]
    ids = [e.id for e in entries]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 3
    assert all(i > 0 for i in ids)


async def test_audit_keeps_actor_and_detail(store: StateStore) -> None:
    detail = {"service": "accounts", "replicas": 3, "site": None}
    await store.append_audit(AuditEntry(at=1.5, actor="token:ops", action="scale", detail=detail))

    [entry] = await store.list_audit()

    assert (entry.at, entry.actor, entry.action, entry.detail) == (
        1.5,
        "token:ops",
        "scale",
        detail,
    )


async def test_audit_limit_keeps_the_newest(store: StateStore) -> None:
    for n in range(5):
        await store.append_audit(AuditEntry(at=float(n), actor="cli", action=f"a{n}"))

    assert [e.action for e in await store.list_audit(limit=2)] == ["a4", "a3"]
    assert await store.list_audit(limit=0) == []


async def test_audit_detail_is_copied(store: StateStore) -> None:
    detail = {"changes": ["+ service accounts"]}
    await store.append_audit(AuditEntry(at=1.0, actor="cli", action="apply", detail=detail))
    detail["changes"].append("tampered")

    [entry] = await store.list_audit()

    assert entry.detail == {"changes": ["+ service accounts"]}


async def test_event_data_is_copied(store: StateStore) -> None:
    data = {"exit_code": 1}
    await store.append_event(Event(1.0, "crashed", "accounts-jakarta-1", "exit 1", data))
    data["exit_code"] = 0

    [event] = await store.list_events()

    assert event.data == {"exit_code": 1}


async def test_events_list_newest_first(store: StateStore) -> None:
    await store.append_event(Event(1.0, "crashed", "accounts-jakarta-1", "exit 1"))
    await store.append_event(Event(2.0, "stopped", "accounts-jakarta-1", "scaled down"))
    await store.append_event(Event(3.0, "crashed", "accounts-surabaya-1", "exit 2", {"code": 2}))

    events = await store.list_events()

    assert [(e.at, e.kind, e.subject, e.message) for e in events] == [
        (3.0, "crashed", "accounts-surabaya-1", "exit 2"),
        (2.0, "stopped", "accounts-jakarta-1", "scaled down"),
        (1.0, "crashed", "accounts-jakarta-1", "exit 1"),
    ]
    assert events[0].data == {"code": 2}
    assert events[2].data == {}
    ids = [e.id for e in events]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 3


async def test_events_filter_by_kind_then_limit(store: StateStore) -> None:
    for n in range(6):
        kind = "crashed" if n % 2 == 0 else "stopped"
        await store.append_event(Event(float(n), kind, f"i{n}", "m"))

    assert [e.subject for e in await store.list_events(kind="crashed")] == ["i4", "i2", "i0"]
    assert [e.subject for e in await store.list_events(limit=2, kind="crashed")] == ["i4", "i2"]
    assert [e.subject for e in await store.list_events(limit=2)] == ["i5", "i4"]
    assert await store.list_events(kind="ready") == []


async def test_audit_and_events_are_separate(store: StateStore) -> None:
    await store.append_audit(AuditEntry(at=1.0, actor="cli", action="apply"))

    assert await store.list_events() == []
    assert len(await store.list_audit()) == 1


# ---------------------------------------------------------------- SQLite only


async def test_sqlite_keeps_everything_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "alwayson.db"
    first = await SQLiteStore(path).open()
    try:
        await first.put("desired", {"text": "v1"})
        await first.put("desired", {"text": "v2"})
        await first.append_audit(AuditEntry(at=1.0, actor="cli", action="apply", detail={"n": 1}))
        await first.append_event(Event(2.0, "crashed", "accounts-jakarta-1", "exit 1"))
    finally:
        await first.close()

    second = await SQLiteStore(path).open()
    try:
        assert await second.get("desired") == Versioned({"text": "v2"}, 2)
        [entry] = await second.list_audit()
        assert (entry.actor, entry.action, entry.detail) == ("cli", "apply", {"n": 1})
        [event] = await second.list_events()
        assert (event.kind, event.subject, event.message) == (
            "crashed",
            "accounts-jakarta-1",
            "exit 1",
        )
        assert await second.put("desired", {"text": "v3"}) == 3
        await second.append_event(Event(3.0, "stopped", "accounts-jakarta-1", "bye"))
        newest, oldest = await second.list_events()
        assert newest.id > oldest.id
    finally:
        await second.close()


async def test_sqlite_cas_from_two_stores_on_one_file_has_one_winner(tmp_path: Path) -> None:
    path = tmp_path / "alwayson.db"
    a = await SQLiteStore(path).open()
    b = await SQLiteStore(path).open()
    try:
        created = await asyncio.gather(
            a.compare_and_set("lease", None, {"owner": "a"}),
            b.compare_and_set("lease", None, {"owner": "b"}),
        )
        assert sorted(created) == [False, True]
        winner = "a" if created[0] else "b"
        assert await a.get("lease") == Versioned({"owner": winner}, 1)
        assert await b.get("lease") == Versioned({"owner": winner}, 1)

        renewed = await asyncio.gather(
            a.compare_and_set("lease", 1, {"owner": "a", "term": 2}),
            b.compare_and_set("lease", 1, {"owner": "b", "term": 2}),
        )
        assert sorted(renewed) == [False, True]
        owner = "a" if renewed[0] else "b"
        assert await b.get("lease") == Versioned({"owner": owner, "term": 2}, 2)
        assert await a.get("lease") == Versioned({"owner": owner, "term": 2}, 2)
    finally:
        await a.close()
        await b.close()


async def test_sqlite_many_concurrent_cas_rounds_never_double_win(tmp_path: Path) -> None:
    path = tmp_path / "alwayson.db"
    stores = [await SQLiteStore(path).open() for _ in range(3)]
    try:
        for expected in [None, 1, 2, 3, 4]:
            results = await asyncio.gather(
                *(s.compare_and_set("lease", expected, {"by": i}) for i, s in enumerate(stores))
            )
            assert results.count(True) == 1, results
        final = await stores[0].get("lease")
        assert final is not None
        assert final.version == 5
    finally:
        for s in stores:
            await s.close()


async def test_sqlite_used_before_open_says_so(tmp_path: Path) -> None:
    unopened = SQLiteStore(tmp_path / "alwayson.db")
    try:
        with pytest.raises(RuntimeError, match=r"open\(\) was not awaited"):
            await unopened.get("desired")
    finally:
        await unopened.close()


async def test_sqlite_unreadable_file_is_a_temporary_error(tmp_path: Path) -> None:
    folder = tmp_path / "is-a-folder.db"
    folder.mkdir()

    unopenable = SQLiteStore(folder)
    try:
        with pytest.raises(TemporaryError) as caught:
            await unopenable.open()
    finally:
        await unopenable.close()

    assert str(folder) in str(caught.value)
    assert caught.value.retry_after > 0


async def test_list_prefix_returns_only_matching_keys_in_order(store: StateStore) -> None:
    for key in ("db/bank/record/2", "db/bank/record/1", "db/bankx/record/1", "db/bank/lease"):
        await store.put(key, {"key": key})
    found = await store.list_prefix("db/bank/record/")
    assert [k for k, _ in found] == ["db/bank/record/1", "db/bank/record/2"]
    assert found[0][1].value == {"key": "db/bank/record/1"}
    assert await store.list_prefix("db/bank/record/", limit=1) == found[:1]
    assert await store.list_prefix("nothing/") == []
