"""``plan``: what applying a new spec changes, including drift left by ``alwayson scale``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alwayson.runtime.base import InstanceSpec
from alwayson.spec.loading import load_spec_text
from alwayson.spec.models import PlatformSpec
from alwayson.spec.planning import Change, ChangeKind, effective_replicas, plan

Desire = Callable[..., dict[str, InstanceSpec]]

LEDGER = """\
  - name: ledger
    version: "2.0.0"
    run: python -m bank.ledger
    port: 8001
"""


def parse(text: str) -> PlatformSpec:
    return load_spec_text(text, Path("/specs/alwayson.yaml"), check_commands=False).spec


def shown(changes: list[Change]) -> list[str]:
    return [str(c) for c in changes]


def test_first_apply_adds_every_service(good_spec: str) -> None:
    changes = plan(parse(good_spec + LEDGER), None, {})

    assert shown(changes) == [
        "+ service accounts: version 1.0.0, port 8000, replicas jakarta=2, surabaya=2",
        "+ service ledger: version 2.0.0, port 8001, replicas jakarta=1, surabaya=1",
    ]
    assert all(c.kind is ChangeKind.ADD for c in changes)


def test_no_change_is_an_empty_plan(good_spec: str) -> None:
    assert plan(parse(good_spec), parse(good_spec), {}) == []


def test_comments_and_formatting_are_no_change(good_spec: str) -> None:
    reformatted = good_spec.replace("replicas: 2", "replicas: 2   # two per site")

    assert plan(parse(reformatted), parse(good_spec), {}) == []


def test_added_service(good_spec: str) -> None:
    changes = plan(parse(good_spec + LEDGER), parse(good_spec), {})

    assert changes == [
        Change(
            ChangeKind.ADD,
            "service ledger",
            "version 2.0.0, port 8001, replicas jakarta=1, surabaya=1",
        )
    ]


def test_removed_service(good_spec: str) -> None:
    changes = plan(parse(good_spec), parse(good_spec + LEDGER), {})

    assert shown(changes) == ["- service ledger: every instance stops"]


def test_version_change(good_spec: str) -> None:
    new = parse(good_spec.replace('"1.0.0"', '"1.1.0"'))

    assert shown(plan(new, parse(good_spec), {})) == [
        "~ service accounts: version '1.0.0' → '1.1.0'; apply releases it (rolling)"
    ]


def test_a_deployed_version_is_drift_that_apply_releases_back(good_spec: str) -> None:
    current = parse(good_spec)
    deployed = {"accounts": ("2.0.0", current.service("accounts").run)}
    assert shown(plan(current, current, {}, deployed)) == [
        "~ service accounts: version '2.0.0' → '1.0.0' (drift: set by `alwayson deploy`); "
        "apply releases it (rolling)"
    ]
    same = parse(good_spec.replace('"1.0.0"', '"2.0.0"'))
    assert shown(plan(same, current, {}, deployed)) == []


def test_replicas_change(good_spec: str) -> None:
    new = parse(good_spec.replace("replicas: 2", "replicas: {jakarta: 3, surabaya: 2}"))

    assert shown(plan(new, parse(good_spec), {})) == [
        "~ service accounts: replicas in jakarta 2 → 3"
    ]


def test_drift_is_named(good_spec: str) -> None:
    spec = parse(good_spec)

    changes = plan(spec, spec, {("accounts", "jakarta"): 5})

    assert shown(changes) == [
        "~ service accounts: replicas in jakarta 5 → 2 (drift: set by `alwayson scale`)"
    ]
    assert "drift" in changes[0].detail


def test_drift_the_new_spec_agrees_with_is_no_change(good_spec: str) -> None:
    new = parse(good_spec.replace("replicas: 2", "replicas: {jakarta: 5, surabaya: 2}"))

    assert plan(new, parse(good_spec), {("accounts", "jakarta"): 5}) == []


def test_health_change_shows_what_differs_from_defaults(good_spec: str) -> None:
    new = parse(good_spec.replace("interval: 1s", "interval: 2s"))

    assert shown(plan(new, parse(good_spec), {})) == [
        "~ service accounts: health {'http': '/healthz'} → {'http': '/healthz', 'interval': '2s'}"
    ]


def test_routes_change_is_listed(good_spec: str) -> None:
    new = parse(good_spec.replace("{path: /accounts}", "{path: /acc}"))

    [change] = plan(new, parse(good_spec), {})

    assert (change.kind, change.target) == (ChangeKind.CHANGE, "service accounts")
    assert change.detail.startswith("routes ")
    assert "/accounts" in change.detail
    assert "/acc'" in change.detail


def test_routes_change_reads_like_the_other_fields(good_spec: str) -> None:
    new = parse(good_spec.replace("{path: /accounts}", "{path: /acc}"))

    assert shown(plan(new, parse(good_spec), {})) == [
        "~ service accounts: routes [{'path': '/accounts'}] → [{'path': '/acc'}]"
    ]


def test_platform_wide_change(good_spec: str) -> None:
    new = parse(good_spec + "gateway: {port: 8081}\n")

    assert shown(plan(new, parse(good_spec), {})) == [
        "~ gateway: {'port': 8080, 'admin_port': 9901} → {'port': 8081, 'admin_port': 9901}"
    ]


def test_added_site_starts_its_replicas(good_spec: str) -> None:
    new = parse(good_spec.replace("  - name: witness\n", "  - name: bandung\n  - name: witness\n"))

    assert shown(plan(new, parse(good_spec), {})) == [
        "+ site bandung: new site",
        "~ service accounts: replicas in bandung 0 → 2",
    ]


def test_removed_site(good_spec: str) -> None:
    old = parse(good_spec.replace("  - name: witness\n", "  - name: bandung\n  - name: witness\n"))

    assert shown(plan(parse(good_spec), old, {})) == ["- site bandung: its instances stop"]


def test_effective_replicas_prefers_overrides(good_spec: str) -> None:
    spec = parse(good_spec)
    overrides = {("accounts", "surabaya"): 7}

    assert effective_replicas(spec, overrides, "accounts", "jakarta") == 2
    assert effective_replicas(spec, overrides, "accounts", "surabaya") == 7


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(
            ("  - name: surabaya\n", "  - name: surabaya\n    subnet: 127.9.0.0/16\n"),
            id="subnet",
        ),
        pytest.param(
            ("  - name: jakarta\n  - name: surabaya\n", "  - name: surabaya\n  - name: jakarta\n"),
            id="site-order",
        ),
        pytest.param(("platform: digital-bank", "platform: other-bank"), id="platform"),
    ],
)
def test_edits_that_replace_instances_are_planned(
    good_spec: str, tmp_path: Path, desire: Desire, edit: tuple[str, str]
) -> None:
    old_text, new_text = good_spec, good_spec.replace(*edit)
    old = load_spec_text(old_text, tmp_path / "alwayson.yaml")
    new = load_spec_text(new_text, tmp_path / "alwayson.yaml")
    before = {k: v.template_hash() for k, v in desire(old).items()}
    after = {k: v.template_hash() for k, v in desire(new).items()}
    assert before != after, "the edit must change what runs"

    assert plan(new.spec, old.spec, {}) != []


# ---------------------------------------------------------------- properties

SITES = ["jakarta", "surabaya"]
SERVICES = ["accounts", "ledger", "payments"]


@st.composite
def specs(draw: st.DrawFn) -> PlatformSpec:
    names = draw(st.lists(st.sampled_from(SERVICES), unique=True))
    services = []
    for port, name in enumerate(names, start=8000):
        replicas = draw(
            st.one_of(
                st.integers(0, 5),
                st.fixed_dictionaries({}, optional={s: st.integers(0, 5) for s in SITES}),
            )
        )
        version = draw(st.sampled_from(["1.0.0", "1.1.0"]))
        services.append(
            {"name": name, "version": version, "run": "x", "port": port, "replicas": replicas}
        )
    return PlatformSpec.model_validate(
        {
            "platform": "p",
            "sites": [{"name": s} for s in SITES] + [{"name": "w", "witness": True}],
            "services": services,
        }
    )


@given(specs())
def test_a_spec_against_itself_plans_nothing(spec: PlatformSpec) -> None:
    assert plan(spec, spec, {}) == []


def running_view(spec: PlatformSpec) -> dict[str, tuple[str, int, tuple[int, ...]]]:
    """What a spec makes run, ignoring how it is written (order, replicas as int or dict)."""
    return {
        svc.name: (svc.version, svc.port, tuple(svc.replicas_in(s) for s in SITES))
        for svc in spec.services
    }


@given(specs(), specs())
def test_plan_is_empty_only_when_nothing_differs(new: PlatformSpec, old: PlatformSpec) -> None:
    changes = plan(new, old, {})

    assert (changes == []) == (running_view(new) == running_view(old))


@given(st.lists(st.sampled_from(SERVICES), unique=True, min_size=2), st.integers(0, 3))
def test_replicas_written_per_site_or_once_are_the_same(names: list[str], n: int) -> None:
    def spec_with(replicas: object) -> PlatformSpec:
        services = [
            {"name": name, "version": "1", "run": "x", "port": 8000 + i, "replicas": replicas}
            for i, name in enumerate(names)
        ]
        sites = [{"name": s} for s in SITES]
        return PlatformSpec.model_validate({"platform": "p", "sites": sites, "services": services})

    once, per_site = spec_with(n), spec_with(dict.fromkeys(SITES, n))

    assert plan(once, per_site, {}) == []
    assert plan(per_site, once, {}) == []


@given(specs(), st.data())
def test_drift_shows_exactly_where_overrides_differ(
    spec: PlatformSpec, data: st.DataObject
) -> None:
    pairs = [(svc.name, site) for svc in spec.services for site in SITES]
    overrides = data.draw(
        st.dictionaries(st.sampled_from(pairs), st.integers(0, 5)) if pairs else st.just({})
    )

    changes = plan(spec, spec, overrides)

    differing = {
        (svc, site)
        for (svc, site), n in overrides.items()
        if n != spec.service(svc).replicas_in(site)
    }
    assert len(changes) == len(differing)
    for change in changes:
        assert change.kind is ChangeKind.CHANGE
        assert change.detail.endswith("(drift: set by `alwayson scale`)")
    reported = {
        (c.target.removeprefix("service "), site)
        for c in changes
        for site in SITES
        if f"replicas in {site} " in c.detail
    }
    assert reported == differing
