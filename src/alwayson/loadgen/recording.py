"""Recording a run as it happens: totals, per-step figures and one row per second.

Time series rows are keyed by wall-clock second (Unix time, floored), so rows from several
processes or machines line up when merged. ``sent`` and ``dropped`` count in the second an
iteration was *meant* to start; ``ok``, ``failed``, ``requests`` and the latency of the
row count in the second it *finished*. Latency is the time from the intended start to the
end, so the rows show a stall in the second it ends, with its full length.

A second's latency histogram is frozen (percentiles computed, counts encoded) as soon as
the recorder sees a later second, so a run keeps one small row per second in memory, not
a histogram per second. A soak of days keeps its memory flat: rows older than an hour are
folded into one row per minute, and minute rows older than a day into one per hour
(``FOLDING``; counts summed, histograms added, so the totals stay exact). The rows kept
are bounded by 3,600 + 1,440 + one per hour of the run.

``settle(upto)`` hands out each completed second once, in order, frozen (gaps as empty
rows): the exact live progress a caller shows while the run goes on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from alwayson.loadgen.histograms import LatencyHistogram
from alwayson.util.clocks import Clock

# (age, span): rows older than ``age`` seconds are folded into rows of ``span`` seconds.
FOLDING: tuple[tuple[int, int], ...] = ((3600, 60), (86400, 3600))


@dataclass
class SecondRow:
    """What happened in one wall-clock second (``span`` 1), or in a folded minute or hour
    (``span`` 60 or 3600, ``second`` its first second). Latencies in microseconds."""

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
    span: int = 1

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

    @property
    def end(self) -> int:
        return self.second + self.span

    def add_counts(self, other: SecondRow) -> None:
        self.sent += other.sent
        self.ok += other.ok
        self.failed += other.failed
        self.dropped += other.dropped
        self.requests += other.requests


def combine_rows(
    rows: Iterable[SecondRow], start: int | None = None, span: int | None = None
) -> SecondRow | None:
    """One row holding every row of ``rows`` (counts summed, histograms added), from
    ``start`` (else the earliest) for ``span`` seconds (else to the last one's end); None
    when there is none."""
    parts = list(rows)
    if not parts:
        return None
    first = min(r.second for r in parts) if start is None else start
    into = SecondRow(first, span=span or max(r.end for r in parts) - first)
    hist: LatencyHistogram | None = None
    for row in parts:
        into.add_counts(row)
        if row.histogram is not None or row.live is not None:
            hist = hist or LatencyHistogram()
            hist.add(row.latency())
    if hist is not None:
        into.set_latency(hist)
    return into


def merge_rows(rows: Iterable[SecondRow]) -> dict[int, SecondRow]:
    """Rows of several runs as one series: rows of one second are combined, and finer
    rows inside a coarser one (a minute one run already folded) are folded into it."""
    parts = list(rows)
    coarse: dict[int, set[int]] = {}
    for row in parts:
        if row.span > 1:
            coarse.setdefault(row.span, set()).add(row.second)
    spans = sorted(coarse, reverse=True)
    groups: dict[tuple[int, int], list[SecondRow]] = {}
    for row in parts:
        key = (row.second, row.span)
        for span in spans:
            if span <= row.span:
                break
            bucket = row.second - row.second % span
            if bucket in coarse[span]:
                key = (bucket, span)
                break
        groups.setdefault(key, []).append(row)
    out: dict[int, SecondRow] = {}
    for (second, span), group in sorted(groups.items()):
        if len(group) == 1 and group[0].span == span and group[0].live is None:
            out[second] = replace(group[0])
        else:
            combined = combine_rows(group, second, span)
            assert combined is not None
            out[second] = combined
    return out


def fill_gaps(rows: dict[int, SecondRow]) -> list[SecondRow]:
    """``rows`` in order, each gap filled with empty rows as long as the row before it
    (or of one second where that does not fit)."""
    if not rows:
        return []
    keys = sorted(rows)
    out: list[SecondRow] = []
    for here, after in zip(keys, [*keys[1:], None], strict=True):
        row = rows[here]
        out.append(row)
        if after is None:
            break
        at = row.end
        while at < after:
            step = row.span if at % row.span == 0 and at + row.span <= after else 1
            out.append(SecondRow(at, span=step))
            at += step
    return out


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

    def copy(self) -> StepStats:
        return StepStats(self.name, self.latency.copy(), self.ok, self.failed, dict(self.errors))


class Recorder:
    """Collects a run's figures; one per process, used from one event loop."""

    def __init__(self, clock: Clock, folding: Sequence[tuple[int, int]] = FOLDING) -> None:
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
        self._settled = self.second_of(self.origin_monotonic)  # seconds before: handed out
        self._folding = tuple(folding)
        for (age, span), (_, finer) in zip(self._folding[1:], self._folding, strict=False):
            if span % finer or age <= 0:
                raise ValueError(f"folding tiers must nest: {self._folding}")
        first = self._settled
        self._folded = [first - first % span for _, span in self._folding]

    def second_of(self, monotonic: float) -> int:
        return math.floor(self.origin_wall + (monotonic - self.origin_monotonic))

    def _row(self, second: int) -> SecondRow:
        row = self.rows.get(second)
        if row is None:
            if self._folded and second < self._folded[0]:
                return self._folded_row(second)
            row = self.rows[second] = SecondRow(second)
        return row

    def _folded_row(self, second: int) -> SecondRow:
        """The row that holds ``second`` once it was folded (a rare, very late record)."""
        span = 1
        for tier, (_, tier_span) in enumerate(self._folding):
            if second < self._folded[tier]:
                span = tier_span
        bucket = second - second % span
        row = self.rows.get(bucket)
        if row is None:
            row = self.rows[bucket] = SecondRow(bucket, span=span)
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
        self._live.add(row.second)
        if second > self._latest:
            self._freeze_before(second)
            self._latest = second
            self.fold(second)

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
            row = self.rows.get(done)
            if row is not None:
                row.freeze()
            self._live.discard(done)

    def freeze_all(self) -> None:
        for second in self._live:
            row = self.rows.get(second)
            if row is not None:
                row.freeze()
        self._live.clear()

    def settle(self, upto: int) -> list[SecondRow]:
        """The rows of the seconds before ``upto`` not handed out yet, in order and frozen
        (a second without a row as an empty one). Call it only for seconds that are over:
        nothing is recorded in them afterwards."""
        out: list[SecondRow] = []
        for second in range(self._settled, upto):
            row = self.rows.get(second)
            if row is None:
                out.append(SecondRow(second))
                continue
            row.freeze()
            self._live.discard(second)
            out.append(row)
        self._settled = max(self._settled, upto)
        self.fold(upto)
        return out

    def settle_all(self) -> list[SecondRow]:
        """At the end of the run: every row not handed out yet (the last may be partial)."""
        last = max(self.rows, default=self._settled - 1)
        return self.settle(max(last + 1, self._settled))

    def fold(self, now: int) -> None:
        """Fold the rows that have aged past each tier of ``FOLDING`` (see the module)."""
        finer = 1
        for tier, (age, span) in enumerate(self._folding):
            boundary = (now - age) - (now - age) % span
            while self._folded[tier] < boundary:
                bucket = self._folded[tier]
                self._fold_bucket(bucket, span, finer)
                self._folded[tier] = bucket + span
            finer = span

    def _fold_bucket(self, bucket: int, span: int, finer: int) -> None:
        parts = []
        for second in range(bucket, bucket + span, finer):
            row = self.rows.get(second)
            if row is not None and row.span < span:
                del self.rows[second]
                self._live.discard(second)
                row.freeze()
                parts.append(row)
        combined = combine_rows(parts, bucket, span)
        if combined is not None:
            self.rows[bucket] = combined

    def snapshot_rows(self) -> dict[int, SecondRow]:
        """A copy of the rows, every one frozen (later records combine into them)."""
        self.freeze_all()
        return {second: replace(row) for second, row in self.rows.items()}
