"""A run's results: totals, HDR percentiles, per-step figures, the per-second series.

Results are data: ``to_json`` writes everything (with the encoded histograms, so the JSON
of runs on several machines can be merged later), ``from_json`` reads it back, and
``merge_results`` adds the results of processes that ran at the same time (counts summed,
histograms added, rows of the same wall-clock second combined; the duration is the
longest, so requests per second add up).

Definitions: an iteration is one pass of the scenario (one request for a URL list, one
journey). ``error_rate`` is failed iterations over finished ones; ``rps`` is requests
finished per second of the run; ``dropped`` iterations were due but never started
because the generator was at its bounds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from alwayson.loadgen.histograms import LatencyHistogram
from alwayson.loadgen.recording import Recorder, SecondRow, StepStats

SCHEMA = "alwayson.loadgen.result/1"


@dataclass
class RunResult:
    started_at: float  # Unix time
    duration: float  # seconds, from the start until the last iteration ended
    sent: int
    ok: int
    failed: int
    dropped: int
    latency: LatencyHistogram  # whole iterations, from the intended start
    steps: dict[str, StepStats] = field(default_factory=dict)
    journey_errors: dict[str, int] = field(default_factory=dict)
    rows: dict[int, SecondRow] = field(default_factory=dict)
    workers: int = 1

    @classmethod
    def from_recorder(cls, recorder: Recorder, ended: float) -> RunResult:
        """The recorder's figures; ``ended`` is the clock's monotonic time at the end."""
        recorder.freeze_all()
        return cls(
            started_at=recorder.origin_wall,
            duration=max(ended - recorder.origin_monotonic, 0.0),
            sent=recorder.sent,
            ok=recorder.ok,
            failed=recorder.failed,
            dropped=recorder.dropped,
            latency=recorder.latency,
            steps=recorder.steps,
            journey_errors=recorder.journey_errors,
            rows=recorder.rows,
        )

    @property
    def finished(self) -> int:
        return self.ok + self.failed

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.steps.values())

    @property
    def failed_requests(self) -> int:
        return sum(s.failed for s in self.steps.values())

    @property
    def error_rate(self) -> float:
        return self.failed / self.finished if self.finished else 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.duration if self.duration > 0 else 0.0

    @property
    def iterations_per_s(self) -> float:
        return self.finished / self.duration if self.duration > 0 else 0.0

    def series(self) -> list[SecondRow]:
        """One row per second from the first to the last, gaps filled with empty rows."""
        if not self.rows:
            return []
        first, last = min(self.rows), max(self.rows)
        return [self.rows.get(s) or SecondRow(s) for s in range(first, last + 1)]

    def to_json(self, histograms: bool = True) -> dict[str, Any]:
        """Everything, JSON-ready; latencies in milliseconds. ``histograms=False`` leaves
        out the encoded counts (smaller, but such a result can no longer be merged)."""
        series = self.series()
        first = series[0].second if series else 0
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "started_at": self.started_at,
            "duration_s": round(self.duration, 6),
            "workers": self.workers,
            "iterations": {
                "sent": self.sent,
                "ok": self.ok,
                "failed": self.failed,
                "dropped": self.dropped,
            },
            "requests": {"total": self.requests, "failed": self.failed_requests},
            "rps": round(self.rps, 3),
            "iterations_per_s": round(self.iterations_per_s, 3),
            "error_rate": self.error_rate,
            "latency_ms": self.latency.summary_ms(),
            "latency_clamped": self.latency.clamped,
            "steps": {
                name: {
                    "requests": s.requests,
                    "ok": s.ok,
                    "failed": s.failed,
                    "errors": dict(sorted(s.errors.items())),
                    "latency_ms": s.latency.summary_ms(),
                    **({"histogram": s.latency.encode()} if histograms else {}),
                }
                for name, s in sorted(self.steps.items())
            },
            "journey_errors": dict(sorted(self.journey_errors.items())),
            "series": [_row_json(r, first, histograms) for r in series],
        }
        if histograms:
            out["histogram"] = self.latency.encode()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunResult:
        """Read back ``to_json()`` (with histograms); ValueError naming what is missing."""
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a load test result ({SCHEMA}): schema is {data.get('schema')!r}")
        try:
            latency = LatencyHistogram.decode(data["histogram"])
            latency.clamped = int(data.get("latency_clamped", 0))
            steps = {
                name: StepStats(
                    name,
                    LatencyHistogram.decode(s["histogram"]),
                    int(s["ok"]),
                    int(s["failed"]),
                    {str(k): int(v) for k, v in s["errors"].items()},
                )
                for name, s in data["steps"].items()
            }
            rows: dict[int, SecondRow] = {}
            for r in data["series"]:
                row = SecondRow(
                    int(r["time"]),
                    int(r["sent"]),
                    int(r["ok"]),
                    int(r["failed"]),
                    int(r["dropped"]),
                    int(r["requests"]),
                )
                if r.get("histogram"):
                    row.set_latency(LatencyHistogram.decode(r["histogram"]))
                elif r["ok"] or r["failed"]:
                    raise ValueError(f"the row of second {r['time']} has no histogram")
                rows[row.second] = row
            it = data["iterations"]
            return cls(
                started_at=float(data["started_at"]),
                duration=float(data["duration_s"]),
                sent=int(it["sent"]),
                ok=int(it["ok"]),
                failed=int(it["failed"]),
                dropped=int(it["dropped"]),
                latency=latency,
                steps=steps,
                journey_errors={str(k): int(v) for k, v in data["journey_errors"].items()},
                rows=rows,
                workers=int(data.get("workers", 1)),
            )
        except KeyError as exc:
            raise ValueError(
                f"the result lacks {exc.args[0]!r} (was it written with histograms=False?)"
            ) from exc


def _row_json(row: SecondRow, first: int, histograms: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "t": row.second - first,
        "time": row.second,
        "sent": row.sent,
        "ok": row.ok,
        "failed": row.failed,
        "dropped": row.dropped,
        "requests": row.requests,
        "p50_ms": _ms(row.p50_us),
        "p99_ms": _ms(row.p99_us),
        "max_ms": _ms(row.max_us),
    }
    if histograms:
        out["histogram"] = row.histogram
    return out


def _ms(micros: int | None) -> float | None:
    return None if micros is None else round(micros / 1000.0, 3)


def merge_results(results: Iterable[RunResult]) -> RunResult:
    """Results of processes that ran side by side, as one run."""
    parts = list(results)
    if not parts:
        raise ValueError("nothing to merge")
    latency = LatencyHistogram()
    steps: dict[str, StepStats] = {}
    journey_errors: dict[str, int] = {}
    rows: dict[int, SecondRow] = {}
    row_latency: dict[int, LatencyHistogram] = {}
    for part in parts:
        latency.add(part.latency)
        for name, stats in part.steps.items():
            steps.setdefault(name, StepStats(name)).add(stats)
        for kind, n in part.journey_errors.items():
            journey_errors[kind] = journey_errors.get(kind, 0) + n
        for second, row in part.rows.items():
            into = rows.setdefault(second, SecondRow(second))
            into.sent += row.sent
            into.ok += row.ok
            into.failed += row.failed
            into.dropped += row.dropped
            into.requests += row.requests
            if row.histogram is not None or row.live is not None:
                row_latency.setdefault(second, LatencyHistogram()).add(row.latency())
    for second, hist in row_latency.items():
        rows[second].set_latency(hist)
    start = min(p.started_at for p in parts)
    return RunResult(
        started_at=start,
        duration=max(p.started_at + p.duration for p in parts) - start,
        sent=sum(p.sent for p in parts),
        ok=sum(p.ok for p in parts),
        failed=sum(p.failed for p in parts),
        dropped=sum(p.dropped for p in parts),
        latency=latency,
        steps=steps,
        journey_errors=journey_errors,
        rows=rows,
        workers=sum(p.workers for p in parts),
    )
