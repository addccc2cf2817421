"""``alwayson export prometheus DIR`` writes files that Prometheus's and Alertmanager's
own checkers accept (promtool and amtool from Debian's packages, scripts/install-promtools.sh),
with exactly the rules alwayson evaluates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from alwayson.api.tokens import Principal, TokenBook
from alwayson.observe.rules import all_rules
from alwayson.spec.loading import load_spec_text

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "usr" / "bin"
SPEC = """\
platform: bank
sites:
  - name: jakarta
  - name: surabaya
  - name: witness
    witness: true
services:
  - name: accounts
    version: "1"
    run: python -m bank.accounts
    port: 8002
databases:
  - name: bank
    primary_site: jakarta
    services: [accounts]
alerts:
  rules:
    - name: QueueDeep
      expr: sum by (site) (bank_queue_depth) > 100
      for: 90s
      severity: critical
      summary: "queue in {{ $labels.site }} at {{ $value }}"
notifications:
  - name: oncall
    webhook: {url: 'http://127.0.0.1:9000/alerts'}
  - name: sre-mail
    email: {to: sre@bank.example, smarthost: '127.0.0.1:2525', from: alwayson@bank.example}
  - name: chat
    slack: {url: 'http://127.0.0.1:9001/hook', channel: '#ops'}
"""


@pytest.fixture(scope="module")
def tools() -> Path:
    subprocess.run(["bash", str(ROOT / "scripts" / "install-promtools.sh")], check=True)
    return TOOLS


def test_exported_files_pass_promtool_and_amtool(tmp_path: Path, tools: Path) -> None:
    (tmp_path / "alwayson.yaml").write_text(SPEC)
    out = tmp_path / "export"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "alwayson"), "export", "prometheus", str(out), "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    files = {Path(p).name for p in json.loads(done.stdout)["files"]}
    assert files == {
        "alwayson.token",
        "prometheus.yml",
        "alwayson.rules.yml",
        "alertmanager.yml",
        "grafana-dashboard.json",
        "gateways.json",
    }
    for args in (
        [tools / "promtool", "check", "config", out / "prometheus.yml"],
        [tools / "promtool", "check", "rules", out / "alwayson.rules.yml"],
        [tools / "amtool", "check-config", out / "alertmanager.yml"],
    ):
        checked = subprocess.run([str(a) for a in args], capture_output=True, text=True)
        assert checked.returncode == 0, f"{args[1:]}: {checked.stdout}{checked.stderr}"

    spec = load_spec_text(SPEC, tmp_path / "alwayson.yaml", check_commands=False).spec
    rules = YAML(typ="safe").load((out / "alwayson.rules.yml").read_text())["groups"][0]["rules"]
    expected = all_rules(spec.alerts, databases=True)
    assert [r["alert"] for r in rules] == [r.name for r in expected]
    assert [r["expr"] for r in rules] == [r.expr for r in expected]
    mine = next(r for r in rules if r["alert"] == "QueueDeep")
    assert mine["for"] == "90s" and mine["labels"]["severity"] == "critical"

    # Prometheus scrapes with a read-only token of its own, never the owner's.
    config = YAML(typ="safe").load((out / "prometheus.yml").read_text())
    scrape = config["scrape_configs"][0]["authorization"]["credentials_file"]
    assert scrape == str((out / "alwayson.token").resolve())
    assert (out / "alwayson.token").stat().st_mode & 0o777 == 0o600
    book = TokenBook(tmp_path / ".alwayson", "owner-token")
    assert book.authenticate((out / "alwayson.token").read_text().strip()) == Principal(
        "prometheus", "read"
    )

    manager = YAML(typ="safe").load((out / "alertmanager.yml").read_text())
    assert [r["name"] for r in manager["receivers"]] == ["oncall", "sre-mail", "chat"]
    assert manager["inhibit_rules"][0]["equal"] == ["site"]
    dashboard = json.loads((out / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert any("alwayson_db_replication_lag_bytes" in e for e in exprs)
