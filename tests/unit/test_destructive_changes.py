"""Destructive changes are planned as such and `apply` refuses them unless allowed.

The probe that found this: deleting the `databases:` block planned as "no changes",
applied as "applied 0 change(s)", recorded nothing in the audit log, and stopped both
PostgreSQL servers; the bank's services lost DATABASE_URL and a registration answered 200
was gone. Changing `primary_site` or `replication` also planned as "no changes".
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.unit.controlparts import memory_controller

from alwayson.spec.loading import load_spec_text
from alwayson.spec.models import PlatformSpec
from alwayson.spec.planning import ChangeKind, destructive, plan
from alwayson.store.memory import MemoryStore
from alwayson.util.errors import ConflictError

BASE = """\
platform: bank
sites:
  - name: jakarta
  - name: surabaya
  - name: witness
    witness: true
services:
  - {name: accounts, version: "1.0.0", run: python -m x, port: 8000}
  - {name: payments, version: "1.0.0", run: python -m x, port: 8001}
"""
DB = """\
databases:
  - name: bank
    primary_site: jakarta
    replication: synchronous
    services: [accounts, payments]
"""


def spec(text: str) -> PlatformSpec:
    return load_spec_text(text, Path("/nowhere/alwayson.yaml"), check_commands=False).spec


def shown(new: str, current: str) -> list[str]:
    return [str(c) for c in plan(spec(new), spec(current), {})]


def test_removing_a_database_plans_as_a_destroy_and_names_what_it_takes() -> None:
    changes = plan(spec(BASE), spec(BASE + DB), {})

    assert [str(c) for c in changes] == [
        "- database bank: both PostgreSQL servers stop; accounts, payments lose "
        "DATABASE_URL [DESTRUCTIVE: its data is no longer served and services that used it "
        "lose their writes; take a backup first (`alwayson backup create`)]",
        "~ service accounts: loses DATABASE_URL (database bank): its instances are replaced "
        "without it",
        "~ service payments: loses DATABASE_URL (database bank): its instances are replaced "
        "without it",
    ]
    assert [c.kind for c in destructive(changes)] == [ChangeKind.REMOVE]


@pytest.mark.parametrize(
    ("field", "old", "new", "why"),
    [
        ("primary_site", "jakarta", "surabaya", "db switchover NAME --to SITE"),
        ("replication", "synchronous", "asynchronous", "RPO > 0"),
    ],
)
def test_a_database_identity_change_is_destructive(
    field: str, old: str, new: str, why: str
) -> None:
    changed = DB.replace(f"{field}: {old}", f"{field}: {new}")

    found = shown(BASE + changed, BASE + DB)

    assert len(found) == 1
    assert found[0].startswith(f"~ database bank: {field} '{old}' → '{new}' [DESTRUCTIVE: ")
    assert why in found[0]


def test_a_service_leaving_a_database_is_a_planned_change_not_a_destroy() -> None:
    changes = plan(
        spec(BASE + DB.replace("[accounts, payments]", "[accounts]")), spec(BASE + DB), {}
    )

    assert [str(c) for c in changes] == [
        "~ service payments: loses DATABASE_URL (database bank): its instances are replaced "
        "without it"
    ]
    assert destructive(changes) == []


def test_adding_a_database_and_tuning_one_are_not_destructive() -> None:
    added = plan(spec(BASE + DB), spec(BASE), {})
    assert str(added[0]).startswith("+ database bank: primary in jakarta, synchronous")
    assert destructive(added) == []
    tuned = DB + "    standby_timeout: 30s\n"
    changes = plan(spec(BASE + tuned), spec(BASE + DB), {})
    assert [str(c) for c in changes] == ["~ database bank: standby_timeout 5.0 → 30.0"]
    assert destructive(changes) == []


def test_other_sections_are_no_longer_silent() -> None:
    text = BASE + "metrics: {scrape_interval: 15s}\n"

    assert shown(text, BASE) == ["~ metrics: changed (see the file's diff)"]


async def test_apply_refuses_a_destroy_changes_nothing_and_applies_it_when_allowed(
    tmp_path: Path,
) -> None:
    store = MemoryStore()
    ctl = await memory_controller(tmp_path, store)
    ctl.only_one = False  # a site controller: the one kind that runs databases
    path = str(tmp_path / "alwayson.yaml")
    await ctl.apply(BASE + DB, path, "alice")
    audited = len(await store.list_audit())

    with pytest.raises(ConflictError) as refused:
        await ctl.apply(BASE, path, "mallory")

    message = str(refused.value)
    assert message.startswith("refused: 1 destructive change(s): - database bank: both")
    assert "Nothing was changed" in message and "--allow-destroy" in message
    assert [d.name for d in ctl.spec().databases] == ["bank"]
    assert len(await store.list_audit()) == audited

    result = await ctl.apply(BASE, path, "alice", allow_destroy=True)

    assert ctl.spec().databases == []
    assert result.changes[0].target == "database bank"
    assert len(await store.list_audit()) == audited + 1
