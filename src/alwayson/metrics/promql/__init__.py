"""PromQL over the embedded store: an exact subset, with Prometheus's semantics.

Parsing is ``promql_parser``'s (the Prometheus grammar); evaluation is ours. A range query
is evaluated once over all its steps at a time: every value is a numpy array over the
steps plus a mask of the steps where the series exists, so ``sum by (service)
(rate(x[5m]))`` over 24 hours costs a handful of array operations per series, not a Python
loop per step.

Supported, with Prometheus's meaning:

- number literals; selectors with ``=``, ``!=``, ``=~``, ``!~``; range selectors;
  ``offset``; ``@ <time>``, ``@ start()``, ``@ end()``. An instant selector takes a
  series' newest sample in ``(t - lookback, t]`` (5 minutes by default) unless that sample
  is a staleness marker; a range ``[d]`` takes the samples in ``(t - d, t]``;
- ``rate``, ``increase``, ``delta`` (counter resets and the extrapolation of
  Prometheus's ``extrapolatedRate``), ``irate``, ``idelta``; ``avg_over_time``,
  ``min_over_time``, ``max_over_time``, ``sum_over_time``, ``count_over_time``,
  ``last_over_time``, ``quantile_over_time``; ``histogram_quantile`` over classic
  ``_bucket`` series; ``abs``, ``ceil``, ``floor``, ``round``, ``clamp``, ``clamp_min``,
  ``clamp_max``, ``absent``, ``time``, ``vector``, ``scalar``, ``timestamp``;
- ``sum``, ``avg``, ``min``, ``max``, ``count``, ``quantile``, ``topk``, ``bottomk`` with
  ``by``/``without``;
- ``+ - * / % ^``, comparisons with and without ``bool``, ``and``/``or``/``unless``,
  one-to-one matching with ``on``/``ignoring`` and many-to-one / one-to-many with
  ``group_left``/``group_right``; unary minus.

Over rollups (ranges older than ``retention.raw``) a function reads the part of a bucket
that keeps its meaning: counters and instant selectors ``last`` (the rate of a 1-in-N
subsample, exact at minute resolution), ``sum_over_time`` the sums, ``count_over_time``
the counts, ``avg_over_time`` sum / count (exact), ``min``/``max_over_time`` the minima /
maxima (exact); ``quantile_over_time`` the ``last`` values (a quantile of the subsample).

Anything else (subqueries, other functions and aggregations, ``atan2``, strings as
results) raises ``QueryError`` naming it.
"""

from alwayson.metrics.promql.engine import Comparison, Evaluation, QueryEngine
from alwayson.metrics.promql.scoping import Scoped
from alwayson.metrics.promql.values import SUPPORTED_FUNCTIONS, QueryError, Source

__all__ = [
    "SUPPORTED_FUNCTIONS",
    "Comparison",
    "Evaluation",
    "QueryEngine",
    "QueryError",
    "Scoped",
    "Source",
]
