"""Where the data layer's parts live, derived from the spec (pure functions).

Every site owns a loopback /16 (``127.N.0.0/16``); the data layer uses its ``127.N.0.x``
addresses that no service can take (services get ``127.N.S.x`` with S ≥ 1):

| part | address |
| --- | --- |
| site agent admin API | ``127.N.0.9:7400`` (workload sites) |
| lease keeper | ``127.W.0.10:7400`` (the witness) |
| PostgreSQL of database k | ``127.N.0.(10+4k):5432`` |
| endpoint of database k | ``127.N.0.(11+4k):5432`` (``DATABASE_URL``) |
| site link to site M | ``127.N.0.3:(20000 + 100·M + k)``; to the keeper ``…+99`` |

Everything that leaves a site crosses one of its site links, which a drill can cut.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from alwayson.spec.models import Database, PlatformSpec

AGENT_PORT = 7400
KEEPER_PORT = 7400
PG_PORT = 5432
LINK_BASE_PORT = 20000
KEEPER_LINK_SLOT = 99
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


class AgentConfig(Frozen):
    site: str
    witness: str
    admin: str
    keeper: str
    """The lease keeper as reached through this site's link to the witness."""
    token_file: str
    partitions_file: str
    state_dir: str
    user: str | None
    links: list[LinkConfig]
    databases: list[DatabaseConfig]


def site_index(spec: PlatformSpec, site: str) -> int:
    return next(i for i, s in enumerate(spec.sites, start=1) if s.name == site)


def witness_of(spec: PlatformSpec) -> str:
    return next(s.name for s in spec.sites if s.witness)


def agent_address(spec: PlatformSpec, site: str) -> str:
    return f"{spec.site_address(site, 0, 9)}:{AGENT_PORT}"


def keeper_address(spec: PlatformSpec) -> str:
    return f"{spec.site_address(witness_of(spec), 0, 10)}:{KEEPER_PORT}"


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


def write_private(path: Path, text: str) -> None:
    """Write atomically, readable by the owner only (passwords inside)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)


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
    links = [
        LinkConfig(
            peer=witness,
            listen=link_address(spec, site, witness, KEEPER_LINK_SLOT),
            target=keeper_address(spec),
        )
    ]
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
        keeper=links[0].listen,
        token_file=str(state_dir / "token"),
        partitions_file=str(partitions_path(state_dir)),
        state_dir=str(state_dir),
        user=user,
        links=links,
        databases=databases,
    )
