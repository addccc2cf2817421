"""Release checks: the spec's PromQL comparisons, judged from what the engine returned.

A check is PromQL ending in a comparison, read exactly as an alert rule with the same text
is read (the same engine, :mod:`alwayson.metrics.promql`, over the same store)::

    rate(bank_requests_total{code=~"5.."}[1m]) < 0.5
    sum(increase(bank_fraud_decisions_total{decision="block"}[5m])) <= 3

An alert rule fires for every series its comparison keeps; a check **holds when its
comparison keeps every series of its operand** (the side that is a vector), and fails
when it drops one. An operand with no series holds: an error counter never incremented
has no series, as in Prometheus. ``rate(x[1m])`` is the rate over the last minute, as
anywhere in PromQL: the range is the check's own, not the analysis interval.

Evaluating is the engine's; judging is here, pure, so release stays free of the parser.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alwayson.metrics.model import Point


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    value: float
    text: str

    def describe(self) -> str:
        """E.g. ``rate(errors_total[1m]) < 0.5: 0.73 (failed)``."""
        return f"{self.text}: {self.value:.4g} ({'ok' if self.ok else 'failed'})"

    def to_json(self) -> dict[str, Any]:
        value = self.value if math.isfinite(self.value) else str(self.value)
        return {"check": self.text, "ok": self.ok, "value": value}


def judge(text: str, operand: Sequence[Point], kept: Sequence[Point]) -> CheckResult:
    """Whether the comparison of ``text`` kept every series of its operand.

    ``value`` is that of the first series dropped, else of the first kept, else NaN (no
    series at all)."""
    kept_labels = [p.labels for p in kept]
    dropped = [p for p in operand if p.labels not in kept_labels]
    ok = len(kept) >= len(operand)
    if not ok and dropped:
        value = dropped[0].value
    elif kept:
        value = kept[0].value
    else:
        value = operand[0].value if operand else math.nan
    return CheckResult(ok, value, text)
