"""The spec's drills section, the drill context file, and what history and the dashboard
show of a result."""

from __future__ import annotations

from pathlib import Path

import pytest

from alwayson.control.drilling import _service_for, _summary
from alwayson.drills.model import DatabaseTarget, DrillContext
from alwayson.spec.loading import load_spec_text
from alwayson.util.errors import SpecError

SPEC = """\
platform: bank
sites:
  - name: jakarta
  - name: surabaya
  - name: witness
    witness: true
services:
  - name: onboarding
    version: 1.0.0
    run: python -m bank.onboarding
    port: 8000
    routes: [{path: /onboarding}]
  - name: accounts
    version: 1.0.0
    run: python -m bank.accounts
    port: 8001
    routes: [{path: /accounts}, {path: /}]
drills:
  rate: 25
  schedules:
    - scenario: site-loss
      cron: "0 3 * * 1"
      site: jakarta
      duration: 20s
"""


def load(text: str) -> object:
    return load_spec_text(text, Path("/x/alwayson.yaml"), check_commands=False).spec


def test_a_schedule_is_read_with_its_defaults() -> None:
    spec = load(SPEC)
    drills = spec.drills  # type: ignore[attr-defined]
    assert drills.rate == 25 and drills.rto == 10.0 and drills.journey == "auto"
    (plan,) = drills.schedules
    assert (plan.scenario, plan.cron, plan.site, plan.duration) == (
        "site-loss",
        "0 3 * * 1",
        "jakarta",
        20.0,
    )


@pytest.mark.parametrize(
    ("change", "where", "says"),
    [
        ("scenario: site-loss", "drills.schedules[0].scenario", "meteor"),
        ('cron: "0 3 * * 1"', "drills.schedules[0].cron", "cron"),
        ("site: jakarta", "drills.schedules[0].site", "workload site"),
    ],
)
def test_a_bad_schedule_names_its_field(change: str, where: str, says: str) -> None:
    bad = {
        "scenario: site-loss": "scenario: meteor",
        'cron: "0 3 * * 1"': 'cron: "every monday"',
        "site: jakarta": "site: witness",
    }[change]
    with pytest.raises(SpecError) as caught:
        load(SPEC.replace(change, bad))
    (problem,) = caught.value.problems
    assert problem.path == where and says in problem.message
    assert problem.line > 1  # points into the file


def test_the_journey_service_is_the_longest_route_prefix() -> None:
    spec = load(SPEC)
    assert _service_for(spec, "/onboarding/register") == "onboarding"  # type: ignore[arg-type]
    assert _service_for(spec, "/accounts/1") == "accounts"  # type: ignore[arg-type]
    assert _service_for(spec, "/other") == "accounts"  # type: ignore[arg-type]


def test_the_context_file_round_trips() -> None:
    ctx = DrillContext(
        id="d1",
        scenario="site-loss",
        site=None,
        rate=20,
        duration=15,
        journey="/",
        actor="cli",
        api="http://127.0.0.1:7070",
        token="t",
        front_door="http://127.0.0.1:8080",
        run_dir="/r",
        state_dir="/s",
        partitions_file="/s/data/partitions.json",
        sites=["jakarta", "surabaya"],
        witness="witness",
        controller_pid=1,
        controller_restart=["python"],
        rto_objective=10.0,
        databases=[DatabaseTarget("bank", "jakarta", "synchronous", 10.0, 0.0, {}, {})],
    )
    assert DrillContext.from_json(ctx.to_json()) == ctx


def test_history_and_the_dashboard_summarise_a_result() -> None:
    record = {
        "id": "d1",
        "scenario": "site-loss",
        "status": "passed",
        "actor": "cli",
        "started_at": 10.0,
        "finished_at": 70.0,
        "result": {
            "site": "jakarta",
            "measures": {
                "requests": 900,
                "failed_after_fault": 91,
                "detect_seconds": 0.3,
                "rto_seconds": 5.9,
                "longest_gap_seconds": 5.9,
            },
            "rpo": {"acknowledged_writes_lost": 0, "lag_at_fault": {"replay_age_seconds": 5.8}},
        },
    }
    row = _summary(record)
    assert row["site"] == "jakarta" and row["rto_seconds"] == 5.9 and row["failed"] == 91
    assert row["lost"] == 0 and row["rpo_seconds"] == 0.0  # nothing acknowledged was lost
    record["result"]["rpo"]["acknowledged_writes_lost"] = 3  # type: ignore[index]
    assert _summary(record)["rpo_seconds"] == 5.8
    assert _summary({"id": "d2", "scenario": "x", "status": "aborted"})["rto_seconds"] is None
