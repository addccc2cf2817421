"""Judging a candidate against the stable version from what the gateways saw of both.

:func:`analyse` compares the :class:`~alwayson.release.figures.VersionFigures` of one
window and answers ``pass``, ``fail`` or ``inconclusive`` with sentences that carry the
figures, e.g. ``candidate success rate 82.0% (41/50) is below 99.0% (stable 100.0%)``.

The rules, in order:

1. Fewer than ``min_requests`` candidate requests: inconclusive; the figures are noise.
2. The candidate's success rate (answers that are not 5xx) must not be below
   ``min(min_success_rate, stable success rate - success_tolerance)``: a candidate is not
   failed for being as bad as a stable that is having a bad day. The stable counts only
   when it had ``min_requests`` itself; otherwise ``min_success_rate`` alone.
3. The candidate's p99 must not exceed the stable's p99 + ``max_p99_increase`` (again
   only with ``min_requests`` stable requests), nor ``max_p99`` when that is set.
4. Every failing check (see :mod:`alwayson.release.checks`) fails the analysis. Checks
   are absolute statements about the candidate, so they fail it even when rule 1 leaves
   the comparison inconclusive.

Every failing rule adds its reason. Pure: figures in, judgement out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from alwayson.release.checks import CheckResult
from alwayson.release.figures import VersionFigures

Outcome = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class AnalysisSettings:
    """Thresholds of one analysis; durations in seconds, rates as fractions (0.99)."""

    min_requests: int = 20
    min_success_rate: float = 0.99
    success_tolerance: float = 0.01
    max_p99_increase: float = 0.1
    max_p99: float | None = None

    def __post_init__(self) -> None:
        if self.min_requests < 0:
            raise ValueError(f"min_requests must be 0 or more, not {self.min_requests}")
        if not 0.0 <= self.min_success_rate <= 1.0:
            raise ValueError(
                f"min_success_rate must be between 0 and 1, not {self.min_success_rate}"
            )
        if not 0.0 <= self.success_tolerance <= 1.0:
            raise ValueError(
                f"success_tolerance must be between 0 and 1, not {self.success_tolerance}"
            )
        if not (self.max_p99_increase >= 0.0 and math.isfinite(self.max_p99_increase)):
            raise ValueError(
                f"max_p99_increase must be a duration of 0s or more, not {self.max_p99_increase}"
            )
        if self.max_p99 is not None and not (self.max_p99 > 0.0 and math.isfinite(self.max_p99)):
            raise ValueError(f"max_p99 must be a positive duration, not {self.max_p99}")


@dataclass(frozen=True)
class Analysis:
    """The judgement of one window: ``reasons`` say why it is not a pass.

    ``figures`` is flat and JSON-ready: ``candidate_requests``, ``candidate_errors``,
    ``candidate_success_rate`` (a fraction, or None), ``candidate_p99_ms`` (or None), the
    same four for ``stable_``, and ``checks`` (each ``{"check", "ok", "value"}``) when
    checks were given.
    """

    outcome: Outcome
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One sentence for a verdict or a log line."""
        if self.reasons:
            return f"{self.outcome}: {'; '.join(self.reasons)}"
        return (
            f"{self.outcome}: candidate {_version_text(self.figures, 'candidate')}; "
            f"stable {_version_text(self.figures, 'stable')}"
        )


def percent(rate: float) -> str:
    """``0.82`` → ``82.0%``; never rounds a rate below 1 up to ``100.0%``."""
    for decimals in (1, 2, 3, 4):
        text = f"{rate * 100:.{decimals}f}"
        if rate >= 1.0 or float(text) < 100.0:
            return text + "%"
    return f"{rate * 100:.4f}%"


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def analyse(
    candidate: VersionFigures,
    stable: VersionFigures,
    settings: AnalysisSettings,
    checks: Sequence[CheckResult | tuple[bool, str]] = (),
) -> Analysis:
    """Judge ``candidate`` against ``stable`` (both over the same window).

    ``checks`` are evaluated checks: :class:`CheckResult`, or ``(ok, text)`` pairs.
    """
    figures = _figures(candidate, stable, checks)
    reasons: list[str] = []
    failed = False
    if candidate.requests < settings.min_requests:
        reasons.append(
            f"candidate received {candidate.requests} requests, "
            f"fewer than min_requests {settings.min_requests}"
        )
    else:
        comparable = stable.requests >= settings.min_requests
        for reason in (
            _success_reason(candidate, stable, settings, comparable),
            *_latency_reasons(candidate, stable, settings, comparable),
        ):
            if reason:
                reasons.append(reason)
                failed = True
    for check in checks:
        ok, text, value = _check_parts(check)
        if not ok:
            shown = "" if value is None else f" (value {value:.4g})"
            reasons.append(f"check failed: {text}{shown}")
            failed = True
    if failed:
        return Analysis("fail", reasons, figures)
    if candidate.requests < settings.min_requests:
        return Analysis("inconclusive", reasons, figures)
    return Analysis("pass", reasons, figures)


def _success_reason(
    candidate: VersionFigures,
    stable: VersionFigures,
    settings: AnalysisSettings,
    comparable: bool,
) -> str | None:
    rate = candidate.success_rate
    stable_rate = stable.success_rate if comparable else None
    if rate is None:
        return None
    threshold = settings.min_success_rate
    if stable_rate is not None:
        threshold = min(threshold, stable_rate - settings.success_tolerance)
    if rate >= threshold:
        return None
    good = candidate.requests - candidate.errors
    if stable_rate is not None:
        context = f"stable {percent(stable_rate)}"
    else:
        context = f"stable had {stable.requests} requests, too few to compare"
    return (
        f"candidate success rate {percent(rate)} ({good}/{candidate.requests}) "
        f"is below {percent(max(threshold, 0.0))} ({context})"
    )


def _latency_reasons(
    candidate: VersionFigures,
    stable: VersionFigures,
    settings: AnalysisSettings,
    comparable: bool,
) -> list[str]:
    p99 = candidate.p99
    if p99 is None:
        return []
    reasons = []
    stable_p99 = stable.p99 if comparable else None
    if stable_p99 is not None and p99 > stable_p99 + settings.max_p99_increase:
        reasons.append(
            f"candidate p99 {milliseconds(p99)} is more than "
            f"{milliseconds(settings.max_p99_increase)} above the stable's "
            f"{milliseconds(stable_p99)}"
        )
    if settings.max_p99 is not None and p99 > settings.max_p99:
        reasons.append(
            f"candidate p99 {milliseconds(p99)} is above max_p99 {milliseconds(settings.max_p99)}"
        )
    return reasons


def _check_parts(check: CheckResult | tuple[bool, str]) -> tuple[bool, str, float | None]:
    if isinstance(check, CheckResult):
        return check.ok, check.text, check.value
    ok, text = check
    return ok, text, None


def _figures(
    candidate: VersionFigures,
    stable: VersionFigures,
    checks: Sequence[CheckResult | tuple[bool, str]],
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name, version in (("candidate", candidate), ("stable", stable)):
        rate = version.success_rate
        p99 = version.p99
        figures[f"{name}_requests"] = version.requests
        figures[f"{name}_errors"] = version.errors
        figures[f"{name}_success_rate"] = None if rate is None else round(rate, 6)
        figures[f"{name}_p99_ms"] = None if p99 is None else round(p99 * 1000, 3)
    if checks:
        figures["checks"] = [
            check.to_json()
            if isinstance(check, CheckResult)
            else {"check": check[1], "ok": check[0], "value": None}
            for check in checks
        ]
    return figures


def _version_text(figures: dict[str, Any], name: str) -> str:
    requests = figures.get(f"{name}_requests", 0)
    rate = figures.get(f"{name}_success_rate")
    p99 = figures.get(f"{name}_p99_ms")
    shown = "no requests" if rate is None else f"{percent(rate)} of {requests}"
    return shown if p99 is None else f"{shown}, p99 {p99:.1f} ms"
