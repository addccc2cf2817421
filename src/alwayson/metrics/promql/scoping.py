"""A view of a source that shows only some series, for queries about one thing.

A release check reads the candidate's own metrics and the gateways' (what it always
promised): the engine is the same as for alert rules, only the series it can see differ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from alwayson.metrics.model import Field, Matcher, SeriesData
from alwayson.metrics.promql.values import Source

Keep = Callable[[str, Mapping[str, str]], bool]
"""Whether a series (metric name, labels) is in view."""


class Scoped:
    """``source`` seen through ``keep``: a :class:`Source` itself."""

    def __init__(self, source: Source, keep: Keep) -> None:
        self.source = source
        self.keep = keep

    def fetch(
        self,
        name: str | None,
        matchers: Sequence[Matcher],
        start: float,
        end: float,
        *,
        field: Field = "last",
    ) -> list[SeriesData]:
        found = self.source.fetch(name, matchers, start, end, field=field)
        return [data for data in found if self.keep(data.name, data.labels)]
