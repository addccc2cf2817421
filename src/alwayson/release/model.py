"""The persisted record of a release, and the stages it goes through.

A release never changes its plan once started: its stages are computed when it begins and
stored with it, so a controller that restarts in the middle continues the same plan from
the same stage, neither repeating nor skipping one.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Color = Literal["a", "b"]


def other_color(color: Color) -> Color:
    return "b" if color == "a" else "a"


class Phase(StrEnum):
    PROGRESSING = "progressing"
    PAUSED = "paused"  # a manual pause: waits for `alwayson release promote`
    ROLLING_BACK = "rolling-back"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled-back"

    @property
    def active(self) -> bool:
        return self in (Phase.PROGRESSING, Phase.PAUSED, Phase.ROLLING_BACK)


class Routing(StrEnum):
    """How a gateway splits a service's ordinary traffic during a stage."""

    INSTANCES = "instances"  # every ready instance alike (rolling)
    PREVIEW = "preview"  # stable only; the candidate by header (blue-green preview)
    WEIGHTED = "weighted"  # the candidate gets ``weight`` % (canary)
    CANDIDATE = "candidate"  # candidate only; the stable stays up, idle
    STABLE = "stable"  # stable only (rollback)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Template(Model):
    """One version of a service: what runs, and the label its metrics carry."""

    version: str
    run: str
    label: str
    color: Color


def version_label(version: str, run: str, other: Template | None) -> str:
    """The metrics label of a version; unique next to ``other`` even when only the run
    command changed."""
    if other is None or other.version != version:
        return version
    return f"{version}+{hashlib.sha256(run.encode()).hexdigest()[:6]}"


class Counts(Model):
    stable: int
    candidate: int


class Stage(Model):
    """A target state and the gate that ends it.

    The stage settles when every site runs exactly ``counts`` (candidates ready for the
    strategy's ``min_ready_seconds``, stables ready), then holds ``hold`` seconds (or until
    promoted, when ``manual``), analysing when ``analysis`` is set.
    """

    name: str
    counts: dict[str, Counts]
    routing: Routing
    weight: int = 0
    hold: float = 0.0
    manual: bool = False
    analysis: bool = False
    require_traffic: bool = False  # a canary step: too few requests fails the step
    need_candidates: bool = True  # False: candidate counts are an upper bound (rollback)


class Decision(Model):
    """What happened at the end of an analysis or a stage, with the figures behind it."""

    at: float
    stage: str
    outcome: str  # pass | fail | inconclusive | done | failed | promoted | aborted
    reasons: list[str] = Field(default_factory=list)
    figures: dict[str, Any] = Field(default_factory=dict)


class StageRecord(Model):
    name: str
    started_at: float
    settled_at: float | None = None
    ended_at: float | None = None
    outcome: str = ""
    analyses: int = 0
    last: Decision | None = None


class Release(Model):
    """One release of one service, from start to its end, as stored."""

    id: int
    service: str
    strategy: Literal["rolling", "blue-green", "canary", "rollback"]
    actor: str
    reason: str
    stable: Template
    candidate: Template
    settings: dict[str, Any]  # the service's ReleasePolicy (JSON), overrides applied
    stages: list[Stage]
    stage: int = 0
    phase: Phase = Phase.PROGRESSING
    started_at: float
    ended_at: float | None = None
    stage_started_at: float
    settled_at: float | None = None
    last_analysis_at: float | None = None
    failures: int = 0
    promote_requested: bool = False
    full_promote: bool = False
    first_bad_at: float | None = None
    traffic_restored_at: float | None = None
    message: str = ""
    rollback_reason: str = ""
    history: list[StageRecord] = Field(default_factory=list)
    decisions: list[Decision] = Field(default_factory=list)
    release_baseline: dict[str, Any] = Field(default_factory=dict)
    stage_baseline: dict[str, Any] = Field(default_factory=dict)
    totals: dict[str, Any] = Field(default_factory=dict)

    @property
    def current(self) -> Stage:
        return self.stages[min(self.stage, len(self.stages) - 1)]

    @property
    def rollback_seconds(self) -> float | None:
        if self.first_bad_at is None or self.traffic_restored_at is None:
            return None
        return round(self.traffic_restored_at - self.first_bad_at, 3)

    def summary(self) -> str:
        return (
            f"release {self.id} of {self.service} {self.stable.label} → {self.candidate.label} "
            f"({self.strategy}): {self.phase.value}, stage {self.stage + 1}/{len(self.stages)} "
            f"{self.current.name}"
        )
