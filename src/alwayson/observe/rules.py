"""The alert rules the platform ships with, and the summaries' small template language.

:func:`builtin_rules` turns the spec's ``alerts`` settings into Prometheus-compatible
rules, so ``alwayson export prometheus`` can write the very same rules for a real
Prometheus. The burn-rate pair follows the multi-window, multi-burn-rate alerts of
Google's SRE workbook ("Alerting on SLOs"): a fast burn (14.4 times the budget rate over 1 h,
confirmed over 5 m: 2 % of a 30-day budget gone in an hour) and a slow burn (6 times over
6 h, confirmed over 30 m: 5 % in six hours). Both page.

Every rule keys its alerts by ``site`` where the metric has one, so a ``SiteDown`` of
that site can inhibit them (see :mod:`alwayson.observe.alerting`).

:func:`render_summary` expands the subset of Prometheus' Go templates that summaries
need: ``{{ $labels.name }}``, ``{{ $value }}`` and the filters ``humanize``,
``humanizePercentage`` and ``humanizeDuration``. A placeholder it does not understand is
left as written; it never raises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal

from alwayson.spec.observing import BUILTIN_RULE_NAMES, AlertRule, Alerts

INSTANCE_DOWN = "InstanceDown"
SITE_DOWN = "SiteDown"
HIGH_ERROR_RATE = "HighErrorRate"
LATENCY_ABOVE_OBJECTIVE = "LatencyAboveObjective"
ERROR_BUDGET_BURN_FAST = "ErrorBudgetBurnFast"
ERROR_BUDGET_BURN_SLOW = "ErrorBudgetBurnSlow"
REPLICATION_LAG_HIGH = "ReplicationLagHigh"
RPO_ZERO_LOST = "RPOZeroLost"
BACKUP_TOO_OLD = "BackupTooOld"
BACKUP_VERIFY_FAILING = "BackupVerifyFailing"
DISK_NEARLY_FULL = "DiskNearlyFull"

PLATFORM_RULES = (
    INSTANCE_DOWN,
    SITE_DOWN,
    HIGH_ERROR_RATE,
    LATENCY_ABOVE_OBJECTIVE,
    ERROR_BUDGET_BURN_FAST,
    ERROR_BUDGET_BURN_SLOW,
    DISK_NEARLY_FULL,
)
DATABASE_RULES = (REPLICATION_LAG_HIGH, RPO_ZERO_LOST, BACKUP_TOO_OLD, BACKUP_VERIFY_FAILING)
# One list of names, the spec's (it validates `builtin:` and `disable:` at load time).
BUILTIN_NAMES = BUILTIN_RULE_NAMES
if set(BUILTIN_NAMES) != {*PLATFORM_RULES, *DATABASE_RULES}:
    raise RuntimeError("spec.observing.BUILTIN_RULE_NAMES and the rules defined here differ")

REPLICATION_LAG_LIMIT = 30.0
"""Seconds a standby may trail its primary before ReplicationLagHigh (override by name)."""

_REQUESTS = "alwayson_gateway_requests_total"
_DURATION_BUCKETS = "alwayson_gateway_request_duration_seconds_bucket"


def unknown_builtin_names(alerts: Alerts) -> list[str]:
    """Names in ``alerts.builtin`` (when a list) or ``alerts.disable`` that no built-in
    rule has; the spec loader should reject them, a typo would silently keep a rule on."""
    named = [*alerts.disable, *(alerts.builtin if isinstance(alerts.builtin, list) else [])]
    return sorted({name for name in named if name not in BUILTIN_NAMES})


def builtin_rules(alerts: Alerts, databases: bool) -> list[AlertRule]:
    """The built-in rules ``alerts`` keeps (``builtin`` true, false or a list of names,
    minus ``disable``); the database ones only when the platform has ``databases``.

    Raises ValueError naming any unknown rule name (see :func:`unknown_builtin_names`).
    """
    unknown = unknown_builtin_names(alerts)
    if unknown:
        raise ValueError(
            f"unknown built-in alert rule(s): {', '.join(unknown)}; "
            f"the built-in rules are {', '.join(BUILTIN_NAMES)}"
        )
    if alerts.builtin is False:
        return []
    wanted = set(BUILTIN_NAMES if alerts.builtin is True else alerts.builtin)
    wanted -= set(alerts.disable)
    if not databases:
        wanted -= set(DATABASE_RULES)
    return [rule for rule in _all_builtin(alerts) if rule.name in wanted]


def all_rules(spec_alerts: Alerts, databases: bool) -> list[AlertRule]:
    """Built-in rules then the spec's own; a spec rule named like a built-in replaces it
    in place (even one that ``builtin``/``disable`` turned off, since it was written)."""
    own = {rule.name: rule for rule in spec_alerts.rules}
    rules = [own.pop(rule.name, rule) for rule in builtin_rules(spec_alerts, databases)]
    return rules + [rule for rule in spec_alerts.rules if rule.name in own]


def _number(value: float) -> str:
    """A threshold as PromQL reads it, without float noise (14.4 * 0.001 → 0.0144)."""
    return f"{value:.10g}"


def _error_ratio(window: str, by: str) -> str:
    return (
        f'sum by ({by}) (rate({_REQUESTS}{{code="5xx"}}[{window}]))'
        f" / sum by ({by}) (rate({_REQUESTS}[{window}]))"
    )


def _burn(long: str, short: str, factor: float, objective: float) -> str:
    threshold = _number(factor * (1.0 - objective))
    return (
        f"({_error_ratio(long, 'service')} > {threshold})"
        f" and ({_error_ratio(short, 'service')} > {threshold})"
    )


def _rule(
    name: str,
    expr: str,
    for_: float,
    severity: str,
    summary: str,
    **labels: str,
) -> AlertRule:
    return AlertRule.model_validate(
        {
            "name": name,
            "expr": expr,
            "for": for_,
            "severity": severity,
            "summary": summary,
            "labels": {"source": "builtin", **labels},
        }
    )


def _all_builtin(alerts: Alerts) -> list[AlertRule]:
    objective = alerts.availability_objective
    budget = _number(100.0 * (1.0 - objective))
    return [
        _rule(
            INSTANCE_DOWN,
            "up == 0",
            15.0,
            "warning",
            "{{ $labels.instance }} ({{ $labels.job }}) in {{ $labels.site }} "
            "has not answered its scrape for 15s",
        ),
        _rule(
            SITE_DOWN,
            # The controller already debounces its verdict on a site: fire at once, so
            # the inhibition of that site's other alerts starts before they fire.
            "alwayson_site_up == 0",
            0.0,
            "critical",
            "site {{ $labels.site }} is down",
        ),
        _rule(
            HIGH_ERROR_RATE,
            f"{_error_ratio('5m', 'service, site')} > {_number(alerts.error_rate)}",
            60.0,
            "critical",
            "{{ $labels.service }} in {{ $labels.site }}: {{ $value | humanizePercentage }} "
            f"of answers are 5xx (limit {_number(100 * alerts.error_rate)}%)",
        ),
        _rule(
            LATENCY_ABOVE_OBJECTIVE,
            "histogram_quantile(0.95, sum by (service, site, le) "
            f"(rate({_DURATION_BUCKETS}[5m]))) > {_number(alerts.latency_objective)}",
            120.0,
            "warning",
            "{{ $labels.service }} in {{ $labels.site }}: p95 latency "
            "{{ $value | humanizeDuration }} is above the objective of "
            f"{_number(alerts.latency_objective)}s",
        ),
        _rule(
            ERROR_BUDGET_BURN_FAST,
            _burn("1h", "5m", 14.4, objective),
            120.0,
            "critical",
            "{{ $labels.service }} burns its error budget 14.4 times too fast "
            f"(1h and 5m windows, objective {_number(100 * objective)}%, "
            f"budget {budget}%): 2% of 30 days' budget gone in an hour",
            window="1h/5m",
        ),
        _rule(
            ERROR_BUDGET_BURN_SLOW,
            _burn("6h", "30m", 6.0, objective),
            900.0,
            "critical",
            "{{ $labels.service }} burns its error budget 6 times too fast "
            f"(6h and 30m windows, objective {_number(100 * objective)}%, "
            f"budget {budget}%): 5% of 30 days' budget gone in six hours",
            window="6h/30m",
        ),
        _rule(
            DISK_NEARLY_FULL,
            "alwayson_disk_free_bytes / alwayson_disk_size_bytes "
            f"< {_number(alerts.disk_free_ratio)}",
            300.0,
            "warning",
            "{{ $labels.path }} in {{ $labels.site }} has only "
            "{{ $value | humanizePercentage }} free",
        ),
        _rule(
            REPLICATION_LAG_HIGH,
            f"alwayson_db_replication_lag_seconds > {_number(REPLICATION_LAG_LIMIT)}",
            60.0,
            "warning",
            "database {{ $labels.db }}: the standby in {{ $labels.site }} trails the "
            "primary by {{ $value | humanizeDuration }}",
        ),
        _rule(
            RPO_ZERO_LOST,
            "alwayson_db_rpo_alert == 1",
            0.0,
            "critical",
            "database {{ $labels.db }}: RPO=0 no longer holds "
            "(no synchronous standby confirms commits)",
        ),
        _rule(
            BACKUP_TOO_OLD,
            "time() - alwayson_db_last_verified_backup_timestamp_seconds "
            f"> {_number(alerts.backup_max_age)}",
            600.0,
            "warning",
            "database {{ $labels.db }}: the newest verified backup is "
            "{{ $value | humanizeDuration }} old",
        ),
        _rule(
            BACKUP_VERIFY_FAILING,
            "alwayson_db_backup_verify_failures > 0",
            0.0,
            "warning",
            "database {{ $labels.db }}: {{ $value }} backup restore verification(s) failed",
        ),
    ]


# -- summaries ---------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.DOTALL)
_LABEL = re.compile(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)")
_INDEX = re.compile(r'index\s+\$labels\s+"([A-Za-z_][A-Za-z0-9_]*)"')


def render_summary(template: str, labels: Mapping[str, str], value: float) -> str:
    """Expand ``{{ $labels.x }}``, ``{{ index $labels "x" }}``, ``{{ $value }}`` and
    ``{{ $value | f }}`` for f in humanize, humanizePercentage, humanizeDuration.

    A missing label expands to nothing (Prometheus' ``missingkey=zero``); anything else
    between braces is kept as written. Never raises.
    """

    def expand(match: re.Match[str]) -> str:
        expanded = _expand(match.group(1), labels, value)
        return match.group(0) if expanded is None else expanded

    try:
        return _PLACEHOLDER.sub(expand, template)
    except Exception:  # a summary must never break an evaluation
        return template


def _expand(body: str, labels: Mapping[str, str], value: float) -> str | None:
    head, _, filter_name = (part.strip() for part in body.partition("|"))
    if head == "$value":
        filters = _FILTERS
        if filter_name:
            return filters[filter_name](value) if filter_name in filters else None
        return go_float(value)
    if filter_name:
        return None
    match = _LABEL.fullmatch(head) or _INDEX.fullmatch(head)
    if match is None:
        return None
    return str(labels.get(match.group(1), ""))


def go_float(value: float) -> str:
    """``value`` as Go's ``%v`` prints a float64 (what Prometheus shows for $value):
    shortest digits, exponent form below 1e-4 and from 1e6 on (1e+06)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    point = len(text) + exponent  # digits before the decimal point
    magnitude = point - 1
    prefix = "-" if sign else ""
    if magnitude < -4 or magnitude >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if magnitude < 0 else '+'}{abs(magnitude):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{text}"
    if point >= len(text):
        return f"{prefix}{text}{'0' * (point - len(text))}"
    return f"{prefix}{text[:point]}.{text[point:]}"


def humanize(value: float) -> str:
    """Prometheus' ``humanize``: 4 significant digits and an SI prefix (1.235k, 12m)."""
    if value == 0 or math.isnan(value) or math.isinf(value):
        return f"{value:.4g}"
    prefixes: Sequence[str]
    if abs(value) >= 1:
        prefixes = ("", "k", "M", "G", "T", "P", "E", "Z", "Y")
        index = 0
        while abs(value) >= 1000 and index < len(prefixes) - 1:
            value /= 1000
            index += 1
        return f"{value:.4g}{prefixes[index]}"
    prefixes = ("", "m", "u", "n", "p", "f", "a", "z", "y")
    index = 0
    while abs(value) < 1 and index < len(prefixes) - 1:
        value *= 1000
        index += 1
    return f"{value:.4g}{prefixes[index]}"


def humanize_percentage(value: float) -> str:
    """Prometheus' ``humanizePercentage``: 0.0734 → 7.34%."""
    return f"{value * 100:.4g}%"


def humanize_duration(value: float) -> str:
    """Prometheus' ``humanizeDuration``: 90061 → 1d 1h 1m 1s, 0.25 → 250ms."""
    if math.isnan(value) or math.isinf(value):
        return f"{value:.4g}"
    if value == 0:
        return "0s"
    sign = "-" if value < 0 else ""
    seconds = abs(value)
    if seconds >= 1:
        whole = int(seconds)
        days, rest = divmod(whole, 86400)
        hours, rest = divmod(rest, 3600)
        minutes, _ = divmod(rest, 60)
        secs = seconds - (days * 86400 + hours * 3600 + minutes * 60)
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {int(secs)}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {int(secs)}s"
        if minutes:
            return f"{sign}{minutes}m {int(secs)}s"
        return f"{sign}{secs:.4g}s"
    for unit, scale in (("ms", 1e3), ("us", 1e6), ("ns", 1e9)):
        if seconds * scale >= 1 or unit == "ns":
            return f"{sign}{seconds * scale:.4g}{unit}"
    raise AssertionError("unreachable")  # pragma: no cover


_FILTERS = {
    "humanize": humanize,
    "humanizePercentage": humanize_percentage,
    "humanizeDuration": humanize_duration,
}
