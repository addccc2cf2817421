"""From a loaded spec to the exact processes that should run (``alwayson.control.desired``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from alwayson.control.desired import (
    Context,
    allocate_slots,
    desired_instances,
    frontdoor_id,
    gateway_id,
    instance_id,
    listen_addresses,
)
from alwayson.runtime.base import InstanceSpec, Kind
from alwayson.spec.loading import LoadedSpec
from alwayson.spec.models import PlatformSpec

LoadSpec = Callable[[str], LoadedSpec]
Desire = Callable[..., dict[str, InstanceSpec]]

LEDGER = """\
  - name: ledger
    version: "2.0.0"
    run: python -m bank.ledger
    port: 8001
    env: {LEDGER_MODE: strict, HOST: 0.0.0.0}
"""


def workloads(desired: dict[str, InstanceSpec]) -> dict[str, InstanceSpec]:
    return {k: v for k, v in desired.items() if v.kind is Kind.WORKLOAD}


def test_ids() -> None:
    assert instance_id("accounts", "jakarta", 2) == "accounts-jakarta-2"
    assert gateway_id("jakarta") == "gateway@jakarta"
    assert frontdoor_id("jakarta") == "frontdoor@jakarta"


def test_every_replica_in_every_workload_site(
    load_spec: LoadSpec, good_spec: str, desire: Desire
) -> None:
    desired = desire(load_spec(good_spec))

    assert sorted(desired) == [
        "accounts-jakarta-1",
        "accounts-jakarta-2",
        "accounts-surabaya-1",
        "accounts-surabaya-2",
        "frontdoor@jakarta",
        "frontdoor@surabaya",
        "gateway@jakarta",
        "gateway@surabaya",
    ]
    assert all(inst.site != "witness" for inst in desired.values())


def test_addresses_come_from_the_site_subnet(
    load_spec: LoadSpec, good_spec: str, desire: Desire
) -> None:
    desired = desire(load_spec(good_spec))

    addresses = {k: (v.host, v.port) for k, v in workloads(desired).items()}
    assert addresses == {
        "accounts-jakarta-1": ("127.1.1.1", 8000),
        "accounts-jakarta-2": ("127.1.1.2", 8000),
        "accounts-surabaya-1": ("127.2.1.1", 8000),
        "accounts-surabaya-2": ("127.2.1.2", 8000),
    }


def test_explicit_subnet(load_spec: LoadSpec, good_spec: str, desire: Desire) -> None:
    text = good_spec.replace(
        "  - name: surabaya\n", "  - name: surabaya\n    subnet: 127.9.0.0/16\n"
    )

    desired = desire(load_spec(text))

    assert desired["accounts-surabaya-2"].host == "127.9.1.2"
    assert desired[gateway_id("surabaya")].host == "127.9.0.1"


def test_workload_environment(load_spec: LoadSpec, good_spec: str, desire: Desire) -> None:
    inst = desire(load_spec(good_spec))["accounts-surabaya-2"]

    assert inst.env == {
        "PYTHONUNBUFFERED": "1",
        "HOST": "127.2.1.2",
        "PORT": "8000",
        "ALWAYSON_SITE": "surabaya",
        "ALWAYSON_SERVICE": "accounts",
        "ALWAYSON_INSTANCE": "accounts-surabaya-2",
        "ALWAYSON_VERSION": "1.0.0",
        "ALWAYSON_GATEWAY": "http://127.2.0.1:8080",
        "ALWAYSON_PLATFORM": "digital-bank",
    }


def test_service_env_is_kept_but_cannot_override_the_platform_variables(
    load_spec: LoadSpec, good_spec: str, desire: Desire
) -> None:
    inst = desire(load_spec(good_spec + LEDGER))["ledger-jakarta-1"]

    assert inst.env["LEDGER_MODE"] == "strict"
    assert inst.env["HOST"] == "127.1.2.1"


def test_workload_fields(load_spec: LoadSpec, good_spec: str, desire: Desire) -> None:
    loaded = load_spec(good_spec)
    inst = desire(loaded)["accounts-jakarta-1"]

    assert inst.kind is Kind.WORKLOAD
    assert (inst.site, inst.service, inst.version) == ("jakarta", "accounts", "1.0.0")
    assert inst.argv == [sys.executable, "-m", "bank.accounts"]
    assert inst.cwd == str(loaded.folder)
    assert inst.readiness == loaded.spec.service("accounts").health
    assert inst.liveness is not None
    assert inst.liveness.failure_threshold == 9
    assert inst.stop_grace == 10.0
    assert inst.user is None
    assert listen_addresses(inst) == ["127.1.1.1:8000"]


def test_one_site_proxy_and_one_front_door_per_workload_site(
    load_spec: LoadSpec, good_spec: str, desire: Desire, tmp_path: Path
) -> None:
    desired = desire(load_spec(good_spec))

    components = {k: v for k, v in desired.items() if v.kind is not Kind.WORKLOAD}
    assert {(v.kind, v.site) for v in components.values()} == {
        (Kind.GATEWAY, "jakarta"),
        (Kind.GATEWAY, "surabaya"),
        (Kind.FRONTDOOR, "jakarta"),
        (Kind.FRONTDOOR, "surabaya"),
    }
    for inst in components.values():
        assert inst.argv[:3] == [sys.executable, "-m", "alwayson.gateway"]
        assert inst.version == "builtin"
        assert inst.service == inst.kind.value
        assert inst.cwd == str(tmp_path / ".alwayson")
        assert inst.readiness.http == "/healthz"
        routes_file = tmp_path / ".alwayson" / "run" / "routes" / f"{inst.id}.json"
        assert inst.argv[inst.argv.index("--routes-file") + 1] == str(routes_file)
        assert inst.argv[inst.argv.index("--site") + 1] == inst.site


def test_site_proxy_listens_on_the_site_address(
    load_spec: LoadSpec, good_spec: str, desire: Desire
) -> None:
    inst = desire(load_spec(good_spec))[gateway_id("surabaya")]

    assert listen_addresses(inst) == ["127.2.0.1:8080", "127.2.0.1:9901"]
    assert "--reuse-port" not in inst.argv
    assert (inst.host, inst.port) == ("127.2.0.1", 9901)


def test_front_doors_share_the_front_door_address(
    load_spec: LoadSpec, good_spec: str, desire: Desire
) -> None:
    desired = desire(load_spec(good_spec))

    jakarta, surabaya = desired[frontdoor_id("jakarta")], desired[frontdoor_id("surabaya")]
    assert listen_addresses(jakarta) == ["127.0.0.1:8080", "127.1.0.2:9901"]
    assert listen_addresses(surabaya) == ["127.0.0.1:8080", "127.2.0.2:9901"]
    assert "--reuse-port" in jakarta.argv
    assert "--reuse-port" in surabaya.argv


def test_replicas_per_site_and_zero(load_spec: LoadSpec, good_spec: str, desire: Desire) -> None:
    text = good_spec.replace("replicas: 2", "replicas: {jakarta: 3}")

    desired = desire(load_spec(text))

    assert sorted(workloads(desired)) == [
        "accounts-jakarta-1",
        "accounts-jakarta-2",
        "accounts-jakarta-3",
    ]
    # A site with no replicas still gets its proxies so it can route to the other site.
    assert gateway_id("surabaya") in desired


def test_overrides_win_over_the_spec(load_spec: LoadSpec, good_spec: str, desire: Desire) -> None:
    overrides = {("accounts", "jakarta"): 1, ("accounts", "surabaya"): 4}

    desired = desire(load_spec(good_spec), overrides)

    assert sorted(workloads(desired)) == [
        "accounts-jakarta-1",
        "accounts-surabaya-1",
        "accounts-surabaya-2",
        "accounts-surabaya-3",
        "accounts-surabaya-4",
    ]


def test_each_service_has_an_identity_of_its_own_when_users_can_be_switched(
    load_spec: LoadSpec, good_spec: str, tmp_path: Path
) -> None:
    payments = "  - {name: payments, version: '1.0.0', run: python -m x, port: 8001}\n"
    loaded = load_spec(good_spec + payments)
    slots = allocate_slots(loaded.spec, {})
    ctx = Context(loaded.folder, tmp_path / "state", "nobody", slots)

    desired = desired_instances(loaded.spec, {}, ctx)

    users = {i.service: i.user for i in desired.values() if i.kind is Kind.WORKLOAD}
    assert users == {name: f"#{61184 + slot}" for name, slot in slots.items()}
    assert len(set(users.values())) == len(users) >= 2  # one per service, none shared
    accounts = desired["accounts-jakarta-1"]
    assert desired["accounts-surabaya-1"].user == accounts.user  # a service's instances alike
    private = str(tmp_path / "state" / "run" / "private" / "accounts")
    assert accounts.env["RUNTIME_DIRECTORY"] == accounts.env["HOME"] == private
    assert desired[gateway_id("jakarta")].user is None


def test_a_user_the_spec_names_runs_every_service_and_none_when_not_root(
    load_spec: LoadSpec, good_spec: str, tmp_path: Path
) -> None:
    named = load_spec(good_spec + "runtime: {user: appuser}\n")
    slots = allocate_slots(named.spec, {})
    as_root = Context(named.folder, tmp_path / "state", "appuser", slots)
    not_root = Context(named.folder, tmp_path / "state", None, slots)
    plain = load_spec(good_spec)

    assert desired_instances(named.spec, {}, as_root)["accounts-jakarta-1"].user == "appuser"
    unswitched = desired_instances(plain.spec, {}, not_root)["accounts-jakarta-1"]
    assert unswitched.user is None and "RUNTIME_DIRECTORY" not in unswitched.env


def test_template_changes_with_the_version_only_for_that_service(
    load_spec: LoadSpec, good_spec: str, desire: Desire
) -> None:
    before = desire(load_spec(good_spec))
    after = desire(load_spec(good_spec.replace('"1.0.0"', '"1.0.1"')))

    changed = {k for k in before if before[k].template_hash() != after[k].template_hash()}
    assert changed == set(workloads(before))


def test_instance_spec_round_trips_through_json(
    load_spec: LoadSpec, good_spec: str, desire: Desire
) -> None:
    for inst in desire(load_spec(good_spec)).values():
        assert InstanceSpec.from_json(inst.to_json()) == inst


# ---------------------------------------------------------------- service slots


def test_slots_are_given_in_order(load_spec: LoadSpec, good_spec: str) -> None:
    spec = load_spec(good_spec + LEDGER).spec

    assert allocate_slots(spec, {}) == {"accounts": 1, "ledger": 2}


def test_slots_stay_when_a_service_is_added_before_the_others(
    load_spec: LoadSpec, good_spec: str, desire: Desire
) -> None:
    first = load_spec(good_spec + LEDGER)
    slots = allocate_slots(first.spec, {})
    before = desire(first, slots=slots)
    payments = (
        '  - name: payments\n    version: "1"\n    run: python -m bank.payments\n    port: 8002\n'
    )
    second = load_spec(good_spec.replace("services:\n", "services:\n" + payments) + LEDGER)

    new_slots = allocate_slots(second.spec, slots)
    after = desire(second, slots=new_slots)

    assert new_slots == {"accounts": 1, "ledger": 2, "payments": 3}
    for ident, inst in workloads(before).items():
        assert after[ident].host == inst.host
        assert after[ident].template_hash() == inst.template_hash()
    assert after["payments-jakarta-1"].host == "127.1.3.1"


def test_slots_of_removed_services_are_not_reused(load_spec: LoadSpec, good_spec: str) -> None:
    spec = load_spec(good_spec).spec

    assert allocate_slots(spec, {"gone": 1}) == {"gone": 1, "accounts": 2}


@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), unique=True), st.data())
def test_slots_are_unique_and_kept(names: list[str], data: st.DataObject) -> None:
    def spec_of(services: list[str]) -> PlatformSpec:
        return PlatformSpec.model_validate(
            {
                "platform": "p",
                "sites": [{"name": "s"}],
                "services": [
                    {"name": n, "version": "1", "run": "x", "port": 8000} for n in services
                ],
            }
        )

    first = allocate_slots(spec_of(names), {})
    reordered = data.draw(st.permutations([*names, "z"]))
    second = allocate_slots(spec_of(reordered), first)

    assert len(set(second.values())) == len(second)
    assert all(1 <= slot <= 250 for slot in second.values())
    assert {k: second[k] for k in first} == first
