"""Where the data layer's parts live, derived from the spec (pure functions).

Every site owns a loopback /16 (``127.N.0.0/16``); the data layer uses its ``127.N.0.x``
addresses that no service can take (services get ``127.N.S.x`` with S ≥ 1):

| part | address |
| --- | --- |
| site agent admin API | ``127.N.0.9:7400`` (workload sites) |
| etcd member (every site) | ``127.N.0.5``: clients 2379, peers 2380, ``/health`` 2381 |
| PostgreSQL of database k | ``127.N.0.(10+4k):5432`` |
| endpoint of database k | ``127.N.0.(11+4k):5432`` (``DATABASE_URL``) |
| link to site M | ``127.N.0.3:(20000 + 100·M + k)``; etcd ``…+98`` (also M = N), agent ``…+97`` |

Everything that leaves a site crosses one of its site links, which a drill can cut.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from alwayson.spec.models import Database, PlatformSpec
from alwayson.store.members import Member
from alwayson.util.certs import CLIENT, leaf_paths
from alwayson.util.credentials import AGENT_TOKEN_FILE, write_private

AGENT_PORT = 7400
PG_PORT = 5432
LINK_BASE_PORT = 20000
ETCD_LINK_SLOT = 98
AGENT_LINK_SLOT = 97
"""The link to another workload site's agent (failsafe questions)."""
ETCD_HOST = 5
SUPERUSER = "alwayson"


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LinkConfig(Frozen):
    """A site link: connections to ``listen`` are relayed to ``target`` in ``peer``."""

    peer: str
    listen: str
    target: str


class DatabaseConfig(Frozen):
    """One database as one site's agent runs it."""

    name: str
    index: int
    site: str
    primary_site: str
    sites: list[str]
    replication: str
    on_standby_loss: str
    standby_timeout: float
    ttl: float
    margin: float
    switchover_max_lag: int
    bin_dir: str | None
    settings: dict[str, str | int | float | bool]
    listen: str
    endpoint: str
    peers: dict[str, str]
    """Other workload sites' PostgreSQL, as reached through this site's links."""
    data_dir: str
    repo_dir: str
    peer_repos: dict[str, str]
    backup_schedule: str | None
    retention_count: int
    retention_age: float
    verify_backups: bool
    keep_free: int
    superuser_password: str
    app_password: str

    @property
    def standby_sites(self) -> list[str]:
        return [s for s in self.sites if s != self.site]


class EtcdConfig(Frozen):
    """How a platform process reaches etcd: every member, its own site's first."""

    endpoints: list[str]
    root: str
    """Every key of this platform is under it."""
    ca: str
    cert: str
    key: str


class AgentConfig(Frozen):
    site: str
    witness: str
    admin: str
    etcd: EtcdConfig
    """Its own site's member directly, the others through this site's links."""
    token_file: str
    partitions_file: str
    state_dir: str
    user: str | None
    links: list[LinkConfig]
    databases: list[DatabaseConfig]
    peer_agents: dict[str, str] = {}
    """Other workload sites' agents (admin API) as reached through this site's links:
    where a primary without etcd asks its standbys (the failsafe)."""


def site_index(spec: PlatformSpec, site: str) -> int:
    return next(i for i, s in enumerate(spec.sites, start=1) if s.name == site)


def witness_of(spec: PlatformSpec) -> str:
    return next(s.name for s in spec.sites if s.witness)


def agent_address(spec: PlatformSpec, site: str) -> str:
    return f"{spec.site_address(site, 0, 9)}:{AGENT_PORT}"


def etcd_members(spec: PlatformSpec, state_dir: Path) -> list[Member]:
    """One etcd member per site (witness included), in the spec's order of sites."""
    return [
        Member(s.name, spec.site_address(s.name, 0, ETCD_HOST), state_dir / "etcd" / s.name)
        for s in spec.sites
    ]


def etcd_root(spec: PlatformSpec) -> str:
    return f"/alwayson/{spec.platform}"


def etcd_config(spec: PlatformSpec, state_dir: Path, endpoints: list[str]) -> EtcdConfig:
    tls = leaf_paths(state_dir, CLIENT)  # made by the controller before any member starts
    return EtcdConfig(
        endpoints=endpoints,
        root=etcd_root(spec),
        ca=str(tls.ca),
        cert=str(tls.cert),
        key=str(tls.key),
    )


def pg_address(spec: PlatformSpec, site: str, index: int) -> str:
    return f"{spec.site_address(site, 0, 10 + 4 * index)}:{PG_PORT}"


def endpoint_address(spec: PlatformSpec, site: str, index: int) -> str:
    return f"{spec.site_address(site, 0, 11 + 4 * index)}:{PG_PORT}"


def link_address(spec: PlatformSpec, site: str, peer: str, slot: int) -> str:
    port = LINK_BASE_PORT + 100 * site_index(spec, peer) + slot
    return f"{spec.site_address(site, 0, 3)}:{port}"


def database_url(spec: PlatformSpec, db: Database, site: str, password: str) -> str:
    """What a service in ``site`` connects to: its own site's endpoint."""
    index = spec.databases.index(db)
    return f"postgresql://{db.name}:{password}@{endpoint_address(spec, site, index)}/{db.name}"


def passfile_of(cfg: DatabaseConfig) -> Path:
    """The superuser's libpq passfile (0600, PostgreSQL's identity), beside the data
    directory: the password is in no environment and in no configuration file."""
    return Path(cfg.data_dir).parent / "pgpass"


def data_root(state_dir: Path) -> Path:
    return state_dir / "data"


def pg_data_dir(state_dir: Path, database: str, site: str) -> Path:
    """A database's PostgreSQL data directory in one site."""
    return data_root(state_dir) / database / site / "pgdata"


def partitions_path(state_dir: Path) -> Path:
    """The site links' state (cuts and slowness) every relay and gateway reads."""
    return data_root(state_dir) / "partitions.json"


def secrets_of(state_dir: Path, spec: PlatformSpec) -> dict[str, dict[str, str]]:
    """Passwords per database (superuser, app), made once and kept (mode 0600)."""
    path = data_root(state_dir) / "secrets.json"
    try:
        known: dict[str, dict[str, str]] = json.loads(path.read_text())
    except FileNotFoundError:
        known = {}
    changed = False
    for db in spec.databases:
        if db.name not in known:
            known[db.name] = {
                "superuser": secrets.token_urlsafe(18),
                "app": secrets.token_urlsafe(18),
            }
            changed = True
    if changed:
        write_private(path, json.dumps(known))
    return known


def agent_config(
    spec: PlatformSpec,
    site: str,
    state_dir: Path,
    user: str | None,
    passwords: dict[str, dict[str, str]],
) -> AgentConfig:
    witness = witness_of(spec)
    workload = [s.name for s in spec.workload_sites]
    root = data_root(state_dir)
    links: list[LinkConfig] = []
    endpoints: list[str] = []
    for member in etcd_members(spec, state_dir):
        # Every member through a relay, its own site's too: on this one-machine lab the
        # members' own traffic crosses no link, so a site cut from every other must lose
        # its member for its agent as raft would (the member is in a minority).
        listen = link_address(spec, site, member.name, ETCD_LINK_SLOT)
        links.append(LinkConfig(peer=member.name, listen=listen, target=member.endpoint))
        if member.name == site:
            endpoints.insert(0, listen)
        else:
            endpoints.append(listen)
    peer_agents: dict[str, str] = {}
    for peer in workload:
        if peer != site:
            listen = link_address(spec, site, peer, AGENT_LINK_SLOT)
            links.append(LinkConfig(peer=peer, listen=listen, target=agent_address(spec, peer)))
            peer_agents[peer] = listen
    databases: list[DatabaseConfig] = []
    for index, db in enumerate(spec.databases):
        peers: dict[str, str] = {}
        for peer in workload:
            if peer == site:
                continue
            listen = link_address(spec, site, peer, index)
            links.append(LinkConfig(peer=peer, listen=listen, target=pg_address(spec, peer, index)))
            peers[peer] = listen
        sites = [db.primary_site] + [s for s in workload if s != db.primary_site]
        databases.append(
            DatabaseConfig(
                name=db.name,
                index=index,
                site=site,
                primary_site=db.primary_site,
                sites=sites,
                replication=db.replication,
                on_standby_loss=db.on_standby_loss,
                standby_timeout=db.standby_timeout,
                ttl=db.lease.ttl,
                margin=db.lease.margin,
                switchover_max_lag=int(db.switchover_max_lag),
                bin_dir=db.bin_dir,
                settings=dict(db.settings),
                listen=pg_address(spec, site, index),
                endpoint=endpoint_address(spec, site, index),
                peers=peers,
                data_dir=str(pg_data_dir(state_dir, db.name, site)),
                repo_dir=str(root / db.name / site / "repo"),
                peer_repos={p: str(root / db.name / p / "repo") for p in workload if p != site},
                backup_schedule=db.backup.schedule,
                retention_count=db.backup.retention.count,
                retention_age=db.backup.retention.age,
                verify_backups=db.backup.verify,
                keep_free=int(db.backup.keep_free),
                superuser_password=passwords[db.name]["superuser"],
                app_password=passwords[db.name]["app"],
            )
        )
    return AgentConfig(
        site=site,
        witness=witness,
        admin=agent_address(spec, site),
        etcd=etcd_config(spec, state_dir, endpoints),
        token_file=str(state_dir / AGENT_TOKEN_FILE),
        partitions_file=str(partitions_path(state_dir)),
        state_dir=str(state_dir),
        user=user,
        links=links,
        databases=databases,
        peer_agents=peer_agents,
    )
