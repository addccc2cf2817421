"""The spec's ``drills:`` section: objectives drills are judged on, and scheduled drills."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from alwayson.spec.scenarios import SCENARIO_NAMES as SCENARIO_NAMES
from alwayson.spec.types import Duration, Name


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_scenario(value: str) -> str:
    if value not in SCENARIO_NAMES:
        raise ValueError(
            f"unknown drill scenario {value!r} (scenarios: {', '.join(SCENARIO_NAMES)})"
        )
    return value


class DrillSchedule(Strict):
    scenario: str
    cron: str = Field(description="Cron expression (controller's local time), e.g. '0 3 * * 1'.")
    site: Name | None = Field(default=None, description="Default: the scenario's default site.")
    rate: float | None = Field(default=None, gt=0, le=10_000, description="Requests per second.")
    duration: Duration | None = Field(default=None, description="How long the fault is held.")

    @field_validator("scenario")
    @classmethod
    def _scenario(cls, value: str) -> str:
        return check_scenario(value)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (like '0 3 * * 1')")
        return value


class Drills(Strict):
    rto: Duration = Field(
        default=10.0,
        description="RTO objective for drills of a platform without databases (a database's "
        "own objectives.rto applies to it).",
    )
    rate: float = Field(
        default=20.0, gt=0, le=10_000, description="Default drill load, per second."
    )
    journey: str = Field(
        default="auto",
        description="Load of a drill: 'bank-registration', a path like '/healthz' (GET), "
        "'file.py:function', or 'auto' (the bank's registration when a service serves it, "
        "else GET /).",
    )
    settle: Duration = Field(
        default=5.0, description="Load kept on after the platform is whole again, to show it holds."
    )
    history: int = Field(default=200, ge=1, le=100_000, description="Drill results kept.")
    schedules: list[DrillSchedule] = Field(default_factory=list)
