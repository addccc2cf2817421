"""Routing tables built from what is ready (``alwayson.control.routing``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alwayson.control.desired import Context, Variant, allocate_slots, desired_instances
from alwayson.control.routing import Split, backend_weights, frontdoor_table, same_table, site_table
from alwayson.release.model import Routing
from alwayson.runtime.base import InstanceSpec, InstanceStatus, Kind, Phase
from alwayson.spec.loading import LoadedSpec
from alwayson.spec.models import PlatformSpec

LoadSpec = Callable[[str], LoadedSpec]
Desire = Callable[..., dict[str, InstanceSpec]]

LEDGER = """\
  - name: ledger
    version: "2.0.0"
    run: python -m bank.ledger
    port: 8001
    replicas: {surabaya: 1}
    routes: [{host: ledger.bank.test}, {host: api.bank.test, path: /ledger}]
"""


@pytest.fixture
def loaded(load_spec: LoadSpec, good_spec: str) -> LoadedSpec:
    return load_spec(good_spec + LEDGER)


@pytest.fixture
def spec(loaded: LoadedSpec) -> PlatformSpec:
    return loaded.spec


@pytest.fixture
def desired(loaded: LoadedSpec, desire: Desire) -> dict[str, InstanceSpec]:
    return desire(loaded)


def statuses(
    desired: dict[str, InstanceSpec],
    phases: Mapping[str, Phase] | None = None,
    phase: Phase = Phase.READY,
) -> list[InstanceStatus]:
    """One status per instance, in ``phase`` unless ``phases`` names another for its id."""
    phases = phases or {}
    return [
        InstanceStatus(
            spec=inst, pid=1, start_time=0, started_at=0, phase=phases.get(inst.id, phase)
        )
        for inst in desired.values()
    ]


def backend(inst: InstanceSpec) -> dict[str, object]:
    return {
        "id": inst.id,
        "address": f"{inst.host}:{inst.port}",
        "site": inst.site,
        "version": inst.version,
        "weight": 100,
    }


def test_site_table_routes_every_route_to_ready_instances_of_both_sites(
    spec: PlatformSpec, desired: dict[str, InstanceSpec]
) -> None:
    table = site_table(spec, "jakarta", statuses(desired))

    accounts = [
        backend(desired[i])
        for i in [
            "accounts-jakarta-1",
            "accounts-jakarta-2",
            "accounts-surabaya-1",
            "accounts-surabaya-2",
        ]
    ]
    ledger = [backend(desired["ledger-surabaya-1"])]
    assert table == {
        "generation": 0,
        "site": "jakarta",
        "routes": [
            {
                "service": "accounts",
                "hosts": [],
                "path_prefix": "/accounts",
                "backends": accounts,
                "max_body_bytes": None,
            },
            {
                "service": "ledger",
                "hosts": ["ledger.bank.test"],
                "path_prefix": None,
                "backends": ledger,
                "max_body_bytes": None,
            },
            {
                "service": "ledger",
                "hosts": ["api.bank.test"],
                "path_prefix": "/ledger",
                "backends": ledger,
                "max_body_bytes": None,
            },
        ],
    }
    assert accounts[0]["address"] == "127.1.1.1:8000"


def test_site_table_leaves_out_instances_that_are_not_ready(
    spec: PlatformSpec, desired: dict[str, InstanceSpec]
) -> None:
    table = site_table(
        spec,
        "surabaya",
        statuses(
            desired,
            {
                "accounts-jakarta-1": Phase.STARTING,
                "accounts-jakarta-2": Phase.UNREADY,
                "accounts-surabaya-1": Phase.STOPPING,
                "ledger-surabaya-1": Phase.EXITED,
            },
        ),
    )

    by_service = {r["service"]: [b["id"] for b in r["backends"]] for r in table["routes"]}
    assert by_service == {"accounts": ["accounts-surabaya-2"], "ledger": []}
    assert table["site"] == "surabaya"


def test_site_table_has_only_workloads(
    spec: PlatformSpec, desired: dict[str, InstanceSpec]
) -> None:
    table = site_table(spec, "jakarta", statuses(desired))

    ids = {b["id"] for r in table["routes"] for b in r["backends"]}
    assert all(desired[i].kind is Kind.WORKLOAD for i in ids)


def test_site_table_with_nothing_running(spec: PlatformSpec) -> None:
    table = site_table(spec, "jakarta", [])

    assert [r["backends"] for r in table["routes"]] == [[], [], []]


def test_site_table_ignores_instances_of_services_no_longer_in_the_spec(
    load_spec: LoadSpec, good_spec: str, desired: dict[str, InstanceSpec]
) -> None:
    without_ledger = load_spec(good_spec).spec

    table = site_table(without_ledger, "jakarta", statuses(desired))

    assert [r["service"] for r in table["routes"]] == ["accounts"]


def test_frontdoor_table_routes_everything_to_ready_site_proxies(
    spec: PlatformSpec, desired: dict[str, InstanceSpec]
) -> None:
    table = frontdoor_table(spec, "jakarta", statuses(desired))

    assert table == {
        "generation": 0,
        "site": "jakarta",
        "routes": [
            {
                "service": "frontdoor",
                "hosts": [],
                "path_prefix": None,
                "backends": [
                    {
                        "id": "gateway@jakarta",
                        "address": "127.1.0.1:8080",
                        "site": "jakarta",
                        "version": "builtin",
                        "weight": 100,
                    },
                    {
                        "id": "gateway@surabaya",
                        "address": "127.2.0.1:8080",
                        "site": "surabaya",
                        "version": "builtin",
                        "weight": 100,
                    },
                ],
            }
        ],
    }


def test_frontdoor_table_leaves_out_site_proxies_that_are_not_ready(
    spec: PlatformSpec, desired: dict[str, InstanceSpec]
) -> None:
    table = frontdoor_table(spec, "surabaya", statuses(desired, {"gateway@jakarta": Phase.UNREADY}))

    [route] = table["routes"]
    assert [b["id"] for b in route["backends"]] == ["gateway@surabaya"]


def test_frontdoor_table_without_ready_site_proxies_is_empty(
    spec: PlatformSpec, desired: dict[str, InstanceSpec]
) -> None:
    table = frontdoor_table(spec, "jakarta", statuses(desired, phase=Phase.STARTING))

    assert table["routes"][0]["backends"] == []


def test_same_table_ignores_the_generation(
    spec: PlatformSpec, desired: dict[str, InstanceSpec]
) -> None:
    a = site_table(spec, "jakarta", statuses(desired))
    b = dict(a, generation=41)

    assert same_table(a, b)
    assert same_table(b, a)


def test_same_table_sees_a_change_of_backends(
    spec: PlatformSpec, desired: dict[str, InstanceSpec]
) -> None:
    a = site_table(spec, "jakarta", statuses(desired))
    b = site_table(spec, "jakarta", statuses(desired, {"accounts-jakarta-1": Phase.UNREADY}))

    assert not same_table(a, b)
    assert not same_table(a, dict(a, site="surabaya"))


def test_same_table_with_none() -> None:
    table = {"generation": 1, "site": "jakarta", "routes": []}

    assert same_table(None, None)
    assert not same_table(None, table)
    assert not same_table(table, None)


# ------------------------------------------------------------------ releases


def _two_versions(
    loaded: LoadedSpec, tmp_path: Path, candidate_counts: dict[str, int]
) -> dict[str, InstanceSpec]:
    svc = loaded.spec.service("accounts")
    ctx = Context(loaded.folder, tmp_path / ".alwayson", None, allocate_slots(loaded.spec, {}))
    variants = {
        "accounts": [
            Variant(svc.version, svc.run, "a", {"jakarta": 2, "surabaya": 2}),
            Variant("9.0", svc.run, "b", candidate_counts),
        ]
    }
    return desired_instances(loaded.spec, {}, ctx, variants)


def test_two_versions_run_side_by_side_on_their_own_addresses(
    loaded: LoadedSpec, tmp_path: Path
) -> None:
    both = _two_versions(loaded, tmp_path, {"jakarta": 1, "surabaya": 3})
    new = sorted(i for i, s in both.items() if s.version == "9.0")
    assert new == [
        "accounts-jakarta-101",
        "accounts-surabaya-101",
        "accounts-surabaya-102",
        "accounts-surabaya-103",
    ]
    old = both["accounts-jakarta-1"]
    assert both["accounts-jakarta-101"].host != old.host
    assert both["accounts-jakarta-101"].env["ALWAYSON_VERSION"] == "9.0"


@pytest.mark.parametrize(
    ("routing", "weight", "expected"),
    [
        (Routing.INSTANCES, 0, (100, 100)),
        (Routing.PREVIEW, 0, (100, 0)),
        (Routing.STABLE, 0, (100, 0)),
        (Routing.CANDIDATE, 0, (0, 100)),
    ],
)
def test_backend_weights_per_routing(
    routing: Routing, weight: int, expected: tuple[int, int]
) -> None:
    assert backend_weights(Split("9.0", routing, weight), 2, 1) == expected
    assert backend_weights(None, 2, 0) == (100, 100)


@given(stable=st.integers(1, 20), candidate=st.integers(1, 20), weight=st.integers(1, 99))
def test_weighted_split_gives_the_candidates_exactly_their_share_in_each_site(
    stable: int, candidate: int, weight: int
) -> None:
    each_stable, each_candidate = backend_weights(
        Split("9.0", Routing.WEIGHTED, weight), stable, candidate
    )
    total_candidate = each_candidate * candidate
    total = total_candidate + each_stable * stable
    assert total_candidate * 100 == weight * total


def test_site_table_marks_candidates_and_weighs_them(
    spec: PlatformSpec, loaded: LoadedSpec, tmp_path: Path
) -> None:
    both = _two_versions(loaded, tmp_path, {"jakarta": 1, "surabaya": 1})
    table = site_table(
        spec, "jakarta", statuses(both), {"accounts": Split("9.0", Routing.WEIGHTED, 20)}
    )
    route = next(r for r in table["routes"] if r["service"] == "accounts")
    jakarta = {b["id"]: b for b in route["backends"] if b["site"] == "jakarta"}
    assert jakarta["accounts-jakarta-101"]["track"] == "candidate"
    assert "track" not in jakarta["accounts-jakarta-1"]
    # 1 candidate at 20 * 2 against 2 stables at 80 * 1: 40 / (40 + 160) = 20 %.
    assert jakarta["accounts-jakarta-101"]["weight"] == 40
    assert jakarta["accounts-jakarta-1"]["weight"] == 80
