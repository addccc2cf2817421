"""Where a platform's controllers are recorded and how they are started, without the
controller itself: the CLI's `up`, `down` and `status` read and spawn through this module
and never import the daemon (FastAPI, the controller, the metrics engine: a second of
imports on every `up`).

- ``controller.json``: the lone controller's pid, start time and API address
- ``control/cluster.json``: what a site's controller needs before it can read etcd
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from alwayson.control.desired import daemon_argv
from alwayson.data.layout import etcd_members, etcd_root
from alwayson.spec.models import PlatformSpec
from alwayson.util.credentials import write_private

CLUSTER_FILE = Path("control") / "cluster.json"
PID_FILE = "controller.json"
LOG_FILE = "controller.log"


def controller_record(state_dir: Path) -> dict[str, object] | None:
    """The running controller's pid record, or None when no live controller owns it."""
    try:
        record = json.loads((state_dir / PID_FILE).read_text())
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record["start_time"])) > 0.05:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except (OSError, ValueError, KeyError, psutil.Error):
        return None
    return dict(record)


def spawn(state_dir: Path, api: str) -> int:
    """Start the daemon in its own session; returns its pid (readiness is polled by caller)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log = (state_dir / LOG_FILE).open("ab")
    with log:
        proc = subprocess.Popen(
            daemon_argv(state_dir, api),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid


@dataclass(frozen=True)
class Cluster:
    """What a site's controller needs before it can read anything from etcd: where the
    members are, the platform's root key and every controller's address. ``alwayson up``
    writes it from the spec (``<state>/control/cluster.json``)."""

    platform: str
    root: str
    endpoints: dict[str, str]
    apis: dict[str, str]

    def endpoints_from(self, site: str) -> list[str]:
        """Every member's address, the site's own first."""
        return sorted(self.endpoints.values(), key=lambda e: e != self.endpoints.get(site))

    @classmethod
    def of(cls, spec: PlatformSpec, state_dir: Path) -> Cluster:
        members = etcd_members(spec, state_dir)
        return cls(
            platform=spec.platform,
            root=etcd_root(spec),
            endpoints={m.name: m.endpoint for m in members},
            apis=spec.controller_apis(),
        )

    def json(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "root": self.root,
            "endpoints": self.endpoints,
            "apis": self.apis,
        }


def write_cluster(state_dir: Path, cluster: Cluster) -> None:
    path = state_dir / CLUSTER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps(cluster.json(), indent=1))


def read_cluster(state_dir: Path) -> Cluster:
    path = state_dir / CLUSTER_FILE
    try:
        data = json.loads(path.read_text())
        return Cluster(
            str(data["platform"]), str(data["root"]), dict(data["endpoints"]), dict(data["apis"])
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(
            f"{path}: cannot read the cluster this controller belongs to ({exc}); "
            "`alwayson up` writes it from the spec"
        ) from exc


__all__ = [
    "CLUSTER_FILE",
    "LOG_FILE",
    "PID_FILE",
    "Cluster",
    "controller_record",
    "read_cluster",
    "spawn",
    "write_cluster",
]
