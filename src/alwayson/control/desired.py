"""From spec to the exact set of processes that should run (pure functions).

Every workload site gets one gateway and one front-door process. The front-door processes
of all sites share the front door's address (SO_REUSEPORT), so losing one site's process
leaves the other accepting, and each prefers its own site's gateway.

A spec with databases also gets a site agent per workload site, and an etcd member and a
controller per site, the witness included: the three members are the consensus the agents'
leases and the controllers' state live on, and one of the three controllers leads.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from alwayson.control.consensus import DEBIAN_ETCD, cluster_token, member_tls
from alwayson.control.secrets import digest_of, secret_file
from alwayson.data.layout import (
    AGENT_PORT,
    agent_config,
    database_url,
    etcd_members,
    partitions_path,
)
from alwayson.runtime.base import InstanceSpec, Kind
from alwayson.runtime.users import (
    CREDENTIALS_ENV,
    DYNAMIC,
    PRIVATE_DIR_ENV,
    credentials_dir,
    dynamic_user,
    private_dir,
)
from alwayson.spec.commands import resolve_command
from alwayson.spec.models import PlatformSpec, Probe, Service
from alwayson.spec.planning import Overrides, effective_replicas
from alwayson.store.members import Member, member_argv
from alwayson.util.credentials import GATEWAY_TOKEN_FILE

POSTGRES_USER = "nobody"
"""Who PostgreSQL runs as when the controller is root (a real user: initdb needs a passwd
entry). No workload runs as it: they have identities of their own, and the spec refuses
``runtime.user: nobody`` beside a database."""
COLOR_OFFSET = {"a": 0, "b": 100}  # ordinals 1..100 and 101..200: two versions side by side
GATEWAY_ADDRESS = (0, 1)
FRONTDOOR_ADMIN_ADDRESS = (0, 2)
GATEWAY_STOP_GRACE = 15.0
ETCD_STOP_GRACE = 10.0
ETCD_LISTEN_FLAGS = ("--listen-client-urls=", "--listen-peer-urls=", "--listen-metrics-urls=")
ETCD_START_TIMEOUT = 300.0
"""A member is healthy only once a majority of members is up; until then it is left alone
(restarting it would not bring the others back), so only a member stuck this long is
restarted."""


@dataclass(frozen=True)
class Context:
    """What the desired state depends on besides the spec."""

    spec_folder: Path
    state_dir: Path
    user: str | None
    service_slots: dict[str, int]
    db_passwords: Mapping[str, Mapping[str, str]] | None = None
    etcd_binary: str = DEBIAN_ETCD
    """Resolved once by the controller (``consensus.find_etcd``)."""
    secrets: Mapping[str, str] = field(default_factory=dict)
    """The values of the spec's ``secrets:`` (kept 0600 by ``control.secrets``)."""


@dataclass(frozen=True)
class Variant:
    """One version of a service and how many of its instances run where.

    Outside a release a service has one variant (its stable version); during one, two.
    ``counts`` None means the service's replicas (with ``alwayson scale`` drift).
    """

    version: str
    run: str
    color: str = "a"
    counts: Mapping[str, int] | None = None


def instance_id(service: str, site: str, ordinal: int) -> str:
    return f"{service}-{site}-{ordinal}"


def gateway_id(site: str) -> str:
    return f"gateway@{site}"


def frontdoor_id(site: str) -> str:
    return f"frontdoor@{site}"


def allocate_slots(spec: PlatformSpec, slots: dict[str, int]) -> dict[str, int]:
    """Give each service a stable third octet (1..250), kept across spec edits."""
    result = dict(slots)
    used = set(result.values())
    for svc in spec.services:
        if svc.name in result:
            continue
        slot = next(n for n in range(1, 251) if n not in used)
        result[svc.name] = slot
        used.add(slot)
    return result


def desired_instances(
    spec: PlatformSpec,
    overrides: Overrides,
    ctx: Context,
    variants: Mapping[str, Sequence[Variant]] | None = None,
) -> dict[str, InstanceSpec]:
    out: dict[str, InstanceSpec] = {}
    for site in spec.workload_sites:
        for svc in spec.services:
            default = [Variant(svc.version, svc.run)]
            for variant in (variants or {}).get(svc.name, default):
                if variant.counts is None:
                    count = effective_replicas(spec, overrides, svc.name, site.name)
                else:
                    count = variant.counts.get(site.name, 0)
                shown = svc
                if (variant.version, variant.run) != (svc.version, svc.run):
                    shown = svc.model_copy(update={"version": variant.version, "run": variant.run})
                offset = COLOR_OFFSET[variant.color]
                for ordinal in range(offset + 1, offset + min(count, 100) + 1):
                    inst = workload_instance(spec, shown, site.name, ordinal, ctx)
                    out[inst.id] = inst
        gw = gateway_instance(spec, site.name, ctx)
        fd = frontdoor_instance(spec, site.name, ctx)
        out[gw.id] = gw
        out[fd.id] = fd
        if spec.databases:
            agent = agent_instance(spec, site.name, ctx)
            out[agent.id] = agent
    if spec.databases:
        members = etcd_members(spec, ctx.state_dir)
        for member in members:
            inst = etcd_instance(spec, member, members, ctx)
            out[inst.id] = inst
    if spec.has_consensus:
        for where, api in spec.controller_apis().items():
            inst = controller_instance(where, api, ctx.state_dir)
            out[inst.id] = inst
    return out


def controller_id(site: str) -> str:
    return f"controller@{site}"


CONTROLLER_STOP_GRACE = 15.0


def daemon_argv(state_dir: Path, api: str, site: str | None = None) -> list[str]:
    """How a controller daemon is started: by ``alwayson up``, by the leader for the other
    sites' controllers (``site`` given), and again by a drill that killed the only one."""
    argv = [sys.executable, "-m", "alwayson.api.daemon", "--state-dir", str(state_dir)]
    argv += ["--api", api]
    return argv if site is None else [*argv, "--site", site]


def controller_instance(site: str, api: str, state_dir: Path) -> InstanceSpec:
    """One site's controller: a candidate for leader, supervised by whichever leads.

    Alive while its API answers; a controller that cannot reach etcd still answers (as a
    follower that knows no leader), so it is not restarted for what is not its fault."""
    host, port = api.rsplit(":", 1)
    probe = Probe(http="/healthz", interval=1.0, timeout=1.0, start_timeout=60.0)
    return InstanceSpec(
        id=controller_id(site),
        kind=Kind.CONTROLLER,
        site=site,
        service="controller",
        version="builtin",
        argv=daemon_argv(state_dir, api, site),
        cwd=str(state_dir),
        env={"PYTHONUNBUFFERED": "1"},
        host=host,
        port=int(port),
        readiness=probe,
        liveness=Probe(http="/healthz", interval=2.0, timeout=2.0, failure_threshold=5),
        stop_grace=CONTROLLER_STOP_GRACE,
        user=None,
    )


def agent_id(site: str) -> str:
    return f"agent@{site}"


def etcd_id(site: str) -> str:
    return f"etcd@{site}"


def agent_config_path(state_dir: Path, site: str) -> Path:
    return state_dir / "run" / "agents" / f"{site}.json"


def agent_config_text(spec: PlatformSpec, site: str, ctx: Context) -> str:
    passwords = {k: dict(v) for k, v in (ctx.db_passwords or {}).items()}
    # PostgreSQL's identity is its own: never a workload's, even one runtime.user names.
    postgres = POSTGRES_USER if ctx.user is not None else None
    return agent_config(spec, site, ctx.state_dir, postgres, passwords).model_dump_json(indent=1)


def agent_instance(spec: PlatformSpec, site: str, ctx: Context) -> InstanceSpec:
    """The site agent: PostgreSQL, the lease, fencing, the endpoints and the site links.
    Its configuration (with passwords) is a 0600 file the controller writes at start; the
    hash in the environment makes a changed configuration a new process."""
    text = agent_config_text(spec, site, ctx)
    host = spec.site_address(site, 0, 9)
    return InstanceSpec(
        id=agent_id(site),
        kind=Kind.AGENT,
        site=site,
        service="agent",
        version="builtin",
        argv=[
            sys.executable,
            "-m",
            "alwayson.data.agent",
            "--config",
            str(agent_config_path(ctx.state_dir, site)),
        ],
        cwd=str(ctx.state_dir),
        env={
            "PYTHONUNBUFFERED": "1",
            "ALWAYSON_CONFIG_SHA": hashlib.sha256(text.encode()).hexdigest()[:12],
        },
        host=host,
        port=AGENT_PORT,
        readiness=Probe(http="/healthz", interval=1.0, timeout=0.5, start_timeout=30.0),
        liveness=Probe(http="/healthz", interval=1.0, timeout=1.0, failure_threshold=10),
        stop_grace=40.0,
        user=None,
    )


def etcd_instance(
    spec: PlatformSpec, member: Member, members: Sequence[Member], ctx: Context
) -> InstanceSpec:
    """One etcd member, on its site's own address (mutual TLS for clients and peers).

    Probed in plain HTTP on its metrics port: ready while ``/health`` answers 200, which
    etcd does only while the member has a leader; alive while ``/metrics`` answers at all.
    A member of a cluster that lost its majority is unready but not restarted: it is not
    what is broken, and it must be there when the others come back."""
    argv = member_argv(
        ctx.etcd_binary,
        member,
        members,
        member_tls(ctx.state_dir, member.name),
        cluster_token(spec),
        "new",  # a member with data ignores it: its data say which cluster it belongs to
    )
    return InstanceSpec(
        id=etcd_id(member.name),
        kind=Kind.ETCD,
        site=member.name,
        service="etcd",
        version="builtin",
        argv=argv,
        cwd=str(ctx.state_dir),
        env={},
        host=member.host,
        port=member.metrics_port,
        # Every 2 s, not 1: etcd renders its whole /metrics (about 150 kB, 10 ms of CPU)
        # for each probe, and /health is a read through the leader.
        readiness=Probe(
            http="/health",
            interval=2.0,
            timeout=1.0,
            failure_threshold=2,
            start_timeout=ETCD_START_TIMEOUT,
        ),
        liveness=Probe(http="/metrics", interval=2.0, timeout=1.0, failure_threshold=8),
        stop_grace=ETCD_STOP_GRACE,
        user=None,
    )


def workload_instance(
    spec: PlatformSpec, svc: Service, site: str, ordinal: int, ctx: Context
) -> InstanceSpec:
    host = spec.site_address(site, ctx.service_slots[svc.name], ordinal)
    ident = instance_id(svc.name, site, ordinal)
    gateway = f"http://{spec.gateway_address(site)}:{spec.gateway.port}"
    env = {
        "PYTHONUNBUFFERED": "1",
        **svc.env,
        "HOST": host,
        "PORT": str(svc.port),
        "ALWAYSON_SITE": site,
        "ALWAYSON_SERVICE": svc.name,
        "ALWAYSON_INSTANCE": ident,
        "ALWAYSON_VERSION": svc.version,
        "ALWAYSON_GATEWAY": gateway,
        "ALWAYSON_PLATFORM": spec.platform,
    }
    for db in spec.databases:
        if svc.name in db.services and ctx.db_passwords and db.name in ctx.db_passwords:
            env["DATABASE_URL"] = database_url(spec, db, site, ctx.db_passwords[db.name]["app"])
    user = service_user(spec, svc, ctx)
    if user is not None and user.startswith(DYNAMIC):
        home = str(private_dir(ctx.state_dir, svc.name))
        env |= {PRIVATE_DIR_ENV: home, "HOME": home}
    files: dict[str, str] = {}
    if svc.secrets:
        used = {use.name: ctx.secrets.get(use.name, "") for use in svc.secrets}
        env[CREDENTIALS_ENV] = str(credentials_dir(ctx.state_dir, svc.name))
        # A digest, never a value: a rotated secret is a new template, so instances roll.
        env["ALWAYSON_SECRETS"] = digest_of(json.dumps(sorted(used.items())))
        for use in svc.secrets:
            files[use.name] = str(secret_file(ctx.state_dir, use.name))
            if use.env is not None:
                env[use.env] = used[use.name]
    return InstanceSpec(
        id=ident,
        kind=Kind.WORKLOAD,
        site=site,
        service=svc.name,
        version=svc.version,
        argv=resolve_command(svc.run, ctx.spec_folder, env),  # $HOST, $PORT... expanded
        cwd=str(ctx.spec_folder),
        env=env,
        host=host,
        port=svc.port,
        readiness=svc.health,
        liveness=svc.liveness_probe(),
        stop_grace=svc.stop_grace,
        user=user,
        secrets=files,
    )


def service_user(spec: PlatformSpec, svc: Service, ctx: Context) -> str | None:
    """Who a service's instances run as: ``runtime.user`` when the spec names one; else,
    when the controller may switch users (it runs as root: ``ctx.user`` is set), an
    identity of the service's own, ``uid_base`` + its slot, shared with no other service
    and with no platform process (PostgreSQL runs as ``nobody``)."""
    if spec.runtime.user or ctx.user is None:
        return spec.runtime.user or ctx.user
    return dynamic_user(spec.runtime.uid_base + ctx.service_slots[svc.name])


def _component(
    spec: PlatformSpec,
    site: str,
    ident: str,
    kind: Kind,
    listen: list[str],
    admin: tuple[str, int],
    ctx: Context,
    reuse_port: bool,
) -> InstanceSpec:
    routes_file = ctx.state_dir / "run" / "routes" / f"{ident}.json"
    argv = [sys.executable, "-m", "alwayson.gateway"]
    for address in listen:
        argv += ["--listen", address]
    if reuse_port:
        argv.append("--reuse-port")
    argv += [
        "--admin",
        f"{admin[0]}:{admin[1]}",
        "--site",
        site,
        "--routes-file",
        str(routes_file),
        "--token-file",
        str(ctx.state_dir / GATEWAY_TOKEN_FILE),
        # The file the site agents' relays read: a drill's cut reaches the HTTP traffic
        # between sites too (a missing file cuts nothing).
        "--partitions",
        str(partitions_path(ctx.state_dir)),
        "--handover",
        handover_path(ident),
    ]
    return InstanceSpec(
        id=ident,
        kind=kind,
        site=site,
        service=kind.value,
        version="builtin",
        argv=argv,
        cwd=str(ctx.state_dir),
        env={"PYTHONUNBUFFERED": "1"},
        host=admin[0],
        port=admin[1],
        readiness=Probe(http="/healthz", interval=1.0, timeout=0.5, start_timeout=20.0),
        liveness=Probe(http="/healthz", interval=1.0, timeout=0.5, failure_threshold=5),
        # Longer than the gateway's own drain timeout (10 s), so SIGKILL never cuts a drain.
        stop_grace=GATEWAY_STOP_GRACE,
        user=None,
    )


def gateway_instance(spec: PlatformSpec, site: str, ctx: Context) -> InstanceSpec:
    host = spec.gateway_address(site)
    return _component(
        spec,
        site,
        gateway_id(site),
        Kind.GATEWAY,
        [f"{host}:{spec.gateway.port}"],
        (host, spec.gateway.admin_port),
        ctx,
        reuse_port=False,
    )


def frontdoor_instance(spec: PlatformSpec, site: str, ctx: Context) -> InstanceSpec:
    admin_host = spec.site_address(site, *FRONTDOOR_ADMIN_ADDRESS)
    return _component(
        spec,
        site,
        frontdoor_id(site),
        Kind.FRONTDOOR,
        [spec.front_door.listen],
        (admin_host, spec.gateway.admin_port),
        ctx,
        reuse_port=True,
    )


def handover_path(ident: str) -> str:
    """Relative to the state directory (the gateway's working directory), so the Unix
    socket path stays short whatever the state directory's length."""
    return f"run/handover/{ident}.sock"


def takeover_args(inst: InstanceSpec) -> list[str]:
    return ["--takeover", handover_path(inst.id)]


def listen_addresses(inst: InstanceSpec) -> list[str]:
    """Addresses a process binds (for checking they are free before starting it)."""
    if inst.kind in (Kind.WORKLOAD, Kind.AGENT, Kind.CONTROLLER):
        return [f"{inst.host}:{inst.port}"]
    if inst.kind is Kind.ETCD:  # --listen-client-urls=https://127.1.0.5:2379 and the like
        urls = [a.split("=", 1)[1] for a in inst.argv if a.startswith(ETCD_LISTEN_FLAGS)]
        return [url.split("://", 1)[-1] for url in urls]
    out = [inst.argv[i + 1] for i, a in enumerate(inst.argv) if a in ("--listen", "--admin")]
    return out
