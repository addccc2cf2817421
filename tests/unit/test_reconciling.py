"""``decide``: one reconcile cycle as a pure function of a snapshot.

The desired instances come from a real spec through ``desired_instances``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from alwayson.control.backoff import CrashRecord
from alwayson.control.desired import Context, allocate_slots, desired_instances
from alwayson.control.reconciling import Decision, Observed, Snapshot, Start, Stop, decide
from alwayson.runtime.base import InstanceSpec, Kind, Phase
from alwayson.spec.loading import LoadedSpec
from alwayson.util.clocks import ManualClock

LoadSpec = Callable[[str], LoadedSpec]
Desire = Callable[..., dict[str, InstanceSpec]]
NOW = 1000.0


@pytest.fixture
def desired(load_spec: LoadSpec, good_spec: str, desire: Desire) -> dict[str, InstanceSpec]:
    return desire(load_spec(good_spec))


@pytest.fixture
def upgraded(load_spec: LoadSpec, good_spec: str, desire: Desire) -> dict[str, InstanceSpec]:
    """The same platform with accounts at version 1.1.0."""
    return desire(load_spec(good_spec.replace('"1.0.0"', '"1.1.0"')))


def observe(
    instances: Mapping[str, InstanceSpec],
    phases: Mapping[str, Phase] | None = None,
    phase: Phase = Phase.READY,
) -> dict[str, Observed]:
    """What runs: ``instances``, in ``phase`` unless ``phases`` names another for its id."""
    phases = phases or {}
    return {
        i.id: Observed(i.id, i.site, i.service, i.template_hash(), phases.get(i.id, phase))
        for i in instances.values()
    }


def started(decision: Decision) -> list[str]:
    return [s.spec.id for s in decision.starts]


def stopped(decision: Decision) -> list[str]:
    return [s.id for s in decision.stops]


# ---------------------------------------------------------------- start and stop


def test_nothing_runs_so_everything_starts(desired: dict[str, InstanceSpec]) -> None:
    decision = decide(Snapshot(now=NOW, desired=desired, observed={}))

    assert started(decision) == sorted(desired)
    assert all(s.reason == "missing" for s in decision.starts)
    assert all(s.spec is desired[s.spec.id] for s in decision.starts)
    assert decision.stops == []
    assert decision.acted
    assert decision.verdict == (
        "started 8: accounts-jakarta-1, accounts-jakarta-2, accounts-surabaya-1 +5 more"
    )


def test_one_missing_instance_is_started(desired: dict[str, InstanceSpec]) -> None:
    observed = observe(desired)
    del observed["accounts-surabaya-2"]

    decision = decide(Snapshot(now=NOW, desired=desired, observed=observed))

    assert decision.starts == [Start(desired["accounts-surabaya-2"], "missing")]
    assert decision.verdict == "started 1: accounts-surabaya-2"


def test_steady(desired: dict[str, InstanceSpec]) -> None:
    decision = decide(Snapshot(now=NOW, desired=desired, observed=observe(desired)))

    assert decision == Decision([], [], [], "steady: 8/8 processes ready")
    assert not decision.acted


def test_converging_while_instances_get_ready(desired: dict[str, InstanceSpec]) -> None:
    observed = observe(
        desired, {"accounts-jakarta-1": Phase.STARTING, "accounts-jakarta-2": Phase.UNREADY}
    )

    decision = decide(Snapshot(now=NOW, desired=desired, observed=observed))

    assert decision.verdict == "converging: 6/8 processes ready, nothing to start or stop"
    assert not decision.acted


def test_redundant_instances_are_stopped(
    load_spec: LoadSpec, good_spec: str, desire: Desire, desired: dict[str, InstanceSpec]
) -> None:
    scaled_up = desire(load_spec(good_spec.replace("replicas: 2", "replicas: 3")))

    decision = decide(Snapshot(now=NOW, desired=desired, observed=observe(scaled_up)))

    assert decision.stops == [
        Stop("accounts-jakarta-3", "no longer in the spec"),
        Stop("accounts-surabaya-3", "no longer in the spec"),
    ]
    assert decision.starts == []
    assert decision.verdict == (
        "stopped 2 (no longer in the spec): accounts-jakarta-3, accounts-surabaya-3"
    )


def test_stops_come_before_starts_in_the_verdict(
    load_spec: LoadSpec, good_spec: str, desire: Desire
) -> None:
    jakarta_only = desire(load_spec(good_spec.replace("replicas: 2", "replicas: {jakarta: 2}")))
    surabaya_only = desire(load_spec(good_spec.replace("replicas: 2", "replicas: {surabaya: 1}")))

    decision = decide(Snapshot(now=NOW, desired=surabaya_only, observed=observe(jakarta_only)))

    assert stopped(decision) == ["accounts-jakarta-1", "accounts-jakarta-2"]
    assert started(decision) == ["accounts-surabaya-1"]
    assert decision.verdict == (
        "stopped 2 (no longer in the spec): accounts-jakarta-1, accounts-jakarta-2; "
        "started 1: accounts-surabaya-1"
    )


def test_instances_already_stopping_are_left_alone(desired: dict[str, InstanceSpec]) -> None:
    observed = observe(desired)
    extra = Observed("accounts-jakarta-3", "jakarta", "accounts", "old", Phase.STOPPING)
    observed[extra.id] = extra
    del observed["accounts-jakarta-1"]

    decision = decide(
        Snapshot(
            now=NOW,
            desired=desired,
            observed=observed,
            stopping=frozenset({"accounts-jakarta-3", "accounts-jakarta-1"}),
        )
    )

    # Not stopped twice, and not started again until its stop has finished.
    assert decision.stops == []
    assert decision.starts == []


def test_only_redundant_kinds_are_stopped(
    load_spec: LoadSpec, good_spec: str, desire: Desire
) -> None:
    two_sites = desire(load_spec(good_spec))
    one_site = desire(load_spec(good_spec.replace("  - name: surabaya\n", "")))

    decision = decide(Snapshot(now=NOW, desired=one_site, observed=observe(two_sites)))

    assert stopped(decision) == [
        "accounts-surabaya-1",
        "accounts-surabaya-2",
        "frontdoor@surabaya",
        "gateway@surabaya",
    ]
    assert decision.verdict == (
        "stopped 4 (no longer in the spec): accounts-surabaya-1, accounts-surabaya-2, "
        "frontdoor@surabaya +1 more"
    )


# ---------------------------------------------------------------- crash backoff


def test_crashed_instance_waits_for_its_backoff(desired: dict[str, InstanceSpec]) -> None:
    clock = ManualClock(start=NOW)
    record = CrashRecord()
    for _ in range(3):
        record.crashed(clock.monotonic(), "exit 1", 1, ran_for=0.3)
    reason = f"{record.last_reason}; backoff {record.delay:g}s"
    observed = observe(desired)
    del observed["accounts-jakarta-2"]

    def snapshot() -> Snapshot:
        return Snapshot(
            now=clock.monotonic(),
            desired=desired,
            observed=observed,
            blocked_until={"accounts-jakarta-2": record.next_start_at},
            crash_reasons={"accounts-jakarta-2": reason},
        )

    waiting = decide(snapshot())
    assert waiting.starts == []
    assert waiting.waiting == ["accounts-jakarta-2 waits to restart (exit 1; backoff 2s)"]
    assert waiting.verdict == "waiting: accounts-jakarta-2 waits to restart (exit 1; backoff 2s)"
    assert not waiting.acted

    clock.advance(1.999)
    assert decide(snapshot()).starts == []

    clock.advance(0.001)
    due = decide(snapshot())
    assert due.starts == [Start(desired["accounts-jakarta-2"], "after exit 1; backoff 2s")]
    assert due.waiting == []
    assert due.verdict == "restarted accounts-jakarta-2 (after exit 1; backoff 2s)"


def test_waiting_without_a_known_reason(desired: dict[str, InstanceSpec]) -> None:
    observed = observe(desired)
    del observed["gateway@jakarta"]

    decision = decide(
        Snapshot(
            now=NOW,
            desired=desired,
            observed=observed,
            blocked_until={"gateway@jakarta": NOW + 5},
        )
    )

    assert decision.waiting == ["gateway@jakarta waits to restart (crashed)"]


def test_an_old_block_does_not_hold_a_start_back(desired: dict[str, InstanceSpec]) -> None:
    observed = observe(desired)
    del observed["accounts-jakarta-1"]

    decision = decide(
        Snapshot(
            now=NOW,
            desired=desired,
            observed=observed,
            blocked_until={"accounts-jakarta-1": NOW - 60},
        )
    )

    assert decision.starts == [Start(desired["accounts-jakarta-1"], "missing")]


# ---------------------------------------------------------------- replacing changed instances


def test_changed_instances_are_replaced_one_per_service_and_site(
    desired: dict[str, InstanceSpec], upgraded: dict[str, InstanceSpec]
) -> None:
    decision = decide(Snapshot(now=NOW, desired=upgraded, observed=observe(desired)))

    assert decision.stops == [
        Stop("accounts-jakarta-1", "replaced: its spec changed"),
        Stop("accounts-surabaya-1", "replaced: its spec changed"),
    ]
    assert decision.starts == []
    assert decision.verdict == (
        "stopped 2 (replaced: its spec changed): accounts-jakarta-1, accounts-surabaya-1"
    )


def test_no_replacement_while_another_in_the_group_is_not_ready(
    desired: dict[str, InstanceSpec], upgraded: dict[str, InstanceSpec]
) -> None:
    observed = observe(desired, {"accounts-jakarta-2": Phase.UNREADY})

    decision = decide(Snapshot(now=NOW, desired=upgraded, observed=observed))

    # jakarta waits for its second instance; surabaya goes ahead.
    assert stopped(decision) == ["accounts-surabaya-1"]


def test_no_replacement_while_one_of_the_group_is_stopping(
    desired: dict[str, InstanceSpec], upgraded: dict[str, InstanceSpec]
) -> None:
    decision = decide(
        Snapshot(
            now=NOW,
            desired=upgraded,
            observed=observe(desired),
            stopping=frozenset({"accounts-jakarta-1"}),
        )
    )

    assert stopped(decision) == ["accounts-surabaya-1"]


def test_replaced_instance_comes_back_with_the_new_template(
    desired: dict[str, InstanceSpec], upgraded: dict[str, InstanceSpec]
) -> None:
    observed = observe(desired)
    del observed["accounts-jakarta-1"]

    decision = decide(Snapshot(now=NOW, desired=upgraded, observed=observed))

    # The gap is filled first; the rest of jakarta waits until the group is whole again.
    assert started(decision) == ["accounts-jakarta-1"]
    assert decision.starts[0].spec.version == "1.1.0"
    assert stopped(decision) == ["accounts-surabaya-1"]


def test_the_next_one_is_replaced_once_the_new_one_is_ready(
    desired: dict[str, InstanceSpec], upgraded: dict[str, InstanceSpec]
) -> None:
    observed = observe(desired)
    observed.update(observe({"accounts-jakarta-1": upgraded["accounts-jakarta-1"]}))

    starting = dict(observed)
    starting.update(
        observe({"accounts-jakarta-1": upgraded["accounts-jakarta-1"]}, phase=Phase.STARTING)
    )
    assert "accounts-jakarta-2" not in stopped(
        decide(Snapshot(now=NOW, desired=upgraded, observed=starting))
    )

    decision = decide(Snapshot(now=NOW, desired=upgraded, observed=observed))
    assert stopped(decision) == ["accounts-jakarta-2", "accounts-surabaya-1"]


def test_a_rollout_converges_one_at_a_time(
    desired: dict[str, InstanceSpec], upgraded: dict[str, InstanceSpec]
) -> None:
    """Play the cycles out: stop, start, get ready, until every instance is new."""
    running = dict(desired)
    for _ in range(20):
        decision = decide(Snapshot(now=NOW, desired=upgraded, observed=observe(running)))
        if not decision.acted:
            break
        groups = [(running[i].service, running[i].site) for i in stopped(decision)]
        assert len(groups) == len(set(groups)), "two stops in one group in one cycle"
        for ident in stopped(decision):
            del running[ident]
        for svc, site in groups:
            left = [i for i in running.values() if (i.service, i.site) == (svc, site)]
            assert left, f"{svc} in {site} has nothing left running"
        for start in decision.starts:
            running[start.spec.id] = start.spec

    assert decision.verdict == "steady: 8/8 processes ready"
    assert {i: s.template_hash() for i, s in running.items()} == {
        i: s.template_hash() for i, s in upgraded.items()
    }


def test_components_are_not_replaced_by_a_service_upgrade(
    desired: dict[str, InstanceSpec], upgraded: dict[str, InstanceSpec]
) -> None:
    decision = decide(Snapshot(now=NOW, desired=upgraded, observed=observe(desired)))

    assert all(desired[i].kind is Kind.WORKLOAD for i in stopped(decision))


def test_no_replacement_in_the_cycle_that_stops_a_redundant_one(
    load_spec: LoadSpec,
    good_spec: str,
    desire: Desire,
    upgraded: dict[str, InstanceSpec],
) -> None:
    three_old = desire(load_spec(good_spec.replace("replicas: 2", "replicas: 3")))

    decision = decide(Snapshot(now=NOW, desired=upgraded, observed=observe(three_old)))

    assert stopped(decision) == ["accounts-jakarta-3", "accounts-surabaya-3"]


def test_etcd_members_are_replaced_one_at_a_time_across_sites(
    load_spec: LoadSpec, good_spec: str, tmp_path: Path
) -> None:
    """Each member is alone in its site: replaced per site, all three would go at once and
    etcd would lose its majority."""
    loaded = load_spec(good_spec + "databases:\n  - {name: bank, primary_site: jakarta}\n")

    def members(binary: str) -> dict[str, InstanceSpec]:
        ctx = Context(
            loaded.folder,
            tmp_path / ".alwayson",
            None,
            allocate_slots(loaded.spec, {}),
            {"bank": {"superuser": "s", "app": "a"}},
            etcd_binary=binary,
        )
        every = desired_instances(loaded.spec, {}, ctx)
        return {k: v for k, v in every.items() if v.kind is Kind.ETCD}

    old, new = members("/usr/bin/etcd"), members("/usr/local/bin/etcd")
    assert sorted(old) == ["etcd@jakarta", "etcd@surabaya", "etcd@witness"]

    first = decide(Snapshot(now=NOW, desired=new, observed=observe(old)))
    assert stopped(first) == ["etcd@jakarta"]

    # While the replaced one is missing or not ready yet, no other member is touched.
    running = {k: v for k, v in old.items() if k != "etcd@jakarta"}
    assert stopped(decide(Snapshot(now=NOW, desired=new, observed=observe(running)))) == []
    running["etcd@jakarta"] = new["etcd@jakarta"]
    unready = observe(running, {"etcd@jakarta": Phase.STARTING})
    assert stopped(decide(Snapshot(now=NOW, desired=new, observed=unready))) == []
    assert stopped(decide(Snapshot(now=NOW, desired=new, observed=observe(running)))) == [
        "etcd@surabaya"
    ]
