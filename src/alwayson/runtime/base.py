"""The ``Runtime`` protocol: what the controller needs from whatever runs instances.

A runtime starts processes described by ``InstanceSpec``, watches them (exit, readiness,
liveness) and reports what happens as ``RuntimeEvent``s on a queue the controller drains.
Instances outlive the controller: a new runtime over the same state ``adopt``s them.

The controller reaches processes only through this protocol (and ``processes.Processes``
for the few that are not instances), so a second driver plugs in without touching
``control/``. ``tests/conformance/runtimes.py`` is the contract every driver passes.

Events and their ``data``:

- ``READY`` / ``UNREADY``: readiness flipped (thresholds applied); no data.
- ``UNHEALTHY``: liveness failed ``failure_threshold`` times in a row; no data.
- ``START_TIMEOUT``: not ready ``start_timeout`` seconds after start; no data.
- ``EXITED``: ``exit_code`` is known only for processes this runtime started (negative:
  killed by that signal); ``data["expected"]`` is true after ``stop`` or ``replace``,
  ``data["replaced"]`` true when a successor already holds the id. Found dead at
  ``adopt``: ``data`` also holds the ``spec`` (as JSON).

Errors are the project's (``alwayson.util.errors``): an unknown or exited instance is
``NotFoundError``, a start of a running id ``ConflictError``, a command that cannot run
``PermanentError``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from alwayson.spec.models import Probe


class Kind(StrEnum):
    WORKLOAD = "workload"
    GATEWAY = "gateway"
    FRONTDOOR = "frontdoor"
    AGENT = "agent"
    ETCD = "etcd"
    CONTROLLER = "controller"


class Phase(StrEnum):
    STARTING = "starting"
    READY = "ready"
    UNREADY = "unready"
    STOPPING = "stopping"
    EXITED = "exited"


FIRST_START_ONLY = ("--initial-cluster-state=",)


@dataclass(frozen=True)
class InstanceSpec:
    id: str
    kind: Kind
    site: str
    service: str
    version: str
    argv: list[str]
    cwd: str
    env: dict[str, str]
    host: str
    port: int
    readiness: Probe
    liveness: Probe | None = None
    stop_grace: float = 10.0
    user: str | None = None
    secrets: dict[str, str] = field(default_factory=dict)
    """Secret name → the platform's 0600 copy; the runtime gives the instance its own
    copies in ``$CREDENTIALS_DIRECTORY`` (the values' digest is in the environment)."""

    def template_hash(self) -> str:
        """Identity of what runs: a change of any of these means a new process.

        Flags that a process reads only at its very first start (etcd's
        ``--initial-cluster-state``, read only with an empty data folder) are left out: a
        member started as ``existing`` to rejoin is the same member."""
        fields = {
            "argv": [a for a in self.argv if not a.startswith(FIRST_START_ONLY)],
            "cwd": self.cwd,
            "env": self.env,
            "version": self.version,
            "port": self.port,
            "user": self.user,
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        data["readiness"] = self.readiness.model_dump(mode="json")
        data["liveness"] = self.liveness.model_dump(mode="json") if self.liveness else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceSpec:
        data = dict(data)
        data["kind"] = Kind(data["kind"])
        data["readiness"] = Probe.model_validate(data["readiness"])
        data["liveness"] = Probe.model_validate(data["liveness"]) if data["liveness"] else None
        return cls(**data)


@dataclass
class InstanceStatus:
    spec: InstanceSpec
    pid: int
    start_time: float
    started_at: float
    phase: Phase = Phase.STARTING
    adopted: bool = False
    ready_since: float | None = None
    exit_code: int | None = None
    exit_reason: str = ""
    last_probe: str = ""

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    @property
    def address(self) -> str:
        return f"{self.spec.host}:{self.spec.port}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.spec.id,
            "kind": self.spec.kind.value,
            "site": self.spec.site,
            "service": self.spec.service,
            "version": self.spec.version,
            "address": self.address,
            "pid": self.pid,
            "phase": self.phase.value,
            "ready": self.ready,
            "adopted": self.adopted,
            "started_at": self.started_at,
            "ready_since": self.ready_since,
            "exit_code": self.exit_code,
            "exit_reason": self.exit_reason,
            "last_probe": self.last_probe,
        }


class EventKind(StrEnum):
    EXITED = "exited"
    READY = "ready"
    UNREADY = "unready"
    UNHEALTHY = "unhealthy"
    START_TIMEOUT = "start-timeout"


@dataclass(frozen=True)
class RuntimeEvent:
    kind: EventKind
    instance_id: str
    detail: str
    exit_code: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    """What one instance's process costs now: CPU seconds (user + system) since it started
    and resident memory."""

    cpu_seconds: float
    rss_bytes: int


def describe_exit(code: int | None) -> str:
    """The sentence an ``EXITED`` event carries for an exit code (None: not known)."""
    if code is None:
        return "exited while adopted (exit code unknown)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class Runtime(Protocol):
    events: asyncio.Queue[RuntimeEvent]

    async def adopt(self) -> list[InstanceStatus]:
        """Take over instances left running by a previous controller; never restart them."""
        ...

    async def start(self, spec: InstanceSpec) -> InstanceStatus:
        """Launch; the status is ``STARTING`` until a ``READY`` event."""
        ...

    async def replace(
        self, spec: InstanceSpec, extra_args: list[str], timeout: float = 30.0
    ) -> InstanceStatus:
        """Start a successor beside the running process, which hands over and exits.

        ``extra_args`` tell the successor where to take the listening sockets from. Returns
        once the old process has exited (its ``EXITED`` is expected); if the successor dies
        first, the old one keeps serving and ``PermanentError`` is raised. Without a
        running process this is ``start``.
        """
        ...

    async def stop(self, instance_id: str, grace: float | None = None) -> None:
        """SIGTERM (drain), then SIGKILL after ``grace``; returns once the process is gone."""
        ...

    async def signal(self, instance_id: str, signum: int) -> None:
        """Send ``signum`` to the instance's process only (e.g. SIGHUP to reload)."""
        ...

    async def kill(self, instance_id: str, signum: int, *, tree: bool = False) -> list[int]:
        """Send ``signum`` to the instance's process group; with ``tree``, also to every
        descendant, even one in its own session (a database agent's PostgreSQL). Returns
        the pids signalled. The ``EXITED`` that follows is not expected."""
        ...

    def forget(self, instance_id: str) -> None:
        """Drop an exited instance from the table (the controller has seen its exit)."""
        ...

    def status(self, instance_id: str) -> InstanceStatus:
        """The status of one instance; ``NotFoundError`` when the runtime has none."""
        ...

    def statuses(self) -> list[InstanceStatus]:
        """Every instance known, exited ones included until ``stop`` or ``forget``."""
        ...

    def usage(self) -> dict[str, Usage]:
        """CPU and memory per running instance id; exited or unreadable ones are left out."""
        ...

    def log_path(self, site: str, instance_id: str) -> str: ...

    async def close(self) -> None:
        """Stop watching; running instances keep running."""
        ...
