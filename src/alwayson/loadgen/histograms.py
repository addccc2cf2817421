"""Latency histograms: a typed wrapper over the ``hdrhistogram`` package (HdrHistogram_py).

Values are whole microseconds from 1 µs to 60 s at 3 significant digits, so every
percentile is within 0.1 % of the true value. A value beyond 60 s is recorded as 60 s
(counted, never lost); ``clamped`` says how many were. Histograms travel between
processes as the standard HdrHistogram V2 encoding (compressed, base64), the same blob
wrk2, HdrHistogram's Java and Go ports read, and merge by adding counts, which is exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3
# The percentiles every report shows (100 is the maximum).
REPORTED_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9, 99.99)


class LatencyHistogram:
    """Counts of latencies in microseconds; mergeable, encodable, exact to 3 digits."""

    __slots__ = ("_hist", "clamped")

    def __init__(self, _hist: Any = None) -> None:
        # The library is untyped: its object stays behind this wrapper.
        self._hist: Any = (
            _hist if _hist is not None else HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        )
        self.clamped = 0

    def record_us(self, micros: float, count: int = 1) -> None:
        value = round(micros)
        if value > HIGHEST_US:
            value = HIGHEST_US
            self.clamped += count
        self._hist.record_value(max(value, 0), count)

    def record_seconds(self, seconds: float, count: int = 1) -> None:
        self.record_us(seconds * 1_000_000, count)

    @property
    def count(self) -> int:
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
        return int(self._hist.get_value_at_percentile(percentile)) if self.count else None

    def percentiles_us(self, percentiles: Iterable[float]) -> dict[float, int | None]:
        """Several percentiles in one pass over the counts (much cheaper than one by one)."""
        wanted = list(percentiles)
        if not self.count:
            return dict.fromkeys(wanted)
        found = self._hist.get_percentile_to_value_dict(wanted)
        return {p: int(found[p]) for p in wanted}

    def add(self, other: LatencyHistogram) -> None:
        """Add ``other``'s counts to this one (exact: same layout, counts summed)."""
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
