"""A run's results: totals, HDR percentiles, per-step figures, the per-second series.

Results are data: ``to_json`` writes everything (with the encoded histograms, so the JSON
of runs on several machines can be merged later), ``from_json`` reads it back, and
``merge_results`` adds the results of processes that ran at the same time (counts summed,
histograms added, rows of the same wall-clock second combined; the duration is the
longest, so requests per second add up; a run is ``interrupted`` when any part was).

The series holds one row per second; a run longer than an hour holds per-minute rows
(``span`` 60) for its older part, and one longer than a day per-hour rows beyond that
(see ``recording.FOLDING``). ``memory`` is the generator's resident memory at each soak
snapshot.

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
from alwayson.loadgen.recording import Recorder, SecondRow, StepStats, fill_gaps, merge_rows

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
    interrupted: bool = False  # stopped before its arrivals or users were done
    memory: list[MemorySample] = field(default_factory=list)

    @classmethod
    def from_recorder(
        cls, recorder: Recorder, ended: float, interrupted: bool = False
    ) -> RunResult:
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
            interrupted=interrupted,
        )

    @classmethod
    def snapshot(cls, recorder: Recorder, now: float) -> RunResult:
        """The figures so far, as a copy the run no longer touches (for soak snapshots)."""
        return cls(
            started_at=recorder.origin_wall,
            duration=max(now - recorder.origin_monotonic, 0.0),
            sent=recorder.sent,
            ok=recorder.ok,
            failed=recorder.failed,
            dropped=recorder.dropped,
            latency=recorder.latency.copy(),
            steps={name: s.copy() for name, s in recorder.steps.items()},
            journey_errors=dict(recorder.journey_errors),
            rows=recorder.snapshot_rows(),
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
        """The rows in order from the first to the last, gaps filled with empty rows (one
        per second, or per minute or hour among folded rows)."""
        return fill_gaps(self.rows)

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
            "interrupted": self.interrupted,
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
            "memory": [m.to_json() for m in self.memory],
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
                row = row_from_json(r)
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
                interrupted=bool(data.get("interrupted", False)),
                memory=[MemorySample.from_json(m) for m in data.get("memory", [])],
            )
        except KeyError as exc:
            raise ValueError(
                f"the result lacks {exc.args[0]!r} (was it written with histograms=False?)"
            ) from exc


def row_from_json(r: Mapping[str, Any]) -> SecondRow:
    """A row of ``to_json``'s series (with its histogram) read back."""
    row = SecondRow(
        int(r["time"]),
        int(r["sent"]),
        int(r["ok"]),
        int(r["failed"]),
        int(r["dropped"]),
        int(r["requests"]),
        span=int(r.get("span", 1)),
    )
    if r.get("histogram"):
        row.set_latency(LatencyHistogram.decode(r["histogram"]))
    elif r["ok"] or r["failed"]:
        raise ValueError(f"the row of second {r['time']} has no histogram")
    return row


def row_json(row: SecondRow) -> dict[str, Any]:
    """One row as ``to_json`` writes it, with its histogram (``t`` counted from itself)."""
    return _row_json(row, row.second, True)


def _row_json(row: SecondRow, first: int, histograms: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "t": row.second - first,
        "time": row.second,
        "sent": row.sent,
        "ok": row.ok,
        "failed": row.failed,
        "dropped": row.dropped,
        "requests": row.requests,
        "span": row.span,
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
    for part in parts:
        latency.add(part.latency)
        for name, stats in part.steps.items():
            steps.setdefault(name, StepStats(name)).add(stats)
        for kind, n in part.journey_errors.items():
            journey_errors[kind] = journey_errors.get(kind, 0) + n
    rows = merge_rows(row for part in parts for row in part.rows.values())
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
        interrupted=any(p.interrupted for p in parts),
        memory=merge_memory(p.memory for p in parts),
    )


@dataclass(frozen=True)
class MemorySample:
    """The generator's resident memory at one soak snapshot (``snapshot`` 1, 2, …), summed
    over its ``processes``."""

    snapshot: int
    time: float  # Unix time
    rss_bytes: int
    processes: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "time": round(self.time, 3),
            "rss_mib": round(self.rss_bytes / 2**20, 1),
            "rss_bytes": self.rss_bytes,
            "processes": self.processes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MemorySample:
        return cls(
            int(data["snapshot"]),
            float(data["time"]),
            int(data["rss_bytes"]),
            int(data.get("processes", 1)),
        )


def merge_memory(series: Iterable[list[MemorySample]]) -> list[MemorySample]:
    """Samples of runs side by side: those of one snapshot number summed."""
    by_snapshot: dict[int, MemorySample] = {}
    for samples in series:
        for m in samples:
            had = by_snapshot.get(m.snapshot)
            by_snapshot[m.snapshot] = (
                m
                if had is None
                else MemorySample(
                    m.snapshot,
                    max(had.time, m.time),
                    had.rss_bytes + m.rss_bytes,
                    had.processes + m.processes,
                )
            )
    return [by_snapshot[k] for k in sorted(by_snapshot)]
