"""The spec's monitoring parts: metrics, alert rules, notifications and autoscaling.

Kept apart from ``models`` so the observe and scaling layers read their settings from
one small module. ``models`` re-exports them.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import promql_parser
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alwayson.spec.types import Duration
from alwayson.util.addresses import split_hostport

RULE_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")
SET_OPS = ("and", "or", "unless")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Retention(_Strict):
    """How long the embedded time-series store keeps what it scraped."""

    raw: Duration = Field(default=6 * 3600.0, description="Every scraped sample, this long.")
    rollup_step: Duration = Field(
        default=60.0, description="Older samples are rolled up into buckets this wide."
    )
    rollup: Duration = Field(
        default=14 * 86400.0, description="Rolled-up buckets (min, max, sum, count, last)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> Retention:
        if self.rollup_step <= 0:
            raise ValueError("rollup_step must be more than 0")
        if self.rollup < self.raw:
            raise ValueError("rollup must be at least as long as raw")
        return self


class Metrics(_Strict):
    """What the controller scrapes, how often, and how long it keeps it."""

    scrape_interval: Duration = Field(default=5.0, description="Time between two scrapes.")
    scrape_timeout: Duration = Field(default=2.0, description="A target slower than this is down.")
    path: str = Field(default="/metrics", description="Instances' metrics path.")
    retention: Retention = Field(default_factory=Retention)

    @model_validator(mode="after")
    def _timeout_fits(self) -> Metrics:
        if self.scrape_interval < 0.1:
            raise ValueError("scrape_interval must be at least 100ms")
        if self.scrape_timeout > self.scrape_interval:
            raise ValueError("scrape_timeout must not exceed scrape_interval")
        return self


Severity = Literal["critical", "warning", "info"]


class AlertRule(_Strict):
    """One alert: a PromQL query compared with a number, true for ``for`` before firing."""

    name: Annotated[str, Field(pattern=RULE_NAME)] = Field(
        description="The alertname label, e.g. HighErrorRate."
    )
    expr: str = Field(
        min_length=1,
        description="PromQL ending in a comparison, e.g. "
        "'sum by (service) (rate(alwayson_gateway_requests_total{code=\"5xx\"}[5m])) > 1'. "
        "Each result series is one alert.",
    )
    for_: Duration = Field(
        default=0.0, alias="for", description="How long it must hold before it fires."
    )
    severity: Severity = "warning"
    summary: str = Field(default="", description="One line; {{ $labels.x }} and {{ $value }}.")
    labels: dict[str, str] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not LABEL_NAME.fullmatch(key) or key.startswith("__"):
                raise ValueError(f"{key!r} is not a valid label name")
        return value


# The built-in rules' names (alwayson.observe.rules defines them; a unit test keeps the
# two lists equal), so the spec can refuse a misspelt one in `builtin` or `disable`.
BUILTIN_RULE_NAMES = (
    "InstanceDown",
    "SiteDown",
    "HighErrorRate",
    "LatencyAboveObjective",
    "ErrorBudgetBurnFast",
    "ErrorBudgetBurnSlow",
    "DiskNearlyFull",
    "ReplicationLagHigh",
    "RPOZeroLost",
    "BackupTooOld",
    "BackupVerifyFailing",
)


class Alerts(_Strict):
    """Alert rules, grouping and repetition."""

    builtin: bool | list[str] = Field(
        default=True,
        description="The built-in rules: true (all), false (none), or the names to keep.",
    )
    disable: list[str] = Field(default_factory=list, description="Built-in rules to turn off.")
    rules: list[AlertRule] = Field(default_factory=list)
    evaluation_interval: Duration = Field(default=5.0, description="Time between evaluations.")
    group_by: list[str] = Field(
        default_factory=lambda: ["alertname", "site"],
        description="Alerts with equal values of these labels go out in one notification.",
    )
    group_wait: Duration = Field(default=0.0, description="Wait this long to batch a new group.")
    group_interval: Duration = Field(
        default=30.0, description="Wait this long before notifying a changed group again."
    )
    repeat_interval: Duration = Field(
        default=4 * 3600.0, description="Notify a still-firing group again after this."
    )
    latency_objective: Duration = Field(
        default=0.5, description="p95 latency above this fires LatencyAboveObjective."
    )
    availability_objective: float = Field(
        default=0.999, gt=0, lt=1, description="SLO of the burn-rate alerts (e.g. 0.999)."
    )
    error_rate: float = Field(
        default=0.05, gt=0, lt=1, description="Share of 5xx answers that fires HighErrorRate."
    )
    disk_free_ratio: float = Field(
        default=0.1, gt=0, lt=1, description="Free disk share below which DiskNearlyFull fires."
    )
    backup_max_age: Duration = Field(
        default=26 * 3600.0, description="No verified backup younger than this fires BackupTooOld."
    )

    @model_validator(mode="after")
    def _known_builtins(self) -> Alerts:
        named = [*(self.builtin if isinstance(self.builtin, list) else []), *self.disable]
        unknown = sorted({n for n in named if n not in BUILTIN_RULE_NAMES})
        if unknown:
            raise ValueError(
                f"unknown built-in rule(s) {', '.join(unknown)}; the built-in rules are "
                f"{', '.join(BUILTIN_RULE_NAMES)}"
            )
        return self


class Webhook(_Strict):
    url: str = Field(description="Alertmanager webhook (payload version 4).")
    timeout: Duration = 5.0


class Email(_Strict):
    to: str = Field(min_length=3)
    smarthost: str = Field(description="SMTP server host:port.")
    sender: str = Field(default="alwayson@localhost", alias="from")
    starttls: bool = False
    timeout: Duration = 10.0

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("smarthost")
    @classmethod
    def _hostport(cls, value: str) -> str:
        split_hostport(value)
        return value


class Slack(_Strict):
    url: str = Field(description="Slack-compatible incoming webhook.")
    channel: str | None = None
    timeout: Duration = 5.0


class Receiver(_Strict):
    """Where alerts go. Exactly one of webhook, email, slack."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    webhook: Webhook | None = None
    email: Email | None = None
    slack: Slack | None = None
    send_resolved: bool = True
    max_attempts: int = Field(default=6, ge=1, le=50, description="Delivery tries, with backoff.")

    @model_validator(mode="after")
    def _one_kind(self) -> Receiver:
        kinds = [k for k in ("webhook", "email", "slack") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of webhook, email, slack")
        return self

    @property
    def kind(self) -> str:
        return "webhook" if self.webhook else "email" if self.email else "slack"


class ScalePolicy(_Strict):
    """How fast one direction may go (HPA's behavior)."""

    stabilization: Duration = Field(
        description="Act on the most conservative recommendation of this window."
    )
    max_instances: int = Field(default=4, ge=1, description="At most this many added/removed...")
    max_percent: float = Field(default=100.0, gt=0, description="...or this % of current...")
    period: Duration = Field(default=15.0, description="...per this period (the larger wins).")


class Targets(_Strict):
    """Per-instance targets; the autoscaler keeps each metric near its target."""

    rps: float | None = Field(default=None, gt=0, description="Requests per second per instance.")
    cpu: float | None = Field(
        default=None, gt=0, description="CPU per instance, 1.0 = one core busy."
    )
    p95: Duration | None = Field(default=None, description="p95 latency through the gateway.")

    @model_validator(mode="after")
    def _one(self) -> Targets:
        if self.rps is None and self.cpu is None and self.p95 is None:
            raise ValueError("give at least one target: rps, cpu or p95")
        return self


class Autoscale(_Strict):
    """Scale a service per site between min and max from live metrics."""

    min: int = Field(default=1, ge=0)
    max: int = Field(ge=1)
    targets: Targets
    tolerance: float = Field(default=0.1, ge=0, lt=1, description="Ignore ratios within this.")
    window: Duration = Field(default=15.0, description="Metrics are averaged over this.")
    interval: Duration = Field(default=5.0, description="Time between two decisions.")
    scale_up: ScalePolicy = Field(default_factory=lambda: ScalePolicy(stabilization=0.0))
    scale_down: ScalePolicy = Field(
        default_factory=lambda: ScalePolicy(stabilization=300.0, max_percent=100.0)
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscale:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is more than max ({self.max})")
        return self


def _parsed(expr: str) -> tuple[promql_parser.Expr | None, str | None]:
    try:
        return promql_parser.parse(expr), None
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "syntax error"
        return None, f"not valid PromQL: {first}"


def rule_expr_problem(expr: str) -> str | None:
    """Why ``expr`` is not PromQL ending in a comparison (None: it is)."""
    tree, why = _parsed(expr)
    if tree is None:
        return why
    op = str(getattr(tree, "op", ""))
    if not isinstance(tree, promql_parser.BinaryExpr) or op not in (*COMPARISONS, *SET_OPS):
        return "must end in a comparison, e.g. '... > 0.05' (an alert per series it keeps)"
    return None


def check_expr_problem(expr: str) -> str | None:
    """Why ``expr`` is not a release check (None: it is).

    A check is PromQL ending in a comparison without ``bool``, read as an alert rule reads
    it; the check holds when the comparison keeps every series of its left-hand side.
    """
    tree, why = _parsed(expr)
    if tree is None:
        return why
    op = str(getattr(tree, "op", ""))
    if not isinstance(tree, promql_parser.BinaryExpr) or op not in COMPARISONS:
        return (
            "must end in a comparison, e.g. 'rate(errors_total[1m]) < 0.5' (it holds when "
            "every series compares true)"
        )
    if tree.modifier is not None and tree.modifier.return_bool:
        return "a comparison with bool keeps every series, so the check could never fail"
    return None
