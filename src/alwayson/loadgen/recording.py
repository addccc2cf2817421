"""Recording a run as it happens: totals, per-step figures and one row per second.

Time series rows are keyed by wall-clock second (Unix time, floored), so rows from several
processes or machines line up when merged. ``sent`` and ``dropped`` count in the second an
iteration was *meant* to start; ``ok``, ``failed``, ``requests`` and the latency of the
row count in the second it *finished*. Latency is the time from the intended start to the
end, so the rows show a stall in the second it ends, with its full length.

A second's latency histogram is frozen (percentiles computed, counts encoded) as soon as
the recorder sees a later second, so a long soak keeps one small row per second in memory,
not a histogram per second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from alwayson.loadgen.histograms import LatencyHistogram
from alwayson.util.clocks import Clock


@dataclass
class SecondRow:
    """What happened in one wall-clock second. Latencies in microseconds."""

    second: int
    sent: int = 0
    ok: int = 0
    failed: int = 0
    dropped: int = 0
    requests: int = 0
    p50_us: int | None = None
    p99_us: int | None = None
    max_us: int | None = None
    histogram: str | None = None  # HdrHistogram V2 encoding, once frozen (None: empty)
    live: LatencyHistogram | None = field(default=None, repr=False, compare=False)

    def record(self, latency_s: float) -> None:
        if self.live is None:
            self.live = LatencyHistogram()
        self.live.record_seconds(latency_s)

    def freeze(self) -> None:
        """Compute the row's percentiles and keep only the encoded counts."""
        if self.live is None:
            return
        live = self.live
        if self.histogram is not None:  # frozen before and written to again: combine
            live.add(LatencyHistogram.decode(self.histogram))
        self.live = None
        self.set_latency(live)

    def set_latency(self, hist: LatencyHistogram) -> None:
        found = hist.percentiles_us((50.0, 99.0))
        self.p50_us, self.p99_us, self.max_us = found[50.0], found[99.0], hist.max_us()
        self.histogram = hist.encode() if hist.count else None

    def latency(self) -> LatencyHistogram:
        """The second's latency counts (decoded; a new object)."""
        hist = (
            LatencyHistogram()
            if self.histogram is None
            else LatencyHistogram.decode(self.histogram)
        )
        if self.live is not None:
            hist.add(self.live)
        return hist


@dataclass
class StepStats:
    """One named step (request) of a scenario: its latency, outcomes and error kinds."""

    name: str
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return self.ok + self.failed

    def add(self, other: StepStats) -> None:
        self.latency.add(other.latency)
        self.ok += other.ok
        self.failed += other.failed
        for kind, n in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + n


class Recorder:
    """Collects a run's figures; one per process, used from one event loop."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.origin_monotonic = clock.monotonic()
        self.origin_wall = clock.wall()
        self.latency = LatencyHistogram()  # whole iterations, from intended start
        self.steps: dict[str, StepStats] = {}
        self.journey_errors: dict[str, int] = {}
        self.sent = 0
        self.ok = 0
        self.failed = 0
        self.dropped = 0
        self.rows: dict[int, SecondRow] = {}
        self._latest = -(2**62)  # the latest second a latency was recorded in
        self._live: set[int] = set()  # seconds whose latency is not frozen yet

    def second_of(self, monotonic: float) -> int:
        return math.floor(self.origin_wall + (monotonic - self.origin_monotonic))

    def _row(self, second: int) -> SecondRow:
        row = self.rows.get(second)
        if row is None:
            row = self.rows[second] = SecondRow(second)
        return row

    def started(self, intended: float) -> None:
        self.sent += 1
        self._row(self.second_of(intended)).sent += 1

    def dropped_one(self, intended: float) -> None:
        self.dropped += 1
        self._row(self.second_of(intended)).dropped += 1

    def finished(self, intended: float, done: float, ok: bool) -> None:
        """An iteration meant to start at ``intended`` ended at ``done`` (monotonic)."""
        latency = max(done - intended, 0.0)
        self.latency.record_seconds(latency)
        second = self.second_of(done)
        row = self._row(second)
        if ok:
            self.ok += 1
            row.ok += 1
        else:
            self.failed += 1
            row.failed += 1
        row.record(latency)
        self._live.add(second)
        if second > self._latest:
            self._freeze_before(second)
            self._latest = second

    def step(self, name: str, started: float, done: float, error: str | None) -> None:
        """One request of an iteration; ``error`` is its kind (``http 503``) or None."""
        stats = self.steps.get(name)
        if stats is None:
            stats = self.steps[name] = StepStats(name)
        stats.latency.record_seconds(max(done - started, 0.0))
        if error is None:
            stats.ok += 1
        else:
            stats.failed += 1
            stats.errors[error] = stats.errors.get(error, 0) + 1
        self._row(self.second_of(done)).requests += 1

    def journey_error(self, kind: str) -> None:
        """The journey's own code raised (not one of its requests)."""
        self.journey_errors[kind] = self.journey_errors.get(kind, 0) + 1

    def _freeze_before(self, second: int) -> None:
        for done in [s for s in self._live if s < second]:
            self.rows[done].freeze()
            self._live.discard(done)

    def freeze_all(self) -> None:
        for second in self._live:
            self.rows[second].freeze()
        self._live.clear()
