"""Kubernetes HPA's algorithm for one service in one site, pure: time is passed in.

Each decision runs the steps of the HPA controller (``reconcileAutoscaler`` and its
``normalizeDesiredReplicasWithBehaviors``) in order:

1. **Bounds first.** A count above ``max`` or below ``min`` goes straight to the bound,
   whatever the metrics say (HPA does the same before it looks at any metric).
2. **One recommendation per metric**, ``ceil(ready * value / target)``, where the ratio
   ``value / target`` within ``tolerance`` of 1 recommends the current count (no
   change). The metrics, as the caller measures them over ``window``:

   - ``rps``: requests per second to the service in this site (all of them, summed);
     the per-instance value is ``rps / ready``, so the recommendation is
     ``ceil(rps / target)``, the instances the load needs;
   - ``cpu``: average CPU cores used per ready instance (1.0 = one core busy);
   - ``p95``: the 95th percentile of request latency in seconds, through the gateway.
     Latency is not proportional to the count the way load is; like an HPA ``Object``
     metric with a ``Value`` target, it is still scaled by its ratio.

   A metric that is missing (``None``, NaN, negative) or has no target is ignored.
   **Several metrics: the largest recommendation wins. None at all: no change.**
3. **Instances that are not ready** (starting, or failing their health check) carry no
   traffic. As HPA does with unready pods: scaling up, they count as idle, so the ratio
   is taken over the *current* count (``ratio * ready / current``) and new instances
   that have not started serving yet do not trigger another step up; scaling down, they
   are left out and the recommendation comes from the ready ones. With no ready
   instance, only ``rps`` can recommend (upwards: the load over ``target``), so a
   service can grow from zero or from instances that all failed; nothing scales down.
   ``ready`` above ``current`` (instances being stopped) counts as ``current``.
4. **Stabilization.** Every raw recommendation (the metrics' maximum, before bounds) is
   kept with its time. Upwards the decision may rise at most to the *lowest*
   recommendation of the scale-up window (0 s by default: at once); downwards it may fall
   at most to the *highest* recommendation of the scale-down window (300 s by default).
   A recommendation exactly ``stabilization`` seconds old has left the window. When the
   scale-down window holds no recommendation (a new autoscaler, or metrics that were
   missing for a whole window) it is seeded with the current count, as HPA does when its
   controller starts: a restart never scales down at once.
5. **Rate limits**, per direction: within any ``period``, at most ``max_instances`` or
   ``max_percent`` of the count at the start of the period may be added (or removed),
   whichever allows the larger change (HPA's ``selectPolicy: Max``). The count at the
   start of the period is the current count minus what was added, plus what was removed,
   in the period (an event exactly ``period`` old no longer counts). Percent up rounds
   up, percent down rounds down, as in HPA. Then ``min`` and ``max``.

The result is a :class:`Decision` with every figure and a sentence saying why. The
state (recommendations, scale events, time of the last decision) goes to and from JSON
so a restarted controller keeps its windows. Times are seconds of the wall clock
(``clock.wall()``): they are persisted, and a monotonic clock restarts with the machine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from alwayson.spec.observing import Autoscale, ScalePolicy

MetricName = Literal["rps", "cpu", "p95"]
METRICS: tuple[MetricName, ...] = ("rps", "cpu", "p95")


# Float noise: 0.3 / 3 is not 0.1, and a metric exactly at its target must not move.
_NOISE = 1e-9


def _ceil(value: float) -> int:
    """``ceil`` that forgives float noise: 10 * 1.1 is 11, not 12."""
    return math.ceil(round(value, 9))


def _num(value: float) -> str:
    return f"{value:.3g}"


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _describe(name: str, value: float, target: float) -> str:
    if name == "rps":
        return f"rps {_num(value)}/s per instance vs target {_num(target)}"
    if name == "cpu":
        return f"cpu {_num(value)} cores per instance vs target {_num(target)}"
    return f"p95 {_num(value * 1000)}ms vs target {_num(target * 1000)}ms"


@dataclass(frozen=True)
class MetricFigure:
    """What one metric said.

    ``measured`` is the number given to :meth:`Autoscaler.decide`; ``value`` the per
    instance figure compared with ``target`` (``rps / ready`` for rps, the same as
    ``measured`` otherwise; None without a ready instance); ``recommendation`` is None
    when the metric was ignored, and ``note`` says why or how it was judged.
    """

    name: str
    measured: float | None
    value: float | None
    target: float
    ratio: float | None
    recommendation: int | None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": _finite_or_none(self.measured),
            "value": self.value,
            "target": self.target,
            "ratio": self.ratio,
            "recommendation": self.recommendation,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MetricFigure:
        return cls(
            name=str(data["name"]),
            measured=data.get("measured"),
            value=data.get("value"),
            target=float(data["target"]),
            ratio=data.get("ratio"),
            recommendation=data.get("recommendation"),
            note=str(data.get("note", "")),
        )

    def sentence(self) -> str:
        if self.value is None or self.ratio is None:
            return f"{self.name}: {self.note}"
        return f"{_describe(self.name, self.value, self.target)} (ratio {_num(self.ratio)})"


@dataclass(frozen=True)
class Decision:
    """One decision of the autoscaler of ``service`` in ``site`` at time ``at``.

    ``raw`` is the largest metric recommendation (``current`` when none was usable),
    ``stabilized`` the count the stabilization windows allow, ``desired`` the count after
    the rate limits and ``min``/``max``: what the service should run now.
    """

    service: str
    site: str
    at: float
    current: int
    ready: int
    desired: int
    raw: int
    stabilized: int
    metrics: tuple[MetricFigure, ...]
    reason: str
    limit: str = ""

    @property
    def changed(self) -> bool:
        return self.desired != self.current

    @property
    def rate_limited(self) -> int:
        """The count after the rate limits and bounds (the same as ``desired``)."""
        return self.desired

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "site": self.site,
            "at": self.at,
            "current": self.current,
            "ready": self.ready,
            "desired": self.desired,
            "raw": self.raw,
            "stabilized": self.stabilized,
            "rate_limited": self.desired,
            "changed": self.changed,
            "metrics": [m.to_json() for m in self.metrics],
            "reason": self.reason,
            "limit": self.limit,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Decision:
        return cls(
            service=str(data.get("service", "")),
            site=str(data.get("site", "")),
            at=float(data["at"]),
            current=int(data["current"]),
            ready=int(data["ready"]),
            desired=int(data["desired"]),
            raw=int(data["raw"]),
            stabilized=int(data["stabilized"]),
            metrics=tuple(MetricFigure.from_json(m) for m in data.get("metrics", [])),
            reason=str(data["reason"]),
            limit=str(data.get("limit", "")),
        )


@dataclass
class AutoscalerState:
    """What an autoscaler remembers between decisions: ``(time, count)`` pairs."""

    recommendations: list[tuple[float, int]] = field(default_factory=list)
    scale_ups: list[tuple[float, int]] = field(default_factory=list)
    scale_downs: list[tuple[float, int]] = field(default_factory=list)
    last_decision_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "recommendations": [[t, n] for t, n in self.recommendations],
            "scale_ups": [[t, n] for t, n in self.scale_ups],
            "scale_downs": [[t, n] for t, n in self.scale_downs],
            "last_decision_at": self.last_decision_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AutoscalerState:
        def pairs(key: str) -> list[tuple[float, int]]:
            return [(float(t), int(n)) for t, n in data.get(key, [])]

        last = data.get("last_decision_at")
        return cls(
            recommendations=pairs("recommendations"),
            scale_ups=pairs("scale_ups"),
            scale_downs=pairs("scale_downs"),
            last_decision_at=None if last is None else float(last),
        )


def _metric_figure(
    name: MetricName,
    measured: float | None,
    target: float,
    current: int,
    ready: int,
    tolerance: float,
) -> MetricFigure:
    if measured is None or not math.isfinite(measured) or measured < 0:
        return MetricFigure(name, measured, None, target, None, None, "missing")
    if ready == 0:
        # Nothing ready to measure per instance. Only the load itself can say how many
        # are needed, and only upwards: a service scales from zero this way.
        if name != "rps" or measured == 0:
            return MetricFigure(
                name, measured, None, target, None, current, "no ready instance: hold"
            )
        spread = math.inf if current == 0 else measured / (target * current)
        if spread <= 1 + tolerance:
            return MetricFigure(
                name, measured, None, target, None, current, "no ready instance: hold"
            )
        return MetricFigure(
            name,
            measured,
            None,
            target,
            None,
            _ceil(measured / target),
            "no ready instance: the load over the target",
        )
    value = measured / ready if name == "rps" else measured
    ratio = value / target
    needed = _ceil(measured / target) if name == "rps" else _ceil(ratio * ready)
    if ratio > 1 and ready < current:
        spread = ratio * ready / current
        if spread <= 1 + tolerance + _NOISE:
            note = f"within tolerance counting {current - ready} unready as idle"
            return MetricFigure(name, measured, value, target, ratio, current, note)
        note = f"{current - ready} unready counted as idle"
        return MetricFigure(name, measured, value, target, ratio, max(needed, current), note)
    if abs(1 - ratio) <= tolerance + _NOISE:
        return MetricFigure(name, measured, value, target, ratio, current, "within tolerance")
    # Never against the ratio (HPA's last guard): above target never recommends fewer.
    recommendation = max(needed, current) if ratio > 1 else min(needed, current)
    note = "" if ready == current else f"{current - ready} unready left out"
    return MetricFigure(name, measured, value, target, ratio, recommendation, note)


def _change_in_period(events: Sequence[tuple[float, int]], now: float, period: float) -> int:
    return sum(n for t, n in events if t > now - period)


class Autoscaler:
    """HPA for one service in one site. Call :meth:`decide` every ``interval`` seconds
    (see :meth:`due`) and do what the returned decision says."""

    def __init__(
        self,
        settings: Autoscale,
        service: str = "",
        site: str = "",
        state: AutoscalerState | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.site = site
        self.state = state if state is not None else AutoscalerState()

    def to_json(self) -> dict[str, Any]:
        return {"service": self.service, "site": self.site, "state": self.state.to_json()}

    @classmethod
    def from_json(cls, settings: Autoscale, data: Mapping[str, Any]) -> Autoscaler:
        return cls(
            settings,
            service=str(data.get("service", "")),
            site=str(data.get("site", "")),
            state=AutoscalerState.from_json(data.get("state", {})),
        )

    def due(self, now: float) -> bool:
        """True when ``interval`` has passed since the last decision (or there was none)."""
        last = self.state.last_decision_at
        return last is None or now - last >= self.settings.interval or now < last

    def decide(
        self, current: int, ready: int, metrics: Mapping[str, float | None], now: float
    ) -> Decision:
        """Decide how many instances to run; ``metrics`` by name: rps, cpu, p95."""
        unknown = set(metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown autoscaling metrics: {', '.join(sorted(unknown))}")
        if current < 0 or ready < 0:
            raise ValueError("current and ready must not be negative")
        ready = min(ready, current)
        s = self.settings
        figures = tuple(
            _metric_figure(name, metrics.get(name), target, current, ready, s.tolerance)
            for name in METRICS
            if (target := getattr(s.targets, name)) is not None
        )
        self.state.last_decision_at = now
        self._forget(now)

        if current > s.max or current < s.min:
            bound = s.max if current > s.max else s.min
            word = "above max" if current > s.max else "below min"
            reason = f"scale {'down' if bound < current else 'up'} {current} → {bound}: "
            reason += f"{current} is {word} ({bound})"
            return self._record(now, current, ready, bound, current, current, figures, reason, "")

        usable = [f for f in figures if f.recommendation is not None]
        if not usable:
            missing = ", ".join(f.name for f in figures) or "no target"
            reason = f"hold at {current}: no metric available ({missing} missing)"
            return self._record(now, current, ready, current, current, current, figures, reason, "")

        driver = max(usable, key=lambda f: f.recommendation or 0)
        raw = driver.recommendation if driver.recommendation is not None else current
        down_cutoff = now - s.scale_down.stabilization
        seeded = any(t > down_cutoff for t, _ in self.state.recommendations)
        if s.scale_down.stabilization > 0 and not seeded:
            self.state.recommendations.append((now, current))
        stabilized = self._stabilize(now, current, raw)
        self.state.recommendations.append((now, raw))
        desired, limit = self._limit(now, current, stabilized)

        why = driver.sentence()
        if driver.note and driver.value is not None:
            why += f", {driver.note}"
        if desired == current:
            reason = f"hold at {current}: {why}"
            if stabilized != raw:
                window = s.scale_down if raw < current else s.scale_up
                reason += (
                    f"; {'down' if raw < current else 'up'} to {raw} waits for the "
                    f"{_num(window.stabilization)}s window (stabilized at {stabilized})"
                )
        else:
            word = "up" if desired > current else "down"
            reason = f"scale {word} {current} → {desired}: {why}"
            if stabilized != raw:
                reason += f"; recommendation {raw} stabilized to {stabilized}"
        if limit:
            reason += f"; {limit}"
        return self._record(now, current, ready, desired, raw, stabilized, figures, reason, limit)

    def _record(
        self,
        now: float,
        current: int,
        ready: int,
        desired: int,
        raw: int,
        stabilized: int,
        figures: tuple[MetricFigure, ...],
        reason: str,
        limit: str,
    ) -> Decision:
        if desired > current:
            self.state.scale_ups.append((now, desired - current))
        elif desired < current:
            self.state.scale_downs.append((now, current - desired))
        return Decision(
            service=self.service,
            site=self.site,
            at=now,
            current=current,
            ready=ready,
            desired=desired,
            raw=raw,
            stabilized=stabilized,
            metrics=figures,
            reason=reason,
            limit=limit,
        )

    def _forget(self, now: float) -> None:
        s = self.settings
        keep = max(s.scale_up.stabilization, s.scale_down.stabilization)
        self.state.recommendations = [r for r in self.state.recommendations if r[0] > now - keep]
        period = max(s.scale_up.period, s.scale_down.period)
        self.state.scale_ups = [e for e in self.state.scale_ups if e[0] > now - period]
        self.state.scale_downs = [e for e in self.state.scale_downs if e[0] > now - period]

    def _stabilize(self, now: float, current: int, raw: int) -> int:
        up_cutoff = now - self.settings.scale_up.stabilization
        down_cutoff = now - self.settings.scale_down.stabilization
        lowest = min([raw, *(n for t, n in self.state.recommendations if t > up_cutoff)])
        highest = max([raw, *(n for t, n in self.state.recommendations if t > down_cutoff)])
        return min(max(current, lowest), highest)

    def _start_of_period(self, now: float, current: int, policy: ScalePolicy) -> int:
        added = _change_in_period(self.state.scale_ups, now, policy.period)
        removed = _change_in_period(self.state.scale_downs, now, policy.period)
        return current - added + removed

    def _limit(self, now: float, current: int, stabilized: int) -> tuple[int, str]:
        s = self.settings
        if stabilized > current:
            policy = s.scale_up
            start = self._start_of_period(now, current, policy)
            by_count = start + policy.max_instances
            by_percent = _ceil(start * (1 + policy.max_percent / 100))
            ceiling = max(max(by_count, by_percent), current)
            if ceiling < s.max and stabilized > ceiling:
                return ceiling, self._rate_text("up", policy, ceiling)
            if stabilized > s.max:
                return s.max, f"capped at max {s.max}"
        elif stabilized < current:
            policy = s.scale_down
            start = self._start_of_period(now, current, policy)
            by_count = start - policy.max_instances
            by_percent = max(0, int(start * (1 - policy.max_percent / 100)))
            floor = min(min(by_count, by_percent), current)
            if floor > s.min and stabilized < floor:
                return floor, self._rate_text("down", policy, floor)
            if stabilized < s.min:
                return s.min, f"held at min {s.min}"
        return stabilized, ""

    @staticmethod
    def _rate_text(word: str, policy: ScalePolicy, count: int) -> str:
        return (
            f"limited to {count} by the scale-{word} rate ({policy.max_instances} instances "
            f"or {_num(policy.max_percent)}% per {_num(policy.period)}s)"
        )
