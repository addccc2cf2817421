"""``databases:`` in the spec: a good one loads with its defaults; every bad one is named
at file:line:column with the path of the field to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from alwayson.spec.loading import LoadedSpec, load_spec_text
from alwayson.util.errors import SpecError

FILE = "alwayson.yaml"

SITES = """\
platform: bank
sites:
  - name: west
  - name: east
  - name: witness
    witness: true
"""
SERVICES = """\
services:
  - name: ledger
    version: "1"
    run: python -m bank.ledger
    port: 8001
  - name: accounts
    version: "1"
    run: python -m bank.accounts
    port: 8002
"""
# line 16 is "databases:", line 17 the first database
DATABASES = """\
databases:
  - name: bank
    primary_site: west
    services: [ledger]
"""
GOOD = SITES + SERVICES + DATABASES


def load(text: str) -> LoadedSpec:
    return load_spec_text(text, Path("/nowhere") / FILE, display=FILE, check_commands=False)


def problems_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load(text)
    return [str(p) for p in caught.value.problems]


def test_a_database_loads_with_its_defaults() -> None:
    spec = load(GOOD).spec

    (db,) = spec.databases
    assert (db.name, db.engine, db.primary_site, db.services) == (
        "bank",
        "postgres",
        "west",
        ["ledger"],
    )
    assert db.replication == "synchronous"
    assert db.on_standby_loss == "continue"
    assert db.standby_timeout == 5.0
    assert (db.lease.ttl, db.lease.margin) == (6.0, 2.0)
    assert (db.objectives.rto, db.objectives.rpo) == (10.0, 0.0)
    assert db.backup.schedule == "0 2 * * *"
    assert (db.backup.retention.count, db.backup.retention.age) == (7, 7 * 86400.0)
    assert db.backup.verify is True
    assert db.switchover_max_lag == 16 * 1024 * 1024
    assert (db.bin_dir, db.settings) == (None, {})


def test_database_settings_as_written() -> None:
    text = GOOD + (
        "    replication: asynchronous\n"
        "    on_standby_loss: block\n"
        "    lease: {ttl: 9s, margin: 5.9s}\n"
        "    backup: {schedule: null, retention: {count: 2, age: 1h}}\n"
        "    switchover_max_lag: 1MiB\n"
    )

    (db,) = load(text).spec.databases

    assert (db.replication, db.on_standby_loss) == ("asynchronous", "block")
    assert (db.lease.ttl, db.lease.margin) == (9.0, 5.9)
    assert db.backup.schedule is None
    assert (db.backup.retention.count, db.backup.retention.age) == (2, 3600.0)
    assert db.switchover_max_lag == 1024 * 1024


def test_a_spec_without_databases_needs_no_witness() -> None:
    text = SITES.replace("  - name: witness\n    witness: true\n", "") + SERVICES

    assert load(text).spec.databases == []


@pytest.mark.parametrize("site", ["nowhere", "witness"])
def test_the_primary_site_must_be_a_workload_site(site: str) -> None:
    text = GOOD.replace("primary_site: west", f"primary_site: {site}")

    assert problems_of(text) == [
        f"{FILE}:18:5: databases[0:bank].primary_site: {site!r} is not a workload site "
        "(workload sites: west, east)"
    ]


def test_a_service_that_does_not_exist() -> None:
    text = GOOD.replace("services: [ledger]", "services: [ledger, ghost]")

    assert problems_of(text) == [
        f"{FILE}:19:24: databases[0:bank].services[1]: no service named 'ghost' "
        "(services: accounts, ledger)"
    ]


def test_a_service_gets_one_database() -> None:
    text = GOOD + (
        "  - name: audit\n    primary_site: east\n    services:\n      - accounts\n      - ledger\n"
    )

    assert problems_of(text) == [
        f"{FILE}:24:9: databases[1:audit].services[1]: 'ledger' already uses database 'bank'; "
        "a service gets one DATABASE_URL"
    ]


def test_databases_need_a_witness() -> None:
    text = GOOD.replace("  - name: witness\n    witness: true\n", "")

    assert problems_of(text) == [
        f"{FILE}:14:1: databases: databases need a witness site (a site with witness: true) "
        "to hold the lease that decides which site may write"
    ]


def test_databases_support_at_most_two_workload_sites() -> None:
    text = GOOD.replace("  - name: east\n", "  - name: east\n  - name: north\n")

    assert problems_of(text) == [
        f"{FILE}:17:1: databases: databases support one or two workload sites (primary, standby)"
    ]


def test_one_workload_site_and_a_witness_is_enough() -> None:
    text = GOOD.replace("  - name: east\n", "")

    assert [s.name for s in load(text).spec.workload_sites] == ["west"]


def test_a_bad_cron_schedule() -> None:
    text = GOOD + '    backup: {schedule: "every night"}\n'

    assert problems_of(text) == [
        f"{FILE}:20:14: databases[0:bank].backup.schedule: 'every night' is not a cron "
        "expression (like '0 2 * * *')"
    ]


@pytest.mark.parametrize(
    "lease",
    [
        "{ttl: 6s, margin: 4s}",  # exactly two thirds
        "{ttl: 6s, margin: 5s}",
        "{ttl: 3s, margin: 3s}",
        "{margin: 0}",
    ],
)
def test_the_margin_must_stay_below_two_thirds_of_the_ttl(lease: str) -> None:
    text = GOOD + f"    lease: {lease}\n"

    assert problems_of(text) == [
        f"{FILE}:20:5: databases[0:bank].lease: margin must be above 0 and below two thirds "
        "of ttl, so a primary renews at least once before it has to fence"
    ]


def test_a_margin_just_below_two_thirds_is_accepted() -> None:
    (db,) = load(GOOD + "    lease: {ttl: 6s, margin: 3.99s}\n").spec.databases

    assert db.lease.margin == 3.99


def test_a_too_short_ttl() -> None:
    text = GOOD + "    lease: {ttl: 1s, margin: 100ms}\n"

    assert problems_of(text) == [
        f"{FILE}:20:5: databases[0:bank].lease: ttl must be at least 1.5s "
        "(renewals run every ttl/3)"
    ]


def test_duplicate_database_names() -> None:
    text = GOOD + "  - name: bank\n    primary_site: east\n"

    assert problems_of(text) == [
        f"{FILE}:20:5: databases[1:bank].name: duplicate name 'bank' (also at index 0)"
    ]


def test_every_problem_is_reported_at_once() -> None:
    text = (
        GOOD.replace("primary_site: west", "primary_site: nowhere")
        + "  - name: bank\n    primary_site: west\n    services: [ghost]\n"
    )

    assert problems_of(text) == [
        f"{FILE}:20:5: databases[1:bank].name: duplicate name 'bank' (also at index 0)",
        f"{FILE}:18:5: databases[0:bank].primary_site: 'nowhere' is not a workload site "
        "(workload sites: west, east)",
        f"{FILE}:22:16: databases[1:bank].services[0]: no service named 'ghost' "
        "(services: accounts, ledger)",
    ]
