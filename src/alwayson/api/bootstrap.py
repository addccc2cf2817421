"""``alwayson up`` for a platform with a controller in every site.

The controllers keep their state on etcd, so etcd must run before any of them can lead.
``up`` therefore starts what is missing of, in order:

1. the etcd members (one per site), and waits until a majority of them answer;
2. the site controllers (``controller@<site>``), and waits until one of them leads.

It starts them as the leader would (the same command lines, recorded the same way), so
the leader adopts them and supervises them from then on; ``up`` then applies the spec
through any controller. What this function started is stopped again, by its id, if the
platform cannot come up: nothing is left half-started.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from alwayson.api.records import Cluster, write_cluster
from alwayson.control.boards import EtcdBoards
from alwayson.control.consensus import (
    find_etcd,
    place_raft_leader,
    prepare_members,
    start_member,
)
from alwayson.control.desired import (
    Context,
    controller_id,
    controller_instance,
    etcd_instance,
)
from alwayson.control.preflight import check_addresses
from alwayson.data.layout import etcd_members
from alwayson.runtime.base import InstanceSpec, Kind, Phase
from alwayson.runtime.local import LocalRuntime, recorded_pids
from alwayson.spec.loading import LoadedSpec
from alwayson.store.base import StateStore
from alwayson.store.etcd import Etcd
from alwayson.store.etcd_store import EtcdStore
from alwayson.util.certs import CLIENT, leaf_paths, web_context
from alwayson.util.clocks import SystemClock
from alwayson.util.errors import NotFoundError, PermanentError

QUORUM_DEADLINE = 60.0
RETIRE_DEADLINE = 60.0
LEADER_DEADLINE = 60.0
POLL = 0.1


class BringUpFailed(PermanentError):
    pass


async def leader_of(apis: list[str], timeout: float = 1.0) -> dict[str, object] | None:
    """The leader's view as a controller that leads gives it, or None when none does."""
    async with httpx.AsyncClient(timeout=timeout, trust_env=False, verify=web_context()) as http:

        async def ask(api: str) -> dict[str, object] | None:
            try:
                answer = await http.get(f"http://{api}/healthz")
                body = answer.json()
            except (httpx.HTTPError, ValueError):
                return None
            return body if isinstance(body, dict) and body.get("role") == "leader" else None

        found = await asyncio.gather(*(ask(a) for a in apis))
    return next((f for f in found if f is not None), None)


async def bring_up(loaded: LoadedSpec, say: Callable[[str], None]) -> None:
    """Start the missing etcd members and site controllers; return once one leads."""
    spec, state_dir = loaded.spec, loaded.state_dir
    cluster = Cluster.of(spec, state_dir)
    write_cluster(state_dir, cluster)
    apis = list(cluster.apis.values())
    if await leader_of(apis) is not None:
        return
    await _retire_only_controller(state_dir, say)
    prepare_members(spec, state_dir)
    runtime = LocalRuntime(state_dir)
    boards = EtcdBoards(state_dir, SystemClock())
    started: list[str] = []
    try:
        adopted = await runtime.adopt()
        running = {s.spec.id for s in adopted}
        members = etcd_members(spec, state_dir)
        ctx = Context(loaded.folder, state_dir, None, {}, etcd_binary=find_etcd())
        members_to_start = [
            i for m in members if (i := etcd_instance(spec, m, members, ctx)).id not in running
        ]
        controllers = [
            i
            for site, api in cluster.apis.items()
            if (i := controller_instance(site, api, state_dir)).id not in running
        ]
        starting = {i.id: i for i in [*members_to_start, *controllers]}
        check_addresses(loaded, starting, [s.spec for s in adopted])
        first_start = not any((m.data_dir / "member").exists() for m in members)
        for inst in members_to_start:
            if not first_start:  # a member that lost its data rejoins (consensus.py)
                inst, _ = await start_member(inst, spec, state_dir, boards.cluster)
            await _start(runtime, inst, say, started)
        await _wait_members(runtime, [f"etcd@{m.name}" for m in members], state_dir)
        if not any(s.spec.kind is Kind.AGENT for s in adopted):
            moved = await place_raft_leader(spec, state_dir, boards.cluster(spec))
            if moved:
                say(moved)
        moved = await migrate_local_state(state_dir, cluster)
        if moved:
            say(moved)
        for inst in controllers:
            await _start(runtime, inst, say, started)
        await _wait_leader(runtime, apis, [controller_id(site) for site in cluster.apis])
    except BaseException:
        for ident in reversed(started):
            try:
                await runtime.stop(ident)
            except Exception as exc:  # best effort: the error raised below says what failed
                say(f"could not stop {ident}: {exc}")
        raise
    finally:
        await runtime.close()
        await boards.close()


async def _start(
    runtime: LocalRuntime, inst: InstanceSpec, say: Callable[[str], None], started: list[str]
) -> None:
    await runtime.start(inst)
    started.append(inst.id)
    say(f"started {inst.id} (pid {runtime.status(inst.id).pid})")


def _exited(runtime: LocalRuntime, idents: list[str]) -> str | None:
    for ident in idents:
        try:
            status = runtime.status(ident)
        except NotFoundError:
            continue
        if status.phase is Phase.EXITED:
            log = runtime.log_path(status.spec.site, ident)
            what = f"{status.spec.service} in {status.spec.site}"
            return f"\n  {ident} ({what}): {status.exit_reason}\n    log: {log}"
    return None


async def _wait_members(runtime: LocalRuntime, idents: list[str], state_dir: Path) -> None:
    deadline = time.monotonic() + QUORUM_DEADLINE
    majority = len(idents) // 2 + 1
    while time.monotonic() < deadline:
        gone = _exited(runtime, idents)
        if gone:
            raise BringUpFailed(f"the etcd cluster cannot start; nothing is left running:{gone}")
        ready = [s for s in runtime.statuses() if s.spec.id in idents and s.phase is Phase.READY]
        if len(ready) >= majority:
            return
        await asyncio.sleep(POLL)
    logs = ", ".join(runtime.log_path(i.split("@", 1)[1], i) for i in idents)
    raise BringUpFailed(
        f"no majority of the etcd members ({', '.join(idents)}) was healthy after "
        f"{QUORUM_DEADLINE:.0f}s; their logs: {logs}"
    )


async def _wait_leader(runtime: LocalRuntime, apis: list[str], idents: list[str]) -> None:
    deadline = time.monotonic() + LEADER_DEADLINE
    while time.monotonic() < deadline:
        if await leader_of(apis, timeout=0.5) is not None:
            return
        gone = _exited(runtime, idents)
        if gone:
            raise BringUpFailed(f"a controller did not start; nothing is left running:{gone}")
        await asyncio.sleep(POLL)
    logs = ", ".join(runtime.log_path(i.split("@", 1)[1], i) for i in idents)
    raise BringUpFailed(
        f"no controller was elected leader within {LEADER_DEADLINE:.0f}s; their logs: {logs}"
    )


def site_controller_pids(state_dir: Path) -> list[int]:
    """The pids the site controllers were recorded with (alive or not)."""
    return recorded_pids(state_dir, "controller@*")


async def _retire_only_controller(state_dir: Path, say: Callable[[str], None]) -> None:
    """A platform that ran with one controller (before it had databases, or an older
    alwayson) hands over to the site controllers: its controller is stopped (SIGTERM, by
    its recorded pid; its processes keep running and are adopted by the leader)."""
    import os
    import signal

    from alwayson.api.records import controller_record

    record = controller_record(state_dir)
    if record is None:
        return
    pid = int(str(record["pid"]))
    say(f"stopping the platform's only controller (pid {pid}): a controller per site follows")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + RETIRE_DEADLINE
    while controller_record(state_dir) is not None:
        if time.monotonic() > deadline:
            raise BringUpFailed(f"the controller pid {pid} did not stop in {RETIRE_DEADLINE:.0f}s")
        await asyncio.sleep(POLL)


async def migrate_local_state(state_dir: Path, cluster: Cluster) -> str | None:
    """Copy the only controller's state (``state.db``: the applied spec, releases, drills,
    alerts, silences, audit and events) onto etcd, once, before any site controller
    reads it there; the file is then renamed ``state.db.migrated``. None: nothing to do."""
    from alwayson.store.sqlite import SQLiteStore

    path = state_dir / "state.db"
    if not path.exists():
        return None
    local = await SQLiteStore(path).open()
    target = EtcdStore(
        Etcd(list(cluster.endpoints.values()), leaf_paths(state_dir, CLIENT)),
        f"{cluster.root}/control",
    )
    try:
        counts = await copy_state(local, target)
    finally:
        await local.close()
        await target.close()
    if counts is None:
        return None
    path.rename(path.with_name("state.db.migrated"))
    keys, audit, events = counts
    return (
        f"moved the controller's state to etcd: {keys} keys, {audit} audit entries, "
        f"{events} events (the old file is {path.name}.migrated)"
    )


async def copy_state(local: StateStore, target: StateStore) -> tuple[int, int, int] | None:
    """Every key, audit entry and event of ``local`` into ``target``, oldest first; None
    (nothing copied) when ``target`` already holds state: it is then the truth."""
    if await target.list_prefix("", limit=1):
        return None
    keys = await local.list_prefix("", limit=1_000_000)
    for key, found in keys:
        await target.put(key, found.value)
    audit = await local.list_audit(limit=1_000_000)
    for entry in reversed(audit):
        await target.append_audit(entry)
    events = await local.list_events(limit=1_000_000)
    for event in reversed(events):
        await target.append_event(event)
    return len(keys), len(audit), len(events)
