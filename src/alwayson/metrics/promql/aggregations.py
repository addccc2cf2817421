"""PromQL aggregations: ``sum``, ``avg``, ``min``, ``max``, ``count``, ``quantile``,
``topk``, ``bottomk``, with ``by``/``without``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import promql_parser as pp

from alwayson.metrics.promql.quantiles import quantile
from alwayson.metrics.promql.values import (
    AGGREGATIONS,
    NAME,
    Bools,
    Floats,
    QueryError,
    Series,
    labels_key,
)

if TYPE_CHECKING:
    from alwayson.metrics.promql.engine import Evaluation


# -- aggregations -------------------------------------------------------------------


def aggregate(ev: Evaluation, node: pp.AggregateExpr) -> list[Series]:
    op = str(node.op)
    if op not in AGGREGATIONS:
        raise QueryError(
            f"aggregation {op}() is not supported; supported: {', '.join(AGGREGATIONS)}"
        )
    vector = ev.vec(node.expr, f"{op}()")
    param = ev.scalar(node.param, op) if op in ("quantile", "topk", "bottomk") else None
    modifier = node.modifier
    names = set(modifier.labels) if modifier is not None else set()
    without = modifier is not None and modifier.type == pp.AggModifierType.Without

    def grouping(labels: dict[str, str]) -> dict[str, str]:
        if without:
            return {k: v for k, v in labels.items() if k not in names and k != NAME}
        return {k: v for k, v in labels.items() if k in names}

    groups: dict[tuple[tuple[str, str], ...], list[Series]] = {}
    for series in vector:
        groups.setdefault(labels_key(grouping(series.labels)), []).append(series)
    if op in ("topk", "bottomk"):
        assert param is not None
        return _top(ev, op, param, groups)
    out = []
    for key, members in sorted(groups.items()):
        values = np.vstack([s.values for s in members])
        mask = np.vstack([s.present for s in members])
        present: Bools = np.asarray(mask.any(axis=0), dtype=np.bool_)
        with np.errstate(all="ignore"):
            if op in ("sum", "avg"):
                result = np.where(mask, values, 0.0).sum(axis=0)
                if op == "avg":
                    result = result / mask.sum(axis=0)
            elif op == "count":
                result = mask.sum(axis=0).astype(np.float64)
            elif op in ("min", "max"):
                reduce = np.fmin if op == "min" else np.fmax
                result = reduce.reduce(np.where(mask, values, math.nan), axis=0)
            else:  # quantile
                assert param is not None
                result = np.full(ev.steps, math.nan)
                for i in np.flatnonzero(present):
                    result[i] = quantile(float(param[i]), values[mask[:, i], i].tolist())
        out.append(Series(dict(key), result, present))
    return out


def _top(
    ev: Evaluation, op: str, param: Floats, groups: dict[tuple[tuple[str, str], ...], list[Series]]
) -> list[Series]:
    chosen = {id(s): np.zeros(ev.steps, np.bool_) for m in groups.values() for s in m}
    for i in range(ev.steps):
        k_value = float(param[i])
        if not math.isfinite(k_value):
            raise QueryError(f"{op}: the number of series must be finite, got {k_value}")
        k = int(k_value)
        if k < 1:
            continue
        for members in groups.values():
            here = [s for s in members if s.present[i]]
            # NaN ranks last whichever way round, as in Prometheus.
            if op == "topk":
                here.sort(key=lambda s: (math.isnan(s.values[i]), -s.values[i]))
            else:
                here.sort(key=lambda s: (math.isnan(s.values[i]), s.values[i]))
            for s in here[:k]:
                chosen[id(s)][i] = True
    out = []
    for members in groups.values():
        for s in members:
            mask = chosen[id(s)]
            if mask.any():
                out.append(Series(dict(s.labels), s.values, mask, s.times))
    return out
