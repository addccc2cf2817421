"""``alwayson export prometheus DIR``: the same monitoring, for a real Prometheus stack.

Writes, from the spec alone:

- ``prometheus.yml``: federates the controller's ``/metrics`` (everything alwayson
  scraped and computed, with its labels, bearer token from the state directory) and
  scrapes the site gateways directly through ``file_sd`` targets
  (``targets/gateways.json``); loads the rules file; sends alerts to Alertmanager;
- ``alwayson.rules.yml``: exactly the alert rules alwayson evaluates (built-in and the
  spec's own), so both fire on the same conditions;
- ``alertmanager.yml``: the spec's receivers, the same grouping, repetition and the
  site-down inhibition;
- ``grafana-dashboard.json``: a dashboard over the same metric names.

The files are checked by ``promtool check config|rules`` and ``amtool check-config`` in
the tests.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from alwayson.observe.rules import all_rules
from alwayson.spec.models import PlatformSpec
from alwayson.spec.observing import Receiver

ALERTMANAGER = "127.0.0.1:9093"
RULES_FILE = "alwayson.rules.yml"


def prom_duration(seconds: float) -> str:
    """Prometheus's duration syntax (whole units only, no fractions)."""
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms"
    whole = millis // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _yaml(data: Any) -> str:
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def prometheus_config(spec: PlatformSpec, credentials: Path) -> dict[str, Any]:
    """Prometheus's configuration; ``credentials`` is the file of the bearer token it
    scrapes the controller with (a read-only token made for it by ``export``)."""
    interval = prom_duration(spec.metrics.scrape_interval)
    timeout = prom_duration(spec.metrics.scrape_timeout)
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": timeout,
            "evaluation_interval": prom_duration(spec.alerts.evaluation_interval),
            "external_labels": {"platform": spec.platform},
        },
        "rule_files": [RULES_FILE],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [ALERTMANAGER]}]}]},
        "scrape_configs": [
            {
                "job_name": "alwayson",
                "honor_labels": True,
                "metrics_path": "/metrics",
                "authorization": {"credentials_file": str(credentials.resolve())},
                "static_configs": [{"targets": [spec.controller.api]}],
            },
            {
                "job_name": "alwayson-gateways",
                "file_sd_configs": [{"files": ["targets/gateways.json"]}],
            },
        ],
    }


def gateway_targets(spec: PlatformSpec) -> list[dict[str, Any]]:
    return [
        {
            "targets": [f"{spec.gateway_address(site.name)}:{spec.gateway.admin_port}"],
            "labels": {"gateway_site": site.name},
        }
        for site in spec.workload_sites
    ]


def rules_file(spec: PlatformSpec) -> dict[str, Any]:
    rules = []
    for rule in all_rules(spec.alerts, bool(spec.databases)):
        entry: dict[str, Any] = {"alert": rule.name, "expr": rule.expr}
        if rule.for_:
            entry["for"] = prom_duration(rule.for_)
        entry["labels"] = {"severity": rule.severity, **rule.labels}
        if rule.summary:
            entry["annotations"] = {"summary": rule.summary}
        rules.append(entry)
    return {"groups": [{"name": f"alwayson-{spec.platform}", "rules": rules}]}


def _receiver(receiver: Receiver) -> dict[str, Any]:
    out: dict[str, Any] = {"name": receiver.name}
    if receiver.webhook is not None:
        out["webhook_configs"] = [
            {"url": receiver.webhook.url, "send_resolved": receiver.send_resolved}
        ]
    elif receiver.email is not None:
        mail = receiver.email
        out["email_configs"] = [
            {
                "to": mail.to,
                "from": mail.sender,
                "smarthost": mail.smarthost,
                "require_tls": mail.starttls,
                "send_resolved": receiver.send_resolved,
            }
        ]
    elif receiver.slack is not None:
        slack: dict[str, Any] = {
            "api_url": receiver.slack.url,
            "send_resolved": receiver.send_resolved,
        }
        if receiver.slack.channel:
            slack["channel"] = receiver.slack.channel
        out["slack_configs"] = [slack]
    return out


def alertmanager_config(spec: PlatformSpec) -> dict[str, Any]:
    alerts = spec.alerts
    receivers = [_receiver(r) for r in spec.notifications]
    route: dict[str, Any] = {
        "group_by": list(alerts.group_by),
        "group_wait": prom_duration(alerts.group_wait),
        "group_interval": prom_duration(max(alerts.group_interval, 1.0)),
        "repeat_interval": prom_duration(alerts.repeat_interval),
    }
    if receivers:
        # With no routing rules every alert goes to every receiver: one child per receiver.
        route["receiver"] = receivers[0]["name"]
        route["routes"] = [
            {"receiver": r["name"], "matchers": ['alertname=~".+"'], "continue": True}
            for r in receivers
        ]
    else:
        receivers = [{"name": "none"}]
        route["receiver"] = "none"
    return {
        "route": route,
        "receivers": receivers,
        "inhibit_rules": [
            {
                "source_matchers": ['alertname="SiteDown"'],
                "target_matchers": ['alertname!="SiteDown"'],
                "equal": ["site"],
            }
        ],
    }


def _panel(ident: int, title: str, exprs: list[tuple[str, str]], unit: str) -> dict[str, Any]:
    return {
        "id": ident,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * ((ident - 1) % 2), "y": 8 * ((ident - 1) // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(exprs)
        ],
    }


def grafana_dashboard(spec: PlatformSpec) -> dict[str, Any]:
    req = "alwayson_gateway_requests_total"
    hist = "alwayson_gateway_request_duration_seconds_bucket"
    panels = [
        _panel(
            1,
            "Requests per second",
            [(f"sum by (site, service) (rate({req}[1m]))", "{{service}} @ {{site}}")],
            "reqps",
        ),
        _panel(
            2,
            "Error ratio (5xx)",
            [
                (
                    f'sum by (site, service) (rate({req}{{code="5xx"}}[5m])) / '
                    f"sum by (site, service) (rate({req}[5m]))",
                    "{{service}} @ {{site}}",
                )
            ],
            "percentunit",
        ),
        _panel(
            3,
            "p95 latency",
            [
                (
                    f"histogram_quantile(0.95, sum by (site, service, le) (rate({hist}[5m])))",
                    "{{service}} @ {{site}}",
                )
            ],
            "s",
        ),
        _panel(
            4,
            "Instances ready",
            [("sum by (site, service) (alwayson_instance_ready)", "{{service}} @ {{site}}")],
            "short",
        ),
        _panel(
            5,
            "CPU (cores)",
            [
                (
                    "sum by (site, service) (rate(alwayson_process_cpu_seconds_total[1m]))",
                    "{{service}} @ {{site}}",
                )
            ],
            "short",
        ),
        _panel(
            6,
            "Memory (RSS)",
            [
                (
                    "sum by (site, service) (alwayson_process_resident_memory_bytes)",
                    "{{service}} @ {{site}}",
                )
            ],
            "bytes",
        ),
    ]
    if spec.databases:
        panels.append(
            _panel(
                7,
                "Database replication lag",
                [("alwayson_db_replication_lag_bytes", "{{db}} @ {{site}}")],
                "bytes",
            )
        )
        panels.append(
            _panel(8, "Database primary", [("alwayson_db_primary", "{{db}} @ {{site}}")], "short")
        )
    return {
        "title": f"alwayson — {spec.platform}",
        "uid": f"alwayson-{spec.platform}"[:40],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "10s",
        "tags": ["alwayson"],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                }
            ]
        },
        "panels": panels,
    }


def export_prometheus(spec: PlatformSpec, credentials: Path, folder: Path) -> list[Path]:
    """Write the four files (and the gateways' file_sd targets); return their paths.
    ``credentials``: the token file Prometheus scrapes the controller with."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "targets").mkdir(exist_ok=True)
    files = {
        folder / "prometheus.yml": _yaml(prometheus_config(spec, credentials)),
        folder / RULES_FILE: _yaml(rules_file(spec)),
        folder / "alertmanager.yml": _yaml(alertmanager_config(spec)),
        folder / "grafana-dashboard.json": json.dumps(grafana_dashboard(spec), indent=2) + "\n",
        folder / "targets" / "gateways.json": json.dumps(gateway_targets(spec), indent=2) + "\n",
    }
    for path, text in files.items():
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return list(files)
