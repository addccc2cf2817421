"""An etcd cluster of one member per site: names, addresses and each member's command line
(pure; the spec-aware placement is in ``data/layout.py``).

Each member listens on its site's own address: clients on :data:`CLIENT_PORT` and peers
on :data:`PEER_PORT`, both mutual TLS with the platform's CA; ``/health`` and
``/metrics`` in plain HTTP on :data:`METRICS_PORT` for probes and the scraper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alwayson.util.certs import TlsFiles

CLIENT_PORT = 2379
PEER_PORT = 2380
METRICS_PORT = 2381
HEARTBEAT_MS = 100
ELECTION_MS = 1000
"""etcd's defaults: a member that hears no leader for 1 s starts an election."""


@dataclass(frozen=True)
class Member:
    name: str
    """The site's name: one member per site."""
    host: str
    data_dir: Path
    client_port: int = CLIENT_PORT
    peer_port: int = PEER_PORT
    metrics_port: int = METRICS_PORT

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{self.host}:{self.peer_port}"

    @property
    def client_url(self) -> str:
        return f"https://{self.host}:{self.client_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}"


def initial_cluster(members: Sequence[Member]) -> str:
    return ",".join(f"{m.name}={m.peer_url}" for m in members)


def endpoints_from(members: Sequence[Member], first: str | None = None) -> list[str]:
    """Every member's client address, ``first``'s (the caller's own site) first."""
    ordered = sorted(members, key=lambda m: m.name != first)
    return [m.endpoint for m in ordered]


def member_argv(
    binary: str,
    member: Member,
    members: Sequence[Member],
    tls: TlsFiles,
    token: str,
    state: str = "new",
) -> list[str]:
    """The command line of one member. ``state``: ``new`` for a cluster's first start (a
    member with data ignores it), ``existing`` for a member added to a running cluster."""
    return [
        binary,
        f"--name={member.name}",
        f"--data-dir={member.data_dir}",
        f"--listen-client-urls={member.client_url}",
        f"--advertise-client-urls={member.client_url}",
        f"--listen-peer-urls={member.peer_url}",
        f"--initial-advertise-peer-urls={member.peer_url}",
        f"--listen-metrics-urls={member.metrics_url}",
        f"--initial-cluster={initial_cluster(members)}",
        f"--initial-cluster-state={state}",
        f"--initial-cluster-token={token}",
        f"--cert-file={tls.cert}",
        f"--key-file={tls.key}",
        f"--trusted-ca-file={tls.ca}",
        "--client-cert-auth",
        f"--peer-cert-file={tls.cert}",
        f"--peer-key-file={tls.key}",
        f"--peer-trusted-ca-file={tls.ca}",
        "--peer-client-cert-auth",
        f"--heartbeat-interval={HEARTBEAT_MS}",
        f"--election-timeout={ELECTION_MS}",
        "--grpc-keepalive-min-time=1s",
        "--snapshot-count=10000",
        "--auto-compaction-mode=revision",
        "--auto-compaction-retention=10000",
        "--logger=zap",
        "--log-outputs=stderr",
    ]
