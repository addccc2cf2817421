"""Every request's outcome during a drill, and the figures taken from them (pure).

Times are wall-clock seconds. A journey counts from the moment it was meant to start (the
open model's schedule), which keeps sending whatever the platform does, so a stalled
platform shows as latency and failures, not as fewer requests.

- **RTO**: from the fault until requests succeed again and keep succeeding. When requests
  failed after the fault, it ends at the first success after the last failure of the
  window; when none failed, at the first success of a request started after the fault
  (a platform that only stalls still has an RTO: how long a new client waited).
- **Longest gap**: the longest time without any successful completion that ends after the
  fault; a gap already open at the fault counts from the last success before it.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Outcome:
    start: float
    done: float
    ok: bool
    error: str = ""


class OutcomeLog:
    """Outcomes in completion order (appends only; one event loop)."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self._done: list[float] = []
        self.dropped: list[float] = []
        self.acknowledged: dict[str, dict[str, Any]] = {}  # write id -> its answer
        self.attempted: set[str] = set()  # every write key a client sent

    def add(self, start: float, done: float, ok: bool, error: str = "") -> None:
        self.record(Outcome(start, done, ok, error))

    def record(self, outcome: Outcome) -> None:
        done = outcome.done
        if self._done and done < self._done[-1]:
            index = bisect.bisect(self._done, done)
            self._done.insert(index, done)
            self.outcomes.insert(index, outcome)
        else:
            self._done.append(done)
            self.outcomes.append(outcome)

    def between(self, start: float, end: float) -> list[Outcome]:
        lo = bisect.bisect_left(self._done, start)
        hi = bisect.bisect_left(self._done, end)
        return self.outcomes[lo:hi]

    def counts(self, start: float = -math.inf, end: float = math.inf) -> dict[str, int]:
        window = self.between(start, end)
        ok = sum(1 for o in window if o.ok)
        return {"requests": len(window), "ok": ok, "failed": len(window) - ok}

    def errors(self, start: float = -math.inf, end: float = math.inf) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.between(start, end):
            if not o.ok:
                out[o.error or "error"] = out.get(o.error or "error", 0) + 1
        return out


def recovered_at(log: OutcomeLog, fault: float, end: float) -> float | None:
    """When requests succeeded again and kept succeeding, in ``[fault, end)``; None when
    they never did (or nothing ran)."""
    window = log.between(fault, end)
    last_failure = max((i for i, o in enumerate(window) if not o.ok), default=None)
    if last_failure is None:
        return next((o.done for o in window if o.ok and o.start >= fault), None)
    return next((o.done for o in window[last_failure + 1 :] if o.ok), None)


def rto(log: OutcomeLog, fault: float, end: float) -> float | None:
    at = recovered_at(log, fault, end)
    return None if at is None else max(at - fault, 0.0)


def longest_gap(log: OutcomeLog, start: float, end: float) -> tuple[float, float]:
    """(length, where it began): the longest time without a success that ends inside
    ``[start, end)``; a gap already open at ``start`` counts from the success before it."""
    index = bisect.bisect_left(log._done, start)
    before = next((o.done for o in reversed(log.outcomes[:index]) if o.ok), start)
    best, began, previous = 0.0, before, before
    for o in log.between(start, end):
        if o.ok:
            if o.done - previous > best:
                best, began = o.done - previous, previous
            previous = o.done
    if end - previous > best and math.isfinite(end):
        best, began = end - previous, previous
    return best, began


def series(log: OutcomeLog, origin: float, end: float, step: float = 0.5) -> list[dict[str, Any]]:
    """Per ``step`` seconds from ``origin``: completions, failures, p50/p99 latency (ms)."""
    bins = max(math.ceil((end - origin) / step), 0)
    rows: list[list[float]] = [[] for _ in range(bins)]
    failed = [0] * bins
    for o in log.between(origin, end):
        index = min(int((o.done - origin) / step), bins - 1)
        rows[index].append(o.done - o.start)
        if not o.ok:
            failed[index] += 1
    out = []
    for index, latencies in enumerate(rows):
        latencies.sort()
        out.append(
            {
                "t": round(index * step, 3),
                "requests": len(latencies),
                "failed": failed[index],
                "success_rate": (1 - failed[index] / len(latencies)) if latencies else None,
                "p50_ms": _quantile(latencies, 0.50),
                "p99_ms": _quantile(latencies, 0.99),
            }
        )
    return out


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(math.ceil(q * len(sorted_values)) - 1, len(sorted_values) - 1)
    return round(sorted_values[max(index, 0)] * 1000, 3)


def first_after(moments: list[float | None], fault: float) -> float | None:
    """The earliest moment at or after ``fault`` (detection from several sources)."""
    found = [m for m in moments if m is not None and m >= fault]
    return min(found) if found else None
