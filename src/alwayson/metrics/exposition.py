"""The one Prometheus text parser: every scrape, gateway figure and test reads through it.

prometheus_client's parser names families without their suffixes (``x_total`` is family
``x``); we keep **sample names** whole (``x_total``, ``h_bucket``, ``h_sum``, ``s_count``,
``x_created``) and labels (``le``, ``quantile`` included) exactly as exposed, so what is
stored and queried is what the target printed. Timestamps in the exposition are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

from alwayson.metrics.model import Sample
from alwayson.util.errors import PermanentError


class ExpositionError(PermanentError, ValueError):
    """Text that is not in the Prometheus exposition format."""


def parse_exposition(text: str, extra: Mapping[str, str]) -> list[Sample]:
    """Samples of a Prometheus text exposition, with the ``extra`` (target) labels added.

    Sample names are kept whole (``x_total``, ``h_bucket``, ``h_sum``, ``s_count``…):
    the parser's family names drop suffixes, the stored series must not.
    """
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as exc:
        raise ExpositionError(f"not in the Prometheus text format: {exc}") from exc
    out = []
    for family in families:
        for sample in family.samples:
            labels = _with_target_labels(sample.labels, extra)
            out.append(Sample(sample.name, labels, float(sample.value)))
    return out


def _with_target_labels(scraped: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    labels = {k: v for k, v in extra.items() if v != ""}
    for name, value in scraped.items():
        if value == "" or name == "__name__":
            continue
        if name in extra:
            name = f"exported_{name}"
            while name in extra or name in scraped:
                name = f"exported_{name}"
        labels[name] = value
    return labels
