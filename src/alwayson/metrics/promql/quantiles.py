"""Quantiles as Prometheus computes them: ``quantile`` (NaN ranks first) and the
bucket interpolation of ``histogram_quantile`` (``bucketQuantile``), one step or many."""

from __future__ import annotations

import math

import numpy as np

from alwayson.metrics.promql.values import Floats


def ieee_div(a: float, b: float) -> float:
    if b == 0:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def quantile(q: float, values: list[float]) -> float:
    """Prometheus's quantile: linear between the two nearest ranks; NaN sorts first."""
    if not values or math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = sorted(values, key=lambda v: (not math.isnan(v), v if not math.isnan(v) else 0.0))
    n = len(ordered)
    rank = q * (n - 1)
    lower = max(0, math.floor(rank))
    upper = min(n - 1, lower + 1)
    weight = rank - math.floor(rank)
    return _mul(ordered[lower], 1 - weight) + _mul(ordered[upper], weight)


def _mul(a: float, b: float) -> float:
    if math.isinf(a) and b == 0:
        return math.nan  # IEEE, as Go computes it
    return a * b


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's bucketQuantile over (upper bound, cumulative count) pairs."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets = sorted(buckets, key=lambda b: b[0])
    if buckets[-1][0] != math.inf:
        return math.nan
    merged: list[list[float]] = []
    for bound, count in buckets:
        if merged and merged[-1][0] == bound:
            merged[-1][1] += count
        else:
            merged.append([bound, count])
    # Float noise in the counts (relative 1e-12) is flattened before monotonicity is forced.
    previous = merged[0][1]
    for bucket in merged[1:]:
        delta = abs(bucket[1] - previous)
        if delta == 0:
            continue
        if ieee_div(delta, bucket[1]) <= 1e-12:
            bucket[1] = previous
        else:
            previous = bucket[1]
    highest = merged[0][1]
    for bucket in merged[1:]:
        if bucket[1] > highest:
            highest = bucket[1]
        elif bucket[1] < highest:
            bucket[1] = highest
    if len(merged) < 2:
        return math.nan
    observations = merged[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(merged) - 1) if merged[i][1] >= rank), len(merged) - 1)
    if b == len(merged) - 1:
        return merged[-2][0]
    if b == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start, end, count = 0.0, merged[b][0], merged[b][1]
    if b > 0:
        start = merged[b - 1][0]
        count -= merged[b - 1][1]
        rank -= merged[b - 1][1]
    return start + (end - start) * ieee_div(rank, count)


def bucket_quantiles(phi: Floats, bounds: Floats, counts: Floats) -> Floats:
    """``bucket_quantile`` for many steps at once: ``bounds`` ascending and distinct,
    ``counts`` one row per bucket, one column per step."""
    steps = counts.shape[1]
    if bounds[-1] != math.inf or len(bounds) < 2:
        return _phi_bounds(phi, np.full(steps, math.nan))
    counts = counts.copy()
    with np.errstate(all="ignore"):
        previous = counts[0].copy()
        for i in range(1, len(bounds)):  # float noise flattened, as in the scalar version
            delta = np.abs(counts[i] - previous)
            noise = (delta != 0) & (delta / counts[i] <= 1e-12)
            counts[i] = np.where(noise, previous, counts[i])
            previous = counts[i]
        counts = np.maximum.accumulate(counts, axis=0)
        observations = counts[-1]
        rank = phi * observations
        reached = counts[:-1] >= rank
        b = np.where(reached.any(axis=0), reached.argmax(axis=0), len(bounds) - 1)
        below = np.maximum(b - 1, 0)
        columns = np.arange(steps)
        start = np.where(b > 0, bounds[below], 0.0)
        before = np.where(b > 0, counts[below, columns], 0.0)
        inside = counts[np.minimum(b, len(bounds) - 1), columns] - before
        result = start + (bounds[b] - start) * ((rank - before) / inside)
        result = np.where((b == 0) & (bounds[0] <= 0), bounds[0], result)
        result = np.where(b == len(bounds) - 1, bounds[-2], result)
        result = np.where(observations == 0, math.nan, result)
    return _phi_bounds(phi, result)


def _phi_bounds(phi: Floats, result: Floats) -> Floats:
    """What every quantile is outside [0, 1], whatever the buckets: -Inf, +Inf, NaN."""
    result = np.where(phi < 0, -math.inf, np.where(phi > 1, math.inf, result))
    out: Floats = np.where(np.isnan(phi), math.nan, result)
    return out
