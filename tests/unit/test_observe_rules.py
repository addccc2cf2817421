"""The built-in alert rules and the summaries' templates."""

from __future__ import annotations

from typing import Any

import promql_parser
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alwayson.observe.rules import (
    BUILTIN_NAMES,
    DATABASE_RULES,
    PLATFORM_RULES,
    all_rules,
    builtin_rules,
    go_float,
    humanize,
    humanize_duration,
    humanize_percentage,
    render_summary,
    unknown_builtin_names,
)
from alwayson.spec.observing import AlertRule, Alerts, rule_expr_problem

# The metric names the platform stores (see the monitoring issue); rules use nothing else.
KNOWN_METRICS = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "alwayson_gateway_requests_total",
    "alwayson_gateway_request_duration_seconds_bucket",
    "alwayson_gateway_request_duration_seconds_sum",
    "alwayson_gateway_request_duration_seconds_count",
    "alwayson_gateway_local_responses_total",
    "alwayson_process_cpu_seconds_total",
    "alwayson_process_resident_memory_bytes",
    "alwayson_instance_ready",
    "alwayson_instance_restarts_total",
    "alwayson_instances",
    "alwayson_site_up",
    "alwayson_disk_free_bytes",
    "alwayson_disk_size_bytes",
    "alwayson_db_up",
    "alwayson_db_primary",
    "alwayson_db_replication_lag_bytes",
    "alwayson_db_replication_lag_seconds",
    "alwayson_db_rpo_alert",
    "alwayson_db_connections",
    "alwayson_db_xact_total",
    "alwayson_db_last_backup_timestamp_seconds",
    "alwayson_db_last_verified_backup_timestamp_seconds",
    "alwayson_db_backup_verify_failures",
}


def _metric_names(node: Any) -> set[str]:
    """Every metric name an expression reads."""
    if isinstance(node, promql_parser.VectorSelector):
        return {node.name} if node.name else set()
    if isinstance(node, promql_parser.MatrixSelector):
        return _metric_names(node.vector_selector)
    if isinstance(node, promql_parser.BinaryExpr):
        return _metric_names(node.lhs) | _metric_names(node.rhs)
    if isinstance(node, promql_parser.AggregateExpr):
        return _metric_names(node.expr) | (_metric_names(node.param) if node.param else set())
    if isinstance(node, promql_parser.Call):
        return set().union(*(_metric_names(arg) for arg in node.args))
    if isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr):
        return _metric_names(node.expr)
    if isinstance(node, promql_parser.SubqueryExpr):
        return _metric_names(node.expr)
    return set()


def _names(rules: list[AlertRule]) -> list[str]:
    return [rule.name for rule in rules]


# -- built-in rules ----------------------------------------------------------------------


def test_all_builtin_rules_by_default_in_a_fixed_order() -> None:
    assert _names(builtin_rules(Alerts(), databases=True)) == [
        "InstanceDown",
        "SiteDown",
        "HighErrorRate",
        "LatencyAboveObjective",
        "ErrorBudgetBurnFast",
        "ErrorBudgetBurnSlow",
        "DiskNearlyFull",
        "ReplicationLagHigh",
        "RPOZeroLost",
        "BackupTooOld",
        "BackupVerifyFailing",
    ]
    assert set(BUILTIN_NAMES) == set(PLATFORM_RULES) | set(DATABASE_RULES)


def test_database_rules_only_with_databases() -> None:
    assert _names(builtin_rules(Alerts(), databases=False)) == list(PLATFORM_RULES)


@pytest.mark.parametrize("databases", [True, False])
def test_every_builtin_rule_is_a_valid_rule_on_known_metrics(databases: bool) -> None:
    for rule in builtin_rules(Alerts(), databases):
        tree = promql_parser.parse(rule.expr)  # raises on a syntax or type error
        assert rule_expr_problem(rule.expr) is None, rule.name
        names = _metric_names(tree)
        assert names, rule.name
        assert names <= KNOWN_METRICS, (rule.name, names - KNOWN_METRICS)
        assert rule.summary and "{{" in rule.summary, rule.name
        assert rule.severity in ("critical", "warning"), rule.name
        assert rule.labels["source"] == "builtin"


def test_builtin_false_turns_them_all_off() -> None:
    assert builtin_rules(Alerts(builtin=False), databases=True) == []


def test_builtin_list_keeps_only_those_and_disable_removes() -> None:
    kept = Alerts(builtin=["SiteDown", "InstanceDown", "RPOZeroLost"], disable=["InstanceDown"])
    assert _names(builtin_rules(kept, databases=True)) == ["SiteDown", "RPOZeroLost"]
    assert _names(builtin_rules(kept, databases=False)) == ["SiteDown"]
    off = Alerts(disable=["DiskNearlyFull", "BackupTooOld"])
    names = _names(builtin_rules(off, databases=True))
    assert "DiskNearlyFull" not in names and "BackupTooOld" not in names
    assert len(names) == len(BUILTIN_NAMES) - 2


def test_unknown_builtin_names_are_refused_not_ignored() -> None:
    with pytest.raises(ValueError, match="unknown built-in rule"):
        Alerts(disable=["InstanceDwon"], builtin=["SiteDown", "Nope"])  # the spec refuses it
    # ...and so do the rules themselves, for settings made without validation
    typo = Alerts.model_construct(disable=["InstanceDwon"], builtin=["SiteDown", "Nope"])
    assert unknown_builtin_names(typo) == ["InstanceDwon", "Nope"]
    with pytest.raises(ValueError, match="InstanceDwon, Nope"):
        builtin_rules(typo, databases=True)
    assert unknown_builtin_names(Alerts(disable=["SiteDown"])) == []


def test_thresholds_follow_the_settings() -> None:
    settings = Alerts(
        error_rate=0.02,
        latency_objective=0.25,
        availability_objective=0.99,
        disk_free_ratio=0.15,
        backup_max_age=3600.0,
    )
    rules = {rule.name: rule for rule in builtin_rules(settings, databases=True)}
    assert rules["HighErrorRate"].expr.endswith("> 0.02")
    assert rules["LatencyAboveObjective"].expr.endswith("> 0.25")
    assert "histogram_quantile(0.95, " in rules["LatencyAboveObjective"].expr
    assert rules["DiskNearlyFull"].expr.endswith("< 0.15")
    assert rules["BackupTooOld"].expr.endswith("> 3600")
    # 14.4 and 6 times the 1% budget, each over a long and a short window
    fast, slow = rules["ErrorBudgetBurnFast"].expr, rules["ErrorBudgetBurnSlow"].expr
    assert fast.count("> 0.144") == 2 and "[1h]" in fast and "[5m]" in fast
    assert slow.count("> 0.06") == 2 and "[6h]" in slow and "[30m]" in slow
    assert " and " in fast and " and " in slow


def test_default_burn_thresholds_have_no_float_noise() -> None:
    rules = {rule.name: rule for rule in builtin_rules(Alerts(), databases=False)}
    assert rules["ErrorBudgetBurnFast"].expr.count("> 0.0144)") == 2
    assert rules["ErrorBudgetBurnSlow"].expr.count("> 0.006)") == 2


def test_site_down_fires_before_the_alerts_it_inhibits() -> None:
    rules = {rule.name: rule for rule in builtin_rules(Alerts(), databases=True)}
    site_down = rules.pop("SiteDown")
    assert site_down.severity == "critical"
    assert site_down.for_ < rules["InstanceDown"].for_
    assert site_down.for_ < rules["HighErrorRate"].for_


def test_a_user_rule_replaces_the_builtin_of_its_name_in_place() -> None:
    fast_down = AlertRule.model_validate(
        {"name": "InstanceDown", "expr": 'up{job="instances"} == 0', "for": "0s"}
    )
    extra = AlertRule(name="QueueDeep", expr="alwayson_instances > 10")
    rules = all_rules(Alerts(rules=[extra, fast_down]), databases=False)
    assert _names(rules) == [*PLATFORM_RULES, "QueueDeep"]
    assert rules[0] is fast_down
    assert rules[-1] is extra


def test_a_user_rule_named_like_a_disabled_builtin_still_runs() -> None:
    mine = AlertRule(name="DiskNearlyFull", expr="alwayson_disk_free_bytes < 1e9")
    rules = all_rules(Alerts(disable=["DiskNearlyFull"], rules=[mine]), databases=False)
    assert rules.count(mine) == 1
    assert _names(rules).count("DiskNearlyFull") == 1


# -- summaries ---------------------------------------------------------------------------


def test_summary_expands_labels_and_value() -> None:
    labels = {"instance": "accounts@jakarta#0", "job": "instances", "site": "jakarta"}
    assert (
        render_summary("{{ $labels.instance }} ({{$labels.job}}) in {{ $labels.site }}", labels, 0)
        == "accounts@jakarta#0 (instances) in jakarta"
    )
    assert render_summary("value {{ $value }}", {}, 0.0734) == "value 0.0734"
    assert render_summary('{{ index $labels "site" }}!', labels, 1) == "jakarta!"
    assert render_summary("{{- $labels.site -}}", labels, 1) == "jakarta"


def test_builtin_summaries_render_like_prometheus() -> None:
    # The expected strings are what `promtool test rules` rendered for the same alerts.
    rules = {rule.name: rule for rule in builtin_rules(Alerts(), databases=True)}
    series = {"service": "accounts", "site": "jakarta"}
    assert (
        render_summary(rules["HighErrorRate"].summary, series, 0.1)
        == "accounts in jakarta: 10% of answers are 5xx (limit 5%)"
    )
    assert (
        render_summary(rules["LatencyAboveObjective"].summary, series, 0.95)
        == "accounts in jakarta: p95 latency 950ms is above the objective of 0.5s"
    )
    assert (
        render_summary(rules["DiskNearlyFull"].summary, {"path": "/data", "site": "jakarta"}, 0.05)
        == "/data in jakarta has only 5% free"
    )


def test_missing_labels_expand_to_nothing() -> None:
    assert render_summary("[{{ $labels.nope }}]", {"site": "x"}, 1) == "[]"


@pytest.mark.parametrize(
    "template",
    [
        "{{ $labels. }}",
        "{{ .Labels.site }}",
        "{{ $value | toUpper }}",
        "{{ $labels.site | humanize }}",
        '{{ printf "%.2f" $value }}',
        "{{ $externalLabels.x }}",
        "unclosed {{ $value",
    ],
)
def test_what_it_does_not_understand_stays_as_written(template: str) -> None:
    assert render_summary(template, {"site": "jakarta"}, 2.0) == template


def test_good_placeholders_expand_beside_bad_ones() -> None:
    assert render_summary("{{ $value }} {{ bad }}", {}, 3) == "3 {{ bad }}"


@given(st.text(), st.dictionaries(st.text(), st.text()), st.floats())
def test_render_summary_never_raises(template: str, labels: dict[str, str], value: float) -> None:
    assert isinstance(render_summary(template, labels, value), str)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (3.0, "3"),
        (-2.5, "-2.5"),
        (0.0144, "0.0144"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (123456.0, "123456"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (float("nan"), "NaN"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
    ],
)
def test_value_prints_like_go(value: float, text: str) -> None:
    assert go_float(value) == text
    assert render_summary("{{ $value }}", {}, value) == text


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_go_float_round_trips(value: float) -> None:
    assert float(go_float(value)) == value


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.0, "0"), (1234.0, "1.234k"), (2.5e9, "2.5G"), (0.012, "12m"), (-3e-6, "-3u"), (7, "7")],
)
def test_humanize(value: float, text: str) -> None:
    assert humanize(value) == text
    assert render_summary("{{ $value | humanize }}", {}, value) == text


def test_humanize_percentage_and_duration() -> None:
    assert humanize_percentage(0.0734) == "7.34%"
    assert humanize_duration(0) == "0s"
    assert humanize_duration(0.25) == "250ms"
    assert humanize_duration(2.5e-6) == "2.5us"
    assert humanize_duration(42) == "42s"
    assert humanize_duration(90) == "1m 30s"
    assert humanize_duration(3 * 3600 + 5) == "3h 0m 5s"
    assert humanize_duration(90061) == "1d 1h 1m 1s"
    assert humanize_duration(-90) == "-1m 30s"
