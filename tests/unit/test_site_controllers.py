"""A controller in every site (issue 14, item 3): the pieces that need no process.

Where the controllers answer (from the spec), what the leader starts for them, that a
controller never stops itself and that one which no longer leads starts and stops
nothing, that an empty platform's consensus is left alone, and how the CLI's client finds
a controller that answers (the leader itself when a follower names it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from tests.unit.test_etcd_members import DATABASES, SPEC, Sink, desire, load, ops

from alwayson.api.client import NO_LEADER_HEADER, ApiClient
from alwayson.control.desired import controller_id, daemon_argv
from alwayson.control.reconciling import Start
from alwayson.runtime.base import Kind
from alwayson.runtime.memory import MemoryProcesses, MemoryWorld
from alwayson.util.clocks import ManualClock
from alwayson.util.errors import ConflictError

SITES = ("jakarta", "surabaya", "witness")


def test_each_site_has_a_controller_the_witness_one_at_controller_api(tmp_path: Path) -> None:
    spec = load(tmp_path, SPEC + DATABASES).spec
    assert spec.has_consensus
    assert spec.controller_apis() == {
        "witness": "127.0.0.1:7070",
        "jakarta": "127.1.0.6:7070",
        "surabaya": "127.2.0.6:7070",
    }
    alone = load(tmp_path, SPEC).spec  # no databases: no etcd, one controller
    assert not alone.has_consensus
    assert alone.controller_apis() == {"jakarta": "127.0.0.1:7070"}


def test_the_leader_runs_every_sites_controller_as_a_process_of_that_site(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    desired = desire(load(tmp_path, SPEC + DATABASES), state)
    controllers = {i: s for i, s in desired.items() if s.kind is Kind.CONTROLLER}
    assert sorted(controllers) == [controller_id(s) for s in SITES]
    jakarta = controllers[controller_id("jakarta")]
    assert (jakarta.site, jakarta.host, jakarta.port) == ("jakarta", "127.1.0.6", 7070)
    assert jakarta.argv == daemon_argv(state, "127.1.0.6:7070", "jakarta")
    assert jakarta.argv[-2:] == ["--site", "jakarta"]
    assert jakarta.readiness.http == "/healthz"
    assert jakarta.user is None  # it starts processes as the spec's users: never demoted
    assert not [
        s for s in desire(load(tmp_path, SPEC), state).values() if s.kind is Kind.CONTROLLER
    ]


async def test_a_controller_never_stops_itself_and_one_that_no_longer_leads_acts_not(
    tmp_path: Path,
) -> None:
    world = MemoryWorld(ManualClock(autojump=True))
    sink = Sink()
    instances = ops(world, sink)
    desired = desire(load(tmp_path, SPEC + DATABASES), tmp_path / "state")
    await instances.start_all([Start(s, "missing") for s in desired.values()])
    instances.itself = controller_id("witness")

    assert await instances.stop_everything() == len(desired) - 1
    running = [p for p in world.processes.values() if p.running]
    assert [p.argv for p in running] == [desired[controller_id("witness")].argv]

    leads = False
    deposed = ops(world, sink)
    deposed.may_act = lambda: leads
    before = len(world.processes)
    await deposed.start(desired[controller_id("jakarta")], "missing")
    assert len(world.processes) == before  # started nothing
    try:
        await deposed.replace(desired[controller_id("jakarta")], "changed")
    except ConflictError as exc:
        assert "no longer leads" in str(exc)
    else:
        raise AssertionError("a deposed controller replaced a process")
    leads = True
    await deposed.start(desired[controller_id("jakarta")], "missing")
    assert len(world.processes) == before + 1


async def test_a_leader_with_nothing_applied_leaves_etcd_and_the_controllers_running(
    tmp_path: Path,
) -> None:
    from tests.unit.test_controller import Lab

    lab = Lab(tmp_path)
    ctl = await lab.controller()
    state = tmp_path / ".alwayson"
    desired = desire(load(tmp_path, SPEC + DATABASES), state)
    kept = [s for s in desired.values() if s.kind in (Kind.ETCD, Kind.CONTROLLER)]
    stray = next(s for s in desired.values() if s.kind is Kind.WORKLOAD)
    for spec in [*kept, stray]:
        await ctl.runtime.start(spec)
    await ctl.turn()
    await ctl.tasks.idle()
    for _ in range(3):
        await asyncio.sleep(0)
    running = {s.spec.id for s in ctl.runtime.statuses() if s.pid and s.phase.value != "exited"}
    assert {s.id for s in kept} <= running
    assert stray.id not in running  # a process of no spec is still stopped


async def test_a_leader_with_a_spec_without_databases_applied_leaves_the_consensus_running(
    tmp_path: Path,
) -> None:
    """A platform that ran with one controller hands over at ``up``: the spec its state
    holds has no database yet, and the new leader reconciles against it until ``up``
    applies the new one. It must not stop the etcd members and controllers it runs on."""
    from tests.unit.test_controller import Lab

    lab = Lab(tmp_path)
    ctl = await lab.controller()
    (tmp_path / "alwayson.yaml").write_text(SPEC)
    await ctl.apply(SPEC, str(tmp_path / "alwayson.yaml"), "test")
    state = tmp_path / ".alwayson"
    desired = desire(load(tmp_path, SPEC + DATABASES), state)
    kept = [s for s in desired.values() if s.kind in (Kind.ETCD, Kind.CONTROLLER)]
    for spec in kept:
        await ctl.runtime.start(spec)
    for _ in range(5):
        await ctl.turn()
        await ctl.tasks.idle()
        await asyncio.sleep(0)
    running = {s.spec.id for s in ctl.runtime.statuses() if s.pid and s.phase.value != "exited"}
    assert {s.id for s in kept} <= running
    assert any(s.spec.kind is Kind.WORKLOAD for s in ctl.runtime.statuses())  # the spec runs


async def test_an_event_a_term_could_not_write_goes_out_with_the_sites_next_term(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI: a member's rejoin event, recorded while etcd was short of a member and the term
    lapsed, was lost when the same site led again with a new controller object."""
    from tests.unit.test_controller import Lab

    from alwayson.control.controller import Controller
    from alwayson.store.base import Event
    from alwayson.store.memory import MemoryStore
    from alwayson.util.errors import TemporaryError

    kept: list[Event] = []  # what a SiteController shares across its terms
    lab = Lab(tmp_path)
    first = await lab.controller()
    first._unsent = kept
    refused = TemporaryError("controller in witness is not the leader")

    async def refuse(self: MemoryStore, event: Event) -> None:
        raise refused

    real = MemoryStore.append_event
    monkeypatch.setattr(MemoryStore, "append_event", refuse)
    await first.record_event("etcd-member-rejoined", "etcd@surabaya", "lost its data folder")
    monkeypatch.setattr(MemoryStore, "append_event", real)
    assert [e.kind for e in kept] == ["etcd-member-rejoined"]

    second = Controller(  # the site's next term
        lab.store,
        first.runtime,
        MemoryProcesses(lab.world),
        tmp_path / ".alwayson",
        lab.clock,
        lab.tables,
        None,
        unsent=kept,
    )
    await second._send_unsent()
    assert [e.kind for e in await lab.store.list_events()] == ["etcd-member-rejoined"]
    assert kept == []


def _client(handler: httpx.MockTransport, others: list[str]) -> ApiClient:
    client = ApiClient("127.0.0.1:7070", "t", "test", others=others)
    client._http = httpx.AsyncClient(
        base_url="http://127.0.0.1:7070", transport=handler, headers=client._http.headers
    )
    return client


async def test_the_client_asks_the_leader_a_follower_names_and_skips_a_silent_controller() -> None:
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        host = f"{request.url.host}:{request.url.port}"
        asked.append(f"{host}{request.url.path}")
        if host == "127.0.0.1:7070":
            raise httpx.ConnectError("refused", request=request)
        if request.url.path == "/healthz":
            leader = {"site": "surabaya", "api": "127.2.0.6:7070"}
            role = "leader" if host == "127.2.0.6:7070" else "follower"
            return httpx.Response(200, json={"role": role, "leader": leader})
        return httpx.Response(200, json={"answered_by": host})

    client = _client(
        httpx.MockTransport(answer), ["127.0.0.1:7070", "127.1.0.6:7070", "127.2.0.6:7070"]
    )
    async with client:
        assert await client.status() == {"answered_by": "127.2.0.6:7070"}
        assert await client.status() == {"answered_by": "127.2.0.6:7070"}
    assert asked == [
        "127.0.0.1:7070/healthz",
        "127.1.0.6:7070/healthz",
        "127.2.0.6:7070/healthz",
        "127.2.0.6:7070/api/v1/status",
        "127.2.0.6:7070/api/v1/status",
    ]


async def test_the_client_waits_while_no_controller_leads_then_gets_its_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("alwayson.api.client.NO_LEADER_RETRY", 0.001)
    calls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"role": "follower", "leader": None})
        calls += 1
        if calls < 3:
            return httpx.Response(503, json={"error": "no leader"}, headers={NO_LEADER_HEADER: "1"})
        return httpx.Response(200, json={"ok": True})

    async with _client(httpx.MockTransport(answer), ["127.1.0.6:7070"]) as client:
        assert await client.status() == {"ok": True}
    assert calls == 3


async def test_the_only_controllers_state_moves_to_etcd_once_oldest_first(tmp_path: Path) -> None:
    from alwayson.api.bootstrap import copy_state
    from alwayson.store.base import AuditEntry, Event
    from alwayson.store.etcd_store import EtcdStore
    from alwayson.store.memory_etcd import MemoryEtcd
    from alwayson.store.sqlite import SQLiteStore

    local = await SQLiteStore(tmp_path / "state.db").open()
    await local.put("desired", {"text": "platform: bank"})
    await local.put("release/accounts", {"phase": "running"})
    for n in range(3):
        await local.append_audit(AuditEntry(float(n), "test", f"action-{n}"))
        await local.append_event(Event(float(n), "crashed", f"x-{n}", "exit 1"))
    target = EtcdStore(MemoryEtcd(ManualClock()), "/alwayson/bank/control")

    assert await copy_state(local, target) == (2, 3, 3)
    assert (await target.get("desired")).value == {"text": "platform: bank"}  # type: ignore[union-attr]
    assert [a.action for a in await target.list_audit()] == ["action-2", "action-1", "action-0"]
    assert [e.subject for e in await target.list_events()] == ["x-2", "x-1", "x-0"]

    await local.put("desired", {"text": "changed later"})
    assert await copy_state(local, target) is None  # etcd holds state: it is the truth
    assert (await target.get("desired")).value == {"text": "platform: bank"}  # type: ignore[union-attr]
    await local.close()


async def test_up_places_etcds_raft_leader_in_the_standbys_site(tmp_path: Path) -> None:
    from alwayson.control.consensus import place_raft_leader, raft_site
    from alwayson.data.layout import etcd_members
    from alwayson.store.memory_etcd import MemoryEtcd

    spec = load(tmp_path, SPEC + DATABASES).spec
    assert raft_site(spec) == "surabaya"  # jakarta is the primary_site
    assert raft_site(load(tmp_path, SPEC).spec) == "witness"
    state = tmp_path / "state"
    members = {m.name: m.endpoint for m in etcd_members(spec, state)}
    etcd = MemoryEtcd(ManualClock(), [members["jakarta"], members["surabaya"], members["witness"]])

    moved = await place_raft_leader(spec, state, etcd)
    assert moved == f"etcd's raft leader moved from {members['jakarta']} to {members['surabaya']}"
    assert etcd.raft_leader == members["surabaya"]
    assert await place_raft_leader(spec, state, etcd) is None  # already there
    etcd.available = False
    assert await place_raft_leader(spec, state, etcd) is None  # etcd away: left as it is
