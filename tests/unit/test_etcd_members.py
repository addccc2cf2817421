"""etcd, one member per site, as processes of the platform: what ``desired`` asks for, what
must be on disk before a member starts (``control.consensus``), the checks of an apply,
and the order members start and stop in relative to the agents that need them."""

from __future__ import annotations

import asyncio
import ipaddress
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from tests.unit.test_controller import Lab, settle

from alwayson.control.applied import Applied
from alwayson.control.consensus import (
    cluster_token,
    ensure_certificates,
    ensure_data_dirs,
    member_tls,
    prepare_members,
)
from alwayson.control.controller import Controller
from alwayson.control.desired import (
    Context,
    allocate_slots,
    desired_instances,
    etcd_id,
    listen_addresses,
)
from alwayson.control.instances import START_ORDER, STOP_ORDER, InstanceOps
from alwayson.control.preflight import preflight
from alwayson.control.reconciling import Start
from alwayson.runtime.base import InstanceSpec, Kind
from alwayson.runtime.memory import MemoryRuntime, MemoryWorld
from alwayson.spec.loading import LoadedSpec, load_spec_file
from alwayson.util.certs import CLIENT, leaf_paths
from alwayson.util.clocks import ManualClock
from alwayson.util.errors import PermanentError

SPEC = """\
platform: bank
sites:
  - name: jakarta
  - name: surabaya
  - name: witness
    witness: true
services:
  - name: accounts
    version: "1.0.0"
    run: python -m bank.accounts
    port: 8000
    replicas: 1
    health: {http: /healthz, interval: 1s, timeout: 500ms}
    routes: [{path: /accounts}]
"""
DATABASES = """\
databases:
  - name: bank
    primary_site: jakarta
    services: [accounts]
"""
SITES = ("jakarta", "surabaya", "witness")
MEMBERS = [etcd_id(site) for site in SITES]
ETCD = "/opt/etcd/bin/etcd"


def load(tmp_path: Path, text: str) -> LoadedSpec:
    path = tmp_path / "alwayson.yaml"
    path.write_text(text)
    return load_spec_file(path)


def desire(loaded: LoadedSpec, state_dir: Path) -> dict[str, InstanceSpec]:
    ctx = Context(
        loaded.folder,
        state_dir,
        None,
        allocate_slots(loaded.spec, {}),
        {"bank": {"superuser": "s", "app": "a"}},
        etcd_binary=ETCD,
    )
    return desired_instances(loaded.spec, {}, ctx)


def flags(argv: list[str]) -> dict[str, str]:
    """``--name=value`` flags of a command line (bare ``--flag``s map to "")."""
    out = {}
    for arg in argv[1:]:
        name, _, value = arg.partition("=")
        out[name] = value
    return out


# ---------------------------------------------------------------- desired


def test_a_spec_with_databases_runs_one_member_in_every_site_witness_included(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    desired = desire(load(tmp_path, SPEC + DATABASES), state)

    members = {k: v for k, v in desired.items() if v.kind is Kind.ETCD}
    assert sorted(members) == sorted(MEMBERS)
    assert "keeper@witness" not in desired
    for site, host in zip(SITES, ("127.1.0.5", "127.2.0.5", "127.3.0.5"), strict=True):
        member = members[etcd_id(site)]
        assert (member.site, member.service, member.host, member.port) == (
            site,
            "etcd",
            host,
            2381,
        )
        assert member.argv[0] == ETCD
        assert member.user is None
        assert member.stop_grace == 10.0
        assert member.cwd == str(state)
        assert listen_addresses(member) == [f"{host}:2379", f"{host}:2380", f"{host}:2381"]
        assert InstanceSpec.from_json(member.to_json()) == member


def test_no_member_without_databases(tmp_path: Path) -> None:
    desired = desire(load(tmp_path, SPEC), tmp_path / "state")

    assert not [i for i in desired.values() if i.kind in (Kind.ETCD, Kind.AGENT)]


def test_a_member_speaks_mutual_tls_on_its_own_address_to_every_peer(tmp_path: Path) -> None:
    state = tmp_path / "state"
    loaded = load(tmp_path, SPEC + DATABASES)

    member = desire(loaded, state)[etcd_id("surabaya")]

    tls = leaf_paths(state, "etcd-surabaya")
    assert member_tls(state, "surabaya") == tls
    assert flags(member.argv) == {
        "--name": "surabaya",
        "--data-dir": str(state / "etcd" / "surabaya"),
        "--listen-client-urls": "https://127.2.0.5:2379",
        "--advertise-client-urls": "https://127.2.0.5:2379",
        "--listen-peer-urls": "https://127.2.0.5:2380",
        "--initial-advertise-peer-urls": "https://127.2.0.5:2380",
        "--listen-metrics-urls": "http://127.2.0.5:2381",
        "--initial-cluster": (
            "jakarta=https://127.1.0.5:2380,surabaya=https://127.2.0.5:2380,"
            "witness=https://127.3.0.5:2380"
        ),
        "--initial-cluster-state": "new",
        "--initial-cluster-token": "alwayson-bank",
        "--cert-file": str(tls.cert),
        "--key-file": str(tls.key),
        "--trusted-ca-file": str(state / "pki" / "ca.pem"),
        "--client-cert-auth": "",
        "--peer-cert-file": str(tls.cert),
        "--peer-key-file": str(tls.key),
        "--peer-trusted-ca-file": str(state / "pki" / "ca.pem"),
        "--peer-client-cert-auth": "",
        "--heartbeat-interval": "100",
        "--election-timeout": "1000",
        "--grpc-keepalive-min-time": "1s",
        "--snapshot-count": "10000",
        "--auto-compaction-mode": "revision",
        "--auto-compaction-retention": "10000",
        "--logger": "zap",
        "--log-outputs": "stderr",
    }
    assert cluster_token(loaded.spec) == "alwayson-bank"


def test_a_member_is_ready_with_a_leader_and_alive_while_it_answers(tmp_path: Path) -> None:
    member = desire(load(tmp_path, SPEC + DATABASES), tmp_path / "state")[etcd_id("witness")]

    # /health answers 200 only while the member has a leader; /metrics while it runs.
    assert member.readiness.http == "/health"
    assert member.liveness is not None and member.liveness.http == "/metrics"
    assert member.liveness.failure_threshold * member.liveness.interval >= 10
    # A member of a cluster without a majority waits for the others, it is not restarted.
    assert member.readiness.start_timeout >= 300


def test_the_etcd_binary_is_part_of_a_members_identity(tmp_path: Path) -> None:
    loaded = load(tmp_path, SPEC + DATABASES)
    before = desire(loaded, tmp_path / "state")
    ctx = Context(
        loaded.folder,
        tmp_path / "state",
        None,
        allocate_slots(loaded.spec, {}),
        {"bank": {"superuser": "s", "app": "a"}},
        etcd_binary="/usr/local/bin/etcd",
    )
    after = desired_instances(loaded.spec, {}, ctx)

    changed = {k for k in before if before[k].template_hash() != after[k].template_hash()}
    assert changed == set(MEMBERS)


# ---------------------------------------------------------------- what a start needs


def test_certificates_for_every_member_and_the_client_made_once(tmp_path: Path) -> None:
    loaded = load(tmp_path, SPEC + DATABASES)
    state = tmp_path / "state"

    made = ensure_certificates(loaded.spec, state)

    assert sorted(made) == sorted([*SITES, CLIENT])
    for site, octet in zip(SITES, (1, 2, 3), strict=True):
        cert = x509.load_pem_x509_certificate(made[site].cert.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(f"127.{octet}.0.5")]
        assert stat.S_IMODE(made[site].key.stat().st_mode) == 0o600
    before = {p: p.read_bytes() for p in (state / "pki").iterdir()}
    again = ensure_certificates(loaded.spec, state)
    assert again == made
    assert {p: p.read_bytes() for p in (state / "pki").iterdir()} == before


def test_a_member_moved_to_another_subnet_gets_a_new_certificate(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = ensure_certificates(load(tmp_path, SPEC + DATABASES).spec, state)
    ca, jakarta = first[CLIENT].ca.read_bytes(), first["jakarta"].cert.read_bytes()
    moved = SPEC.replace("  - name: surabaya\n", "  - name: surabaya\n    subnet: 127.9.0.0/16\n")

    second = ensure_certificates(load(tmp_path, moved + DATABASES).spec, state)

    cert = x509.load_pem_x509_certificate(second["surabaya"].cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.9.0.5")]
    assert second[CLIENT].ca.read_bytes() == ca  # the CA stays: the others keep trusting
    assert second["jakarta"].cert.read_bytes() == jakarta


def test_data_folders_are_private_and_kept(tmp_path: Path) -> None:
    loaded = load(tmp_path, SPEC + DATABASES)
    state = tmp_path / "state"
    (state / "etcd" / "jakarta").mkdir(parents=True, mode=0o755)
    (state / "etcd" / "jakarta" / "member").mkdir()

    ensure_data_dirs(loaded.spec, state)

    for site in SITES:
        assert stat.S_IMODE((state / "etcd" / site).stat().st_mode) == 0o700
    assert (state / "etcd" / "jakarta" / "member").is_dir()


def test_what_cannot_be_made_is_a_permanent_error_naming_the_members(tmp_path: Path) -> None:
    loaded = load(tmp_path, SPEC + DATABASES)
    state = tmp_path / "state"
    state.write_text("a file where the state folder should be")

    with pytest.raises(PermanentError, match="etcd members: cannot make their certificates"):
        prepare_members(loaded.spec, state)


def test_applied_prepares_members_and_agents_before_they_start(tmp_path: Path) -> None:
    loaded = load(tmp_path, SPEC + DATABASES)
    state = tmp_path / "state"
    applied = Applied(state, None)
    applied.loaded = loaded
    applied.slots = allocate_slots(loaded.spec, {})
    desired = desire(loaded, state)

    applied.prepare_start(desired["accounts-jakarta-1"])
    assert not (state / "pki").exists()

    applied.prepare_start(desired[etcd_id("witness")])
    for site in SITES:
        assert member_tls(state, site).cert.exists()
        assert (state / "etcd" / site).is_dir()
    assert leaf_paths(state, CLIENT).key.exists()

    applied.prepare_start(desired["agent@jakarta"])
    assert (state / "run" / "agents" / "jakarta.json").exists()


# ---------------------------------------------------------------- apply checks


def test_an_apply_without_the_etcd_program_is_refused_naming_the_members(
    tmp_path: Path,
) -> None:
    loaded = load(tmp_path, SPEC + DATABASES)
    new = desire(loaded, tmp_path / "state")

    with pytest.raises(PermanentError) as refused:
        preflight(loaded, new, [], None, lambda *_: None, lambda h, p: True, lambda p: False)

    text = str(refused.value)
    assert "etcd@jakarta, etcd@surabaya, etcd@witness" in text
    assert ETCD in text and "etcd-server" in text and "nothing was changed" in text
    preflight(loaded, new, [], None, lambda *_: None, lambda h, p: True, lambda p: p == ETCD)


def test_an_apply_where_a_members_port_is_taken_is_refused_naming_the_member(
    tmp_path: Path,
) -> None:
    loaded = load(tmp_path, SPEC + DATABASES)
    new = desire(loaded, tmp_path / "state")

    def free(host: str, port: int) -> bool:
        return (host, port) != ("127.2.0.5", 2380)

    with pytest.raises(PermanentError) as refused:
        preflight(loaded, new, [], None, lambda *_: None, free, lambda p: True)

    assert "127.2.0.5:2380 (etcd member etcd@surabaya" in str(refused.value)


# ---------------------------------------------------------------- start and stop order


class Published:
    async def publish(self) -> None:
        pass

    def still_routed(self, instance_id: str) -> bool:
        return False

    def forget(self, instance_id: str) -> None:
        pass


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    async def record_event(
        self, kind: str, subject: str, message: str, data: dict[str, object] | None = None
    ) -> None:
        self.events.append((kind, subject, message))

    def wake(self) -> None:
        pass

    def spawn(self, coro: object) -> None:
        raise AssertionError("nothing runs in the background here")


def ops(
    world: MemoryWorld, sink: Sink, taken: frozenset[tuple[str, int]] = frozenset()
) -> InstanceOps:
    return InstanceOps(
        MemoryRuntime(world),
        world.clock,
        sink,
        sink,
        sink,
        Published(),
        address_free=lambda host, port: (host, port) not in taken,
    )


def test_members_come_first_up_and_last_down() -> None:
    # The controllers keep their state on etcd; the agents their leases.
    assert START_ORDER[:3] == (Kind.ETCD, Kind.CONTROLLER, Kind.AGENT)
    assert STOP_ORDER[-3:] == (Kind.AGENT, Kind.CONTROLLER, Kind.ETCD)
    assert set(START_ORDER) == set(Kind)


async def test_members_are_launched_before_the_agents_and_stopped_after(tmp_path: Path) -> None:
    world = MemoryWorld(ManualClock(autojump=True))
    sink = Sink()
    instances = ops(world, sink)
    desired = desire(load(tmp_path, SPEC + DATABASES), tmp_path / "state")
    # In the order a decision lists them (by id): agents sort before members.
    starts = [Start(spec, "missing") for _, spec in sorted(desired.items())]

    await instances.start_all(starts)

    launched = [p.argv for p in sorted(world.processes.values(), key=lambda p: p.pid)]
    kinds = [next(s.kind for s in desired.values() if s.argv == argv) for argv in launched]
    assert kinds[:8] == [Kind.ETCD] * 3 + [Kind.CONTROLLER] * 3 + [Kind.AGENT] * 2
    assert set(kinds[8:]) == {Kind.WORKLOAD, Kind.GATEWAY, Kind.FRONTDOOR}
    assert kinds.index(Kind.FRONTDOOR) > kinds.index(Kind.GATEWAY)

    assert await instances.stop_everything() == len(desired)

    stopped = [subject for kind, subject, _ in sink.events if kind == "stopped"]
    assert sorted(stopped[-3:]) == MEMBERS
    assert sorted(stopped[-6:-3]) == [f"controller@{site}" for site in SITES]
    assert sorted(stopped[-8:-6]) == ["agent@jakarta", "agent@surabaya"]
    assert all(not p.running for p in world.processes.values())


async def test_a_member_whose_address_is_taken_fails_to_start_naming_it(tmp_path: Path) -> None:
    world = MemoryWorld(ManualClock(autojump=True))
    sink = Sink()
    instances = ops(world, sink, frozenset({("127.3.0.5", 2379)}))
    desired = desire(load(tmp_path, SPEC + DATABASES), tmp_path / "state")

    await instances.start_all([Start(desired[m], "missing") for m in MEMBERS])

    failure = instances.start_failures[etcd_id("witness")]
    assert failure == (
        "etcd@witness: address 127.3.0.5:2379 is in use by another process "
        "(the etcd member of site witness)"
    )
    assert sorted(instances.start_failures) == [etcd_id("witness")]
    assert ("start-failed", etcd_id("witness"), failure) in sink.events
    assert len(world.processes) == 2


# ---------------------------------------------------------------- the controller


def member_row(ctl: Controller, site: str) -> dict[str, Any]:
    return next(r for r in ctl.status()["instances"] if r["id"] == etcd_id(site))


async def run_for(
    ctl: Controller, lab: Lab, seconds: float, until: Callable[[], bool] | None = None
) -> None:
    """Loop turns while the clock moves on a second at a time (probes and stops run)."""
    for _ in range(int(seconds)):
        await ctl.turn()
        await ctl.tasks.idle()
        for _ in range(3):
            await asyncio.sleep(0)
        if until is not None and until():
            return
        lab.clock.advance(1.0)


async def test_the_controller_runs_and_shows_members_and_readopts_them(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    text = SPEC + DATABASES
    (tmp_path / "alwayson.yaml").write_text(text)
    ctl = await lab.controller()
    ctl.applied.etcd_binary = sys.executable  # a program that exists wherever tests run

    await ctl.apply(text, str(tmp_path / "alwayson.yaml"), "test")
    first = await ctl.turn()

    assert first.startswith("started 14: ")
    state = tmp_path / ".alwayson"
    for site in SITES:  # made before any member started
        assert member_tls(state, site).key.exists()
    assert await settle(ctl) == "steady: 14/14 processes ready"
    rows = {r["id"]: r for r in ctl.status()["instances"]}
    assert {i: (rows[i]["kind"], rows[i]["site"]) for i in MEMBERS} == {
        etcd_id(s): ("etcd", s) for s in SITES
    }
    assert rows[etcd_id("witness")]["address"] == "127.3.0.5:2381"
    assert rows[etcd_id("witness")]["log"].endswith("witness/etcd@witness.log")
    witness = next(s for s in ctl.status()["sites"] if s["name"] == "witness")
    assert (witness["desired"], witness["ready"]) == (2, 2)  # its etcd member, its controller

    # A member without a majority answers /metrics but not /health: unready, not restarted.
    pid = rows[etcd_id("surabaya")]["pid"]
    lab.world.set_ready(etcd_id("surabaya"), False)
    await run_for(ctl, lab, 30.0)
    row = member_row(ctl, "surabaya")
    assert (row["pid"], row["ready"], row["restarts"]) == (pid, False, 0)
    lab.world.set_ready(etcd_id("surabaya"), True)
    await run_for(ctl, lab, 5.0)
    assert await settle(ctl) == "steady: 14/14 processes ready"

    # A member that stops answering at all is restarted like any process.
    lab.world.set_live(etcd_id("witness"), False)
    await run_for(ctl, lab, 30.0, until=lambda: member_row(ctl, "witness")["restarts"] > 0)
    assert member_row(ctl, "witness")["restarts"] == 1
    await run_for(ctl, lab, 5.0)  # its successor answers
    assert await settle(ctl) == "steady: 14/14 processes ready"

    # A new controller adopts the members, restarting none.
    pids = {r["id"]: r["pid"] for r in ctl.status()["instances"]}
    await ctl.tasks.close()
    again = await lab.controller()
    again.applied.etcd_binary = sys.executable
    assert await settle(again) == "steady: 14/14 processes ready"
    assert {r["id"]: r["pid"] for r in again.status()["instances"]} == pids

    assert await again.down("test") == "stopped 14 processes"


def test_an_apply_that_would_reshape_the_running_cluster_is_refused_with_the_reason(
    tmp_path: Path,
) -> None:
    from alwayson.control.consensus import (
        membership_of,
        record_membership,
        recorded_membership,
        reshaping,
    )

    state = tmp_path / "state"
    loaded = load(tmp_path, SPEC + DATABASES)
    assert recorded_membership(state) == {}  # before the first start: anything goes
    record_membership(loaded.spec, state)
    assert reshaping(recorded_membership(state), membership_of(loaded.spec, state)) == []

    moved = load(
        tmp_path,
        (SPEC + DATABASES).replace(
            "  - name: surabaya\n", "  - name: surabaya\n    subnet: 127.9.0.0/16\n"
        ),
    )
    changes = reshaping(recorded_membership(state), membership_of(moved.spec, state))
    assert changes == [
        "site surabaya's member moves from https://127.2.0.5:2380 to https://127.9.0.5:2380"
    ]
    with pytest.raises(PermanentError) as refused:
        preflight(
            moved,
            desire(moved, state),
            [],
            None,
            lambda *_: None,
            lambda h, p: True,
            lambda p: True,
            reshaped=changes,
        )
    text = str(refused.value)
    assert "reshape the etcd cluster" in text and "127.9.0.5:2380" in text
    assert "Nothing was changed" in text

    renamed = load(tmp_path, (SPEC + DATABASES).replace("name: witness", "name: arbiter"))
    assert reshaping(recorded_membership(state), membership_of(renamed.spec, state)) == [
        "site arbiter added",
        "site witness removed",
    ]
