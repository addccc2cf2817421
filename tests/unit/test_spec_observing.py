"""``metrics:``, ``alerts:``, ``notifications:`` and ``autoscale:`` in the spec: defaults,
and every bad value named at file:line:column with the field to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from alwayson.spec.loading import LoadedSpec, load_spec_text
from alwayson.spec.observing import check_expr_problem, rule_expr_problem
from alwayson.util.errors import SpecError

FILE = "alwayson.yaml"
BASE = """\
platform: bank
sites:
  - name: west
  - name: east
  - name: witness
    witness: true
services:
  - name: accounts
    version: "1"
    run: python -m bank.accounts
    port: 8002
"""


def load(text: str) -> LoadedSpec:
    return load_spec_text(text, Path("/nowhere") / FILE, display=FILE, check_commands=False)


def problems_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load(text)
    return [str(p) for p in caught.value.problems]


def test_defaults_scrape_every_5s_with_builtin_rules_and_no_receivers() -> None:
    spec = load(BASE).spec
    assert spec.metrics.scrape_interval == 5.0
    assert spec.metrics.retention.raw == 6 * 3600
    assert spec.alerts.builtin is True and spec.alerts.rules == []
    assert spec.alerts.repeat_interval == 4 * 3600
    assert spec.notifications == []
    assert spec.services[0].autoscale is None


def test_receivers_rules_and_autoscale_load() -> None:
    text = BASE.replace(
        "    port: 8002\n",
        "    port: 8002\n    autoscale: {min: 2, max: 8, targets: {rps: 50, p95: 200ms}}\n",
    ) + (
        "alerts:\n"
        "  rules:\n"
        "    - name: QueueDeep\n"
        "      expr: sum(bank_queue_depth) > 100\n"
        "      for: 1m\n"
        "      severity: critical\n"
        "      summary: queue at {{ $value }}\n"
        "notifications:\n"
        "  - name: oncall\n"
        "    webhook: {url: 'http://127.0.0.1:9000/alerts'}\n"
        "  - name: sre-mail\n"
        "    email: {to: sre@bank.example, smarthost: '127.0.0.1:2525'}\n"
        "  - name: chat\n"
        "    slack: {url: 'http://127.0.0.1:9001/hook', channel: '#ops'}\n"
    )
    spec = load(text).spec
    scale = spec.services[0].autoscale
    assert scale is not None and (scale.min, scale.max) == (2, 8)
    assert scale.targets.rps == 50 and scale.targets.p95 == 0.2
    assert (scale.scale_up.stabilization, scale.scale_down.stabilization) == (0.0, 300.0)
    (rule,) = spec.alerts.rules
    assert (rule.name, rule.for_, rule.severity) == ("QueueDeep", 60.0, "critical")
    assert [r.kind for r in spec.notifications] == ["webhook", "email", "slack"]
    assert spec.notifications[1].email is not None
    assert spec.notifications[1].email.sender == "alwayson@localhost"


@pytest.mark.parametrize(
    ("extra", "where", "why"),
    [
        (
            "alerts:\n  rules:\n    - name: Bad\n      expr: 'sum(up'\n",
            "alerts.rules[0:Bad].expr",
            "not valid PromQL",
        ),
        (
            "alerts:\n  rules:\n    - name: NoCompare\n      expr: sum(up)\n",
            "alerts.rules[0:NoCompare].expr",
            "must end in a comparison",
        ),
        (
            "notifications:\n  - name: two\n    webhook: {url: 'http://x'}\n"
            "    slack: {url: 'http://y'}\n",
            "notifications[0:two]",
            "exactly one of webhook, email, slack",
        ),
        (
            "notifications:\n  - name: a\n    webhook: {url: 'http://x'}\n"
            "  - name: a\n    webhook: {url: 'http://y'}\n",
            "notifications[1:a].name",
            "duplicate name 'a'",
        ),
        (
            "metrics: {scrape_interval: 1s, scrape_timeout: 2s}\n",
            "metrics",
            "scrape_timeout must not exceed scrape_interval",
        ),
    ],
)
def test_bad_values_are_located(extra: str, where: str, why: str) -> None:
    found = problems_of(BASE + extra)
    assert any(where in p and why in p for p in found), found


def test_autoscale_min_above_max_is_located() -> None:
    text = BASE.replace(
        "    port: 8002\n", "    port: 8002\n    autoscale: {min: 5, max: 2, targets: {cpu: 0.5}}\n"
    )
    found = problems_of(text)
    assert any(
        "services[0:accounts].autoscale" in p and "min (5) is more than max (2)" in p for p in found
    ), found


def test_autoscale_needs_a_target() -> None:
    text = BASE.replace(
        "    port: 8002\n", "    port: 8002\n    autoscale: {max: 3, targets: {}}\n"
    )
    found = problems_of(text)
    assert any("give at least one target" in p for p in found), found


@pytest.mark.parametrize(
    ("expr", "ok"),
    [
        ("up == 0", True),
        ("rate(x[5m]) > 0.5 and rate(x[1h]) > 0.5", True),
        ("sum(up)", False),
        ("up +", False),
    ],
)
def test_rule_expressions(expr: str, ok: bool) -> None:
    assert (rule_expr_problem(expr) is None) is ok


def test_the_spec_knows_every_builtin_rule_name() -> None:
    from alwayson.observe.rules import BUILTIN_NAMES
    from alwayson.spec.observing import BUILTIN_RULE_NAMES

    assert set(BUILTIN_RULE_NAMES) == set(BUILTIN_NAMES)


def test_a_misspelt_builtin_rule_is_refused() -> None:
    found = problems_of(BASE + "alerts:\n  disable: [DiskFull]\n")
    assert any("unknown built-in rule(s) DiskFull" in p for p in found), found


# --------------------------------------------------------------------------- release checks

CHECKS = """\
    release:
      analysis:
        checks:
          - 'rate(bank_requests_total{code=~"5.."}[1m]) < 0.5'
          - {check}
"""


def test_a_bad_release_check_is_refused_at_its_line_and_column() -> None:
    text = BASE + CHECKS.replace("{check}", "'rate(bank_requests_total[1m]'")
    (problem,) = problems_of(text)
    assert problem.startswith(
        f"{FILE}:16:13: services[0:accounts].release.analysis.checks[1]: not valid PromQL"
    ), problem


@pytest.mark.parametrize(
    ("check", "why"),
    [
        ("'sum(rate(errors_total[1m]))'", "must end in a comparison"),
        ("'up and up'", "must end in a comparison"),
        ("'rate(errors_total[1m]) < bool 1'", "could never fail"),
        ("'increase(x[5m] < 1'", "not valid PromQL"),
    ],
)
def test_release_checks_are_validated_like_alert_rules(check: str, why: str) -> None:
    (problem,) = problems_of(BASE + CHECKS.replace("{check}", check))
    assert "services[0:accounts].release.analysis.checks[1]: " in problem, problem
    assert why in problem, problem


@pytest.mark.parametrize(
    ("expr", "ok"),
    [
        ('rate(bank_requests_total{code=~"5.."}[1m]) < 0.5', True),
        ("sum(increase(x[5m])) <= 3", True),
        ("histogram_quantile(0.99, sum by (le) (rate(h_bucket[1m]))) < 0.3", True),
        ("bank_requests_in_flight > 0", True),
        ("sum(x)", False),
        ("x > bool 1", False),
        ("x or y", False),
    ],
)
def test_check_expressions(expr: str, ok: bool) -> None:
    assert (check_expr_problem(expr) is None) is ok


def test_good_release_checks_load() -> None:
    spec = load(BASE + CHECKS.replace("{check}", "'sum(increase(x[5m])) <= 3'")).spec
    assert spec.services[0].release.analysis.checks[1] == "sum(increase(x[5m])) <= 3"
