"""The drill's names, its context (what the controller hands the runner) and its result."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

RESULT_SCHEMA = "alwayson.drill.result/1"
CONTEXT_FILE = "context.json"
RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.json"
REPORT_FILE = "report.html"
JOURNAL_FILE = "faults.json"


class Status(StrEnum):
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    ABORTED = "aborted"  # stopped before it could be judged: bad target, Ctrl-C, runner died
    ERROR = "error"  # the drill itself broke

    @property
    def finished(self) -> bool:
        return self is not Status.RUNNING


@dataclass(frozen=True)
class DatabaseTarget:
    """One database as the runner sees it (passwords included: the file is 0600)."""

    name: str
    primary_site: str
    replication: str
    rto: float
    rpo: float
    endpoints: dict[str, str]  # site -> libpq URL of the site's endpoint (app user)
    servers: dict[str, str]  # site -> libpq URL of the site's PostgreSQL (superuser)


@dataclass(frozen=True)
class DrillContext:
    """Everything the runner needs, written by the controller to ``context.json``."""

    id: str
    scenario: str
    site: str | None
    rate: float
    duration: float
    journey: str
    actor: str
    api: str
    token: str
    front_door: str
    run_dir: str
    state_dir: str
    partitions_file: str
    sites: list[str]
    witness: str | None
    controller_pid: int
    controller_restart: list[str]
    rto_objective: float
    service: str | None = None  # the service the journey enters by (instance faults hit it)
    settle: float = 5.0
    databases: list[DatabaseTarget] = field(default_factory=list)
    apis: list[str] = field(default_factory=list)
    """Every site controller's address (a platform with one per site; else empty): the
    runner asks the next one when one does not answer, and a killed leader is restarted
    by the controller elected after it, not by the runner."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> DrillContext:
        raw = json.loads(text)
        raw["databases"] = [DatabaseTarget(**d) for d in raw.get("databases", [])]
        return cls(**raw)

    @classmethod
    def read(cls, run_dir: Path) -> DrillContext:
        return cls.from_json((run_dir / CONTEXT_FILE).read_text())


@dataclass
class Mark:
    """One moment on the drill's timeline (wall-clock seconds)."""

    at: float
    kind: str  # load-start, fault, detected, promoted, recovered, undone, restored, ...
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "kind": self.kind, "label": self.label}


@dataclass
class Objective:
    """One promise the drill is judged on."""

    name: str
    limit: float
    value: float | None
    passed: bool
    unit: str = ""
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(name: str, value: float | None, limit: float, unit: str = "", why: str = "") -> Objective:
    """``value <= limit`` passes; an unmeasured value fails (nothing proves it held)."""
    return Objective(name, limit, value, value is not None and value <= limit, unit, why)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
