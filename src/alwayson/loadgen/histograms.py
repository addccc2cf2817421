"""Latency histograms: a typed wrapper over the ``hdrhistogram`` package (HdrHistogram_py).

Values are whole microseconds from 1 µs to 60 s at 3 significant digits, so every
percentile is within 0.1 % of the true value. A value beyond 60 s is recorded as 60 s
(counted, never lost); ``clamped`` says how many were. Histograms travel between
processes as the standard HdrHistogram V2 encoding (compressed, base64), the same blob
wrk2, HdrHistogram's Java and Go ports read, and merge by adding counts, which is exact.

Recording is the hot path of a load generator (three values a request), so a value is
only appended to a list; the list is counted into the histogram, in C by numpy, with
HdrHistogram's own bucket arithmetic, whenever the histogram is read (or holds 4,096
values unread).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3
# Bucket arithmetic of this layout (1 µs .. 60 s, 3 digits): 2,048 sub-buckets, the lower
# half of each bucket after the first is skipped.
_SUB_BUCKET_MASK = 2047
_SUB_BUCKET_BITS = 11
_HALF_COUNT = 1024
_HALF_COUNT_BITS = 10
_BATCH = 4096
# The percentiles every report shows (100 is the maximum).
REPORTED_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9, 99.99)


class LatencyHistogram:
    """Counts of latencies in microseconds; mergeable, encodable, exact to 3 digits."""

    __slots__ = ("_clamped", "_hist", "_pending")

    def __init__(self, _hist: Any = None) -> None:
        # The library is untyped: its object stays behind this wrapper.
        self._hist: Any = (
            _hist if _hist is not None else HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        )
        self._pending: list[float] = []
        self._clamped = 0

    @property
    def clamped(self) -> int:
        """How many values above 60 s were counted as 60 s."""
        self._flush()
        return self._clamped

    @clamped.setter
    def clamped(self, value: int) -> None:
        self._flush()
        self._clamped = value

    def record_us(self, micros: float, count: int = 1) -> None:
        if count == 1:
            self._pending.append(micros)
            if len(self._pending) >= _BATCH:
                self._flush()
            return
        self._flush()
        value = round(micros)
        if value > HIGHEST_US:
            value = HIGHEST_US
            self._clamped += count
        self._hist.record_value(max(value, 0), count)

    def record_seconds(self, seconds: float, count: int = 1) -> None:
        self.record_us(seconds * 1_000_000, count)

    def _flush(self) -> None:
        """Count the values recorded since the last read into the histogram."""
        if not self._pending:
            return
        values = numpy.rint(numpy.asarray(self._pending, dtype=numpy.float64))
        self._pending = []
        self._clamped += int(numpy.count_nonzero(values > HIGHEST_US))
        whole = numpy.clip(values, 0, HIGHEST_US).astype(numpy.int64)
        bucket = numpy.maximum(
            numpy.frexp((whole | _SUB_BUCKET_MASK).astype(numpy.float64))[1] - _SUB_BUCKET_BITS, 0
        )
        sub_bucket = whole >> bucket
        index = ((bucket + 1) << _HALF_COUNT_BITS) + (sub_bucket - _HALF_COUNT)
        counts = numpy.ctypeslib.as_array(self._hist.counts)
        numpy.add.at(counts, index, 1)
        hist = self._hist
        hist.total_count += len(whole)
        hist.min_value = min(hist.min_value, int(whole.min()))
        hist.max_value = max(hist.max_value, int(whole.max()))

    @property
    def count(self) -> int:
        self._flush()
        return int(self._hist.get_total_count())

    def max_us(self) -> int | None:
        """The largest value recorded (the top of its 0.1 % bucket), None when empty."""
        return int(self._hist.get_max_value()) if self.count else None

    def min_us(self) -> int | None:
        return int(self._hist.get_min_value()) if self.count else None

    def mean_us(self) -> float | None:
        return float(self._hist.get_mean_value()) if self.count else None

    def percentile_us(self, percentile: float) -> int | None:
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"a percentile is between 0 and 100, not {percentile}")
        return self.percentiles_us((percentile,))[percentile]

    def percentiles_us(self, percentiles: Iterable[float]) -> dict[float, int | None]:
        """Several percentiles in one pass over the counts, with HdrHistogram's own
        definition (the first bucket whose running count reaches the percentile's share,
        reported as the highest value of that bucket; the lowest for p0)."""
        wanted = list(percentiles)
        for p in wanted:
            if not 0.0 <= p <= 100.0:
                raise ValueError(f"a percentile is between 0 and 100, not {p}")
        if not self.count:
            return dict.fromkeys(wanted)
        hist = self._hist
        # The library walks its 17,408 buckets in Python (5 ms a call); numpy does it in C.
        running = numpy.cumsum(numpy.ctypeslib.as_array(hist.counts))
        out: dict[float, int | None] = {}
        for p in wanted:
            target = hist.get_target_count_at_percentile(p)
            index = min(int(numpy.searchsorted(running, target, side="left")), len(running) - 1)
            value = hist.get_value_from_index(index)
            found = (
                hist.get_highest_equivalent_value(value)
                if p
                else hist.get_lowest_equivalent_value(value)
            )
            out[p] = int(found)
        return out

    def add(self, other: LatencyHistogram) -> None:
        """Add ``other``'s counts to this one (exact: same layout, counts summed)."""
        self._flush()
        if not other.count:
            return
        mine = self.min_us()
        theirs = other.min_us()
        self._hist.add(other._hist)
        # HdrHistogram_py's add() takes an empty histogram's minimum as 0; keep the true one.
        self._hist.min_value = theirs if mine is None else min(mine, theirs or 0)
        self.clamped += other.clamped

    def copy(self) -> LatencyHistogram:
        twin = LatencyHistogram()
        twin.add(self)
        return twin

    def encode(self) -> str:
        """The HdrHistogram V2 encoding (zlib-compressed, base64), as text."""
        self._flush()
        blob = self._hist.encode()
        return blob.decode("ascii") if isinstance(blob, bytes) else str(blob)

    @classmethod
    def decode(cls, blob: str) -> LatencyHistogram:
        """Rebuild a histogram from ``encode()``'s text; ValueError when it is not one."""
        try:
            decoded = HdrHistogram.decode(blob.encode("ascii"))
        except Exception as exc:  # the library raises TypeError, zlib.error, its own types
            raise ValueError(f"not an encoded HdrHistogram: {exc}") from exc
        if (
            decoded.lowest_trackable_value != LOWEST_US
            or decoded.significant_figures != SIGNIFICANT_DIGITS
            or decoded.highest_trackable_value != HIGHEST_US
        ):
            raise ValueError(
                "the histogram was recorded with other bounds "
                f"({decoded.lowest_trackable_value}..{decoded.highest_trackable_value} µs, "
                f"{decoded.significant_figures} digits); expected "
                f"{LOWEST_US}..{HIGHEST_US} µs, {SIGNIFICANT_DIGITS} digits"
            )
        # Rebuild into a fresh histogram so min/max follow this wrapper's conventions.
        result = cls()
        result.add(cls(decoded))
        return result

    def summary_ms(self) -> dict[str, float | None]:
        """min, mean, the reported percentiles and max, in milliseconds (None when empty)."""
        found = self.percentiles_us(REPORTED_PERCENTILES)
        out: dict[str, float | None] = {"min": _ms(self.min_us()), "mean": _ms(self.mean_us())}
        for p in REPORTED_PERCENTILES:
            out[percentile_name(p)] = _ms(found[p])
        out["max"] = _ms(self.max_us())
        return out


def percentile_name(percentile: float) -> str:
    """``50.0`` -> ``p50``, ``99.9`` -> ``p99.9``."""
    text = f"{percentile:f}".rstrip("0").rstrip(".")
    return f"p{text}"


def _ms(micros: float | None) -> float | None:
    return None if micros is None else round(micros / 1000.0, 3)
