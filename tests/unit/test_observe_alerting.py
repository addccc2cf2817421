"""The alert book (state machine, persistence, silences, inhibition, grouping) and the
dispatcher's payloads and backoff, all on injected time: no clock, no network."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alwayson.metrics.model import Point
from alwayson.observe.alerting import (
    AlertBook,
    AlertState,
    InhibitRule,
    Notification,
    NotifiedAlert,
    alert_labels,
    fingerprint,
    group_key,
    group_labels,
)
from alwayson.observe.notifying import (
    Dispatcher,
    backoff_delay,
    email_message,
    headline,
    rfc3339,
    slack_payload,
    webhook_payload,
)
from alwayson.spec.observing import AlertRule, Alerts, Email, Receiver
from alwayson.util.clocks import ManualClock
from alwayson.util.errors import ConflictError, NotFoundError

T0 = 1_800_000_000.0
DOWN = 'up{job="instances"} == 0'
SITE = "alwayson_site_up == 0"


class FakeQuery:
    """Answers each expression with the points it was given; raises what it was told."""

    def __init__(self) -> None:
        self.results: dict[str, list[Point]] = {}
        self.errors: dict[str, Exception] = {}
        self.calls: list[tuple[str, float]] = []

    def __call__(self, expr: str, at: float) -> list[Point]:
        self.calls.append((expr, at))
        if expr in self.errors:
            raise self.errors[expr]
        return list(self.results.get(expr, []))

    def set(self, expr: str, *points: tuple[dict[str, str], float]) -> None:
        self.results[expr] = [Point(dict(labels), value) for labels, value in points]


def rule(name: str, expr: str, for_: float = 0.0, **extra: Any) -> AlertRule:
    return AlertRule.model_validate({"name": name, "expr": expr, "for": for_, **extra})


def down(instance: str, site: str = "jakarta") -> tuple[dict[str, str], float]:
    labels = {"__name__": "up", "job": "instances", "instance": instance, "site": site}
    return labels, 0.0


def hook(name: str = "oncall", send_resolved: bool = True) -> Receiver:
    return Receiver.model_validate(
        {"name": name, "webhook": {"url": "http://127.0.0.1:9/"}, "send_resolved": send_resolved}
    )


def states(book: AlertBook) -> dict[str, str]:
    return {view["labels"].get("instance", view["name"]): view["state"] for view in book.alerts()}


# -- the state machine -------------------------------------------------------------------


def test_pending_becomes_firing_only_after_for() -> None:
    book, query = AlertBook(), FakeQuery()
    rules = [rule("InstanceDown", DOWN, 60.0, summary="{{ $labels.instance }} is down")]
    query.set(DOWN, down("a#0"))
    changes = book.evaluate(rules, query, T0)
    assert [(c.before, c.after) for c in changes] == [(None, AlertState.PENDING)]
    for dt in (30.0, 59.999):
        assert book.evaluate(rules, query, T0 + dt) == []
        assert states(book) == {"a#0": "pending"}
    changes = book.evaluate(rules, query, T0 + 60.0)
    assert [(c.before, c.after, c.state, c.name) for c in changes] == [
        (AlertState.PENDING, AlertState.FIRING, "firing", "InstanceDown")
    ]
    assert changes[0].summary == "a#0 is down"
    assert "InstanceDown{" in str(changes[0]) and "pending → firing" in str(changes[0])
    (view,) = book.firing()
    assert (view["activeAt"], view["firedAt"], view["resolvedAt"]) == (T0, T0 + 60.0, None)
    assert view["annotations"] == {"summary": "a#0 is down"}
    assert view["summary"] == "a#0 is down"


def test_for_zero_fires_at_the_first_evaluation() -> None:
    book, query = AlertBook(), FakeQuery()
    query.set(DOWN, down("a#0"))
    changes = book.evaluate([rule("InstanceDown", DOWN)], query, T0)
    assert [(c.before, c.after) for c in changes] == [(None, AlertState.FIRING)]
    assert book.firing()[0]["firedAt"] == T0


def test_a_pending_alert_that_stops_being_true_is_dropped() -> None:
    book, query = AlertBook(), FakeQuery()
    rules = [rule("InstanceDown", DOWN, 60.0)]
    query.set(DOWN, down("a#0"))
    book.evaluate(rules, query, T0)
    query.set(DOWN)
    changes = book.evaluate(rules, query, T0 + 30)
    assert [(c.before, c.after, c.state) for c in changes] == [
        (AlertState.PENDING, None, "inactive")
    ]
    assert book.alerts() == []
    query.set(DOWN, down("a#0"))
    book.evaluate(rules, query, T0 + 40)
    book.evaluate(rules, query, T0 + 90)  # 50 s since it came back: not yet
    assert states(book) == {"a#0": "pending"}


def test_firing_resolves_is_kept_then_forgotten() -> None:
    book, query = AlertBook(resolved_retention=900.0), FakeQuery()
    rules = [rule("InstanceDown", DOWN)]
    query.set(DOWN, down("a#0"), down("b#0"))
    book.evaluate(rules, query, T0)
    query.set(DOWN, down("b#0"))
    changes = book.evaluate(rules, query, T0 + 5)
    assert [(c.labels["instance"], c.after) for c in changes] == [("a#0", AlertState.RESOLVED)]
    assert states(book) == {"a#0": "resolved", "b#0": "firing"}
    resolved = next(v for v in book.alerts() if v["state"] == "resolved")
    assert (resolved["firedAt"], resolved["resolvedAt"]) == (T0, T0 + 5)
    assert book.evaluate(rules, query, T0 + 904) == []
    changes = book.evaluate(rules, query, T0 + 905)
    assert [(c.before, c.after) for c in changes] == [(AlertState.RESOLVED, None)]
    assert states(book) == {"b#0": "firing"}


def test_a_resolved_alert_that_comes_back_starts_again() -> None:
    book, query = AlertBook(), FakeQuery()
    rules = [rule("InstanceDown", DOWN, 10.0)]
    query.set(DOWN, down("a#0"))
    book.evaluate(rules, query, T0)
    book.evaluate(rules, query, T0 + 10)
    query.set(DOWN)
    book.evaluate(rules, query, T0 + 20)
    query.set(DOWN, down("a#0"))
    changes = book.evaluate(rules, query, T0 + 30)
    assert [(c.before, c.after) for c in changes] == [(AlertState.RESOLVED, AlertState.PENDING)]
    (view,) = book.alerts()
    assert (view["activeAt"], view["firedAt"], view["resolvedAt"]) == (T0 + 30, None, None)


def test_value_and_summary_follow_the_latest_evaluation() -> None:
    book, query = AlertBook(), FakeQuery()
    expr = "x > 1"
    rules = [rule("Hot", expr, summary="at {{ $value }}")]
    query.set(expr, ({"site": "jakarta"}, 2.0))
    book.evaluate(rules, query, T0)
    query.set(expr, ({"site": "jakarta"}, 7.5))
    book.evaluate(rules, query, T0 + 5)
    (view,) = book.firing()
    assert (view["value"], view["summary"], view["activeAt"]) == (7.5, "at 7.5", T0)


def test_alert_labels_and_identity() -> None:
    mine = rule("Hot", "x > 1", severity="critical", labels={"team": "core", "site": "forced"})
    labels = alert_labels(mine, {"__name__": "x", "site": "jakarta", "empty": ""})
    assert labels == {"alertname": "Hot", "severity": "critical", "team": "core", "site": "forced"}
    overridden = rule("Hot", "x > 1", labels={"severity": "page"})
    assert alert_labels(overridden, {})["severity"] == "page"
    # Alertmanager's fingerprints, as a real Alertmanager 0.25 reported them
    assert fingerprint({}) == "cbf29ce484222325"
    assert fingerprint({"alertname": "SiteDown", "site": "surabaya"}) == "46f6d5911219f886"
    instance = {
        "alertname": "InstanceDown",
        "instance": "accounts@jakarta#0",
        "severity": "warning",
        "site": "jakarta",
    }
    assert fingerprint(instance) == "995fe0871535afa7"
    assert fingerprint(dict(reversed(list(instance.items())))) == "995fe0871535afa7"


def test_rule_labels_are_part_of_the_identity() -> None:
    book, query = AlertBook(), FakeQuery()
    query.set(DOWN, down("a#0"))
    book.evaluate([rule("InstanceDown", DOWN, labels={"team": "a"})], query, T0)
    changes = book.evaluate([rule("InstanceDown", DOWN, labels={"team": "b"})], query, T0 + 1)
    assert sorted((c.labels["team"], c.state) for c in changes) == [
        ("a", "resolved"),
        ("b", "firing"),
    ]


def test_a_failing_query_keeps_the_state_and_shows_the_error() -> None:
    book, query = AlertBook(), FakeQuery()
    rules = [rule("InstanceDown", DOWN), rule("Slow", "slow > 1", 60.0)]
    query.set(DOWN, down("a#0"))
    query.set("slow > 1", ({"service": "accounts"}, 2.0))
    book.evaluate(rules, query, T0)
    assert {r["name"]: r["health"] for r in book.rules()} == {"InstanceDown": "ok", "Slow": "ok"}
    query.errors[DOWN] = RuntimeError("store unreachable")
    query.errors["slow > 1"] = ValueError()
    assert book.evaluate(rules, query, T0 + 120) == []
    assert states(book) == {"a#0": "firing", "Slow": "pending"}  # neither resolved nor promoted
    health = {r["name"]: r for r in book.rules()}
    assert health["InstanceDown"]["health"] == "error"
    assert health["InstanceDown"]["error"] == "RuntimeError: store unreachable"
    assert health["Slow"]["error"] == "ValueError"
    assert health["Slow"]["lastEvaluation"] == T0 + 120
    query.errors.clear()
    changes = book.evaluate(rules, query, T0 + 125)
    assert [(c.name, c.state) for c in changes] == [("Slow", "firing")]
    assert all(r["health"] == "ok" and r["error"] is None for r in book.rules())


def test_a_scalar_or_clashing_result_is_a_rule_error() -> None:
    book = AlertBook()

    def scalar(expr: str, at: float) -> Any:
        return 1.0

    book.evaluate([rule("Odd", "x > 1")], scalar, T0)
    assert "not a vector" in book.rules()[0]["error"]
    query = FakeQuery()
    query.set("x > 1", ({"a": "1", "team": "x"}, 2.0), ({"a": "1", "team": "y"}, 3.0))
    book.evaluate([rule("Odd", "x > 1", labels={"team": "z"})], query, T0)
    assert "once the rule's labels are added" in book.rules()[0]["error"]
    assert book.alerts() == []


def test_alerts_of_a_removed_rule_resolve_and_its_health_goes() -> None:
    book, query = AlertBook(), FakeQuery()
    query.set(DOWN, down("a#0"))
    query.set("x > 1", ({"a": "1"}, 2.0))
    book.evaluate([rule("InstanceDown", DOWN), rule("Pend", "x > 1", 60.0)], query, T0)
    changes = book.evaluate([], query, T0 + 5)
    assert sorted((c.name, c.state) for c in changes) == [
        ("InstanceDown", "resolved"),
        ("Pend", "inactive"),
    ]
    assert book.rules() == []


def test_a_duplicate_rule_name_is_reported_and_ignored() -> None:
    book, query = AlertBook(), FakeQuery()
    query.set("x > 1", ({"a": "1"}, 2.0))
    book.evaluate([rule("Dup", "y > 1"), rule("Dup", "x > 1")], query, T0)
    assert book.alerts() == []
    assert book.rules()[0]["error"] == "duplicate rule name; ignored"


@st.composite
def evaluations(draw: st.DrawFn) -> tuple[float, list[tuple[float, bool]]]:
    for_ = draw(st.sampled_from([0.0, 0.5, 5.0, 15.0, 60.0]))
    steps = draw(
        st.lists(
            st.tuples(
                # round gaps land exactly on `for`, where > and >= differ
                st.sampled_from([0.0, 0.5, 2.5, 5.0, 7.5, 15.0, 30.0])
                | st.floats(min_value=0.0, max_value=40.0),
                st.booleans(),
            ),
            min_size=1,
            max_size=40,
        )
    )
    return for_, steps


@settings(max_examples=300, deadline=None)
@given(evaluations(), st.integers(min_value=0, max_value=40))
def test_firing_iff_true_continuously_for_at_least_for(
    case: tuple[float, list[tuple[float, bool]]], restart_at: int
) -> None:
    for_, steps = case
    book, query = AlertBook(), FakeQuery()
    rules = [rule("Cond", "x > 1", for_)]
    now, true_since = T0, None
    for index, (gap, holds) in enumerate(steps):
        now += gap
        query.set("x > 1", *([({"a": "1"}, 2.0)] if holds else []))
        if index == restart_at:  # a controller restart in the middle changes nothing
            book = AlertBook.from_json(json.loads(json.dumps(book.to_json())))
        book.evaluate(rules, query, now)
        if not holds:
            true_since = None
        elif true_since is None:
            true_since = now
        firing = [v for v in book.alerts() if v["state"] == "firing"]
        pending = [v for v in book.alerts() if v["state"] == "pending"]
        expected = true_since is not None and now - true_since >= for_
        assert bool(firing) == expected
        assert bool(pending) == (true_since is not None and not expected)
        if true_since is not None:
            assert (firing or pending)[0]["activeAt"] == true_since


# -- persistence -------------------------------------------------------------------------


def test_a_restart_mid_pending_keeps_active_at() -> None:
    book, query = AlertBook(), FakeQuery()
    rules = [rule("InstanceDown", DOWN, 60.0)]
    query.set(DOWN, down("a#0"))
    book.evaluate(rules, query, T0)
    book.evaluate(rules, query, T0 + 40)
    saved = json.loads(json.dumps(book.to_json()))
    again = AlertBook.from_json(saved)
    assert again.to_json() == saved
    changes = again.evaluate(rules, query, T0 + 60)
    assert [c.state for c in changes] == ["firing"]
    assert again.firing()[0]["activeAt"] == T0


def test_the_whole_state_round_trips_exactly() -> None:
    ids = iter(["s1", "s2"])
    book, query = AlertBook(new_id=lambda: next(ids)), FakeQuery()
    rules = [rule("InstanceDown", DOWN), rule("Inf", "x > 1"), rule("Broken", "y > 1")]
    query.set(DOWN, down("a#0"), down("b#0", "surabaya"))
    query.set("x > 1", ({"q": "1"}, math.inf), ({"q": "2"}, math.nan))
    query.errors["y > 1"] = RuntimeError("boom")
    book.evaluate(rules, query, T0 + 0.1)
    book.add_silence({"instance": "b#0"}, T0 + 3600, "maintenance", "ops", T0 + 0.1)
    silence = book.add_silence({"alertname": "Inf"}, T0 + 3600, "", "ops", T0 + 0.1)
    book.expire_silence(silence.id, T0 + 0.2)
    book.due_notifications([hook()], Alerts(group_wait=10.0), T0 + 0.2)
    book.due_notifications([hook()], Alerts(group_wait=10.0), T0 + 10.2)
    query.set(DOWN, down("b#0", "surabaya"))
    book.evaluate(rules, query, T0 + 11.3)
    saved = book.to_json()
    text = json.dumps(saved, allow_nan=False)  # plain JSON, storable anywhere
    again = AlertBook.from_json(json.loads(text))
    assert again.to_json() == saved
    assert again.alerts(T0 + 12) == book.alerts(T0 + 12)
    assert again.silences(T0 + 12) == book.silences(T0 + 12)
    # and it goes on identically
    first = book.due_notifications([hook()], Alerts(group_wait=10.0), T0 + 60)
    second = again.due_notifications([hook()], Alerts(group_wait=10.0), T0 + 60)
    assert first == second and first


def test_another_state_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        AlertBook.from_json({"version": 99})


# -- silences ----------------------------------------------------------------------------


def test_a_silence_mutes_notifications_until_it_ends() -> None:
    book, query = AlertBook(new_id=lambda: "s-1"), FakeQuery()
    rules = [rule("InstanceDown", DOWN)]
    query.set(DOWN, down("a#0"))
    settings_ = Alerts(group_wait=0.0, group_interval=30.0)
    silence = book.add_silence(
        {"alertname": "InstanceDown", "site": "jakarta"}, T0 + 100, "deploy", "ana", T0
    )
    assert silence.id == "s-1"
    book.evaluate(rules, query, T0)
    assert book.due_notifications([hook()], settings_, T0) == []
    (view,) = book.alerts(T0)
    assert (view["state"], view["silenced_by"]) == ("firing", ["s-1"])  # still tracked
    assert book.due_notifications([hook()], settings_, T0 + 60) == []
    assert book.alerts(T0 + 100)[0]["silenced_by"] == []
    (note,) = book.due_notifications([hook()], settings_, T0 + 100)
    assert [a.labels["instance"] for a in note.alerts] == ["a#0"]
    assert [s["state"] for s in book.silences(T0 + 100)] == ["expired"]


def test_expiring_a_silence_resumes_notifications_at_once() -> None:
    book, query = AlertBook(), FakeQuery()
    query.set(DOWN, down("a#0"))
    silence = book.add_silence({"instance": "~a#.*"}, T0 + 3600, "", "ana", T0)
    book.evaluate([rule("InstanceDown", DOWN)], query, T0)
    assert book.due_notifications([hook()], Alerts(), T0) == []
    assert book.silences(T0)[0]["state"] == "active"
    expired = book.expire_silence(silence.id, T0 + 10)
    assert expired.ends_at == T0 + 10
    assert len(book.due_notifications([hook()], Alerts(), T0 + 10)) == 1
    with pytest.raises(ConflictError):
        book.expire_silence(silence.id, T0 + 11)
    with pytest.raises(NotFoundError):
        book.expire_silence("nope", T0 + 11)


def test_silence_matchers_regex_and_missing_labels() -> None:
    book = AlertBook()
    book.add_silence({"alertname": "~Instance.*|SiteDown", "site": "jakarta"}, T0 + 9, "", "", T0)
    assert book.silenced_by({"alertname": "InstanceDown", "site": "jakarta"}, T0)
    assert book.silenced_by({"alertname": "SiteDown", "site": "jakarta"}, T0)
    assert not book.silenced_by({"alertname": "XInstanceDown", "site": "jakarta"}, T0)
    assert not book.silenced_by({"alertname": "InstanceDown"}, T0)
    book.add_silence({"alertname": "X", "site": "~"}, T0 + 9, "", "", T0)  # site absent
    assert book.silenced_by({"alertname": "X"}, T0)
    assert not book.silenced_by({"alertname": "X", "site": "s"}, T0)


@pytest.mark.parametrize(
    ("matchers", "ends_in", "message"),
    [
        ({}, 60.0, "at least one matcher"),
        ({"site": "~("}, 60.0, "not a regular expression"),
        ({"bad-name": "x"}, 60.0, "not a label name"),
        ({"site": "~.*", "x": ""}, 60.0, "non-empty"),
        ({"site": "jakarta"}, 0.0, "end after"),
    ],
)
def test_bad_silences_are_refused(matchers: dict[str, str], ends_in: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AlertBook().add_silence(matchers, T0 + ends_in, "", "", T0)


def test_expired_silences_are_listed_then_forgotten() -> None:
    book = AlertBook(silence_retention=3600.0)
    old = book.add_silence({"site": "a"}, T0 + 10, "", "", T0)
    new = book.add_silence({"site": "b"}, T0 + 7200, "", "", T0)
    listed = book.silences(T0 + 20)
    assert [(s["id"], s["state"]) for s in listed] == [(new.id, "active"), (old.id, "expired")]
    assert listed[1]["matchers"] == {"site": "a"} and listed[1]["endsAt"] == T0 + 10
    book.evaluate([], FakeQuery(), T0 + 3610)
    assert [s["id"] for s in book.silences(T0 + 3610)] == [new.id]


# -- inhibition --------------------------------------------------------------------------


def _site_down_book(site_down_for: float = 0.0) -> tuple[AlertBook, FakeQuery, list[AlertRule]]:
    book, query = AlertBook(), FakeQuery()
    rules = [rule("SiteDown", SITE, site_down_for), rule("InstanceDown", DOWN)]
    query.set(SITE, ({"__name__": "alwayson_site_up", "site": "jakarta"}, 0.0))
    query.set(DOWN, down("a#0", "jakarta"), down("b#0", "surabaya"))
    return book, query, rules


def test_site_down_inhibits_the_other_alerts_of_its_site() -> None:
    book, query, rules = _site_down_book()
    book.evaluate(rules, query, T0)
    views = {v["labels"].get("instance", v["name"]): v for v in book.alerts()}
    site_fp = views["SiteDown"]["fingerprint"]
    assert views["a#0"]["inhibited_by"] == [site_fp]
    assert views["b#0"]["inhibited_by"] == []
    assert views["SiteDown"]["inhibited_by"] == []  # never by itself
    notes = book.due_notifications([hook()], Alerts(), T0)
    assert sorted(n.group_key for n in notes) == [
        '{}:{alertname="InstanceDown", site="surabaya"}',
        '{}:{alertname="SiteDown", site="jakarta"}',
    ]


def test_only_a_firing_site_down_inhibits() -> None:
    book, query, rules = _site_down_book(site_down_for=60.0)
    book.evaluate(rules, query, T0)
    assert all(v["inhibited_by"] == [] for v in book.alerts())
    assert len(book.due_notifications([hook()], Alerts(), T0)) == 2


def test_inhibition_rules_are_data() -> None:
    rules_ = [InhibitRule(source={"severity": "critical"}, target={"severity": "warning"},
                          equal=("service",))]  # fmt: skip
    book, query = AlertBook(inhibit_rules=rules_), FakeQuery()
    query.set("c > 1", ({"service": "accounts"}, 2.0))
    query.set("w > 1", ({"service": "accounts"}, 2.0), ({"service": "cards"}, 2.0))
    book.evaluate([rule("Crit", "c > 1", severity="critical"), rule("Warn", "w > 1")], query, T0)
    inhibited = {v["labels"]["service"] for v in book.alerts() if v["inhibited_by"]}
    assert inhibited == {"accounts"}
    with pytest.raises(ValueError):
        AlertBook(inhibit_rules=[InhibitRule(source={"a": "~("}, target={})])


# -- grouping and notifications ------------------------------------------------------------


def _firing_book(*points: tuple[dict[str, str], float]) -> tuple[AlertBook, FakeQuery]:
    book, query = AlertBook(), FakeQuery()
    query.set(DOWN, *points)
    book.evaluate([rule("InstanceDown", DOWN)], query, T0)
    return book, query


def test_alerts_of_one_group_go_out_together() -> None:
    book, _ = _firing_book(down("a#0"), down("b#0"), down("c#0", "surabaya"))
    notes = book.due_notifications([hook()], Alerts(), T0)
    assert [(n.group_labels, len(n.alerts)) for n in notes] == [
        ({"alertname": "InstanceDown", "site": "jakarta"}, 2),
        ({"alertname": "InstanceDown", "site": "surabaya"}, 1),
    ]
    first = notes[0]
    assert first.receiver == "oncall" and first.status == "firing" and first.at == T0
    assert first.group_key == '{}:{alertname="InstanceDown", site="jakarta"}'
    assert first.common_labels == {
        "alertname": "InstanceDown",
        "job": "instances",
        "severity": "warning",
        "site": "jakarta",
    }
    assert book.due_notifications([hook()], Alerts(), T0 + 1) == []


def test_group_by_all_labels_and_missing_ones() -> None:
    labels = {"alertname": "A", "site": "x", "db": "ledger"}
    assert group_labels(labels, ["alertname", "service"]) == {"alertname": "A"}
    assert group_labels(labels, ["..."]) == labels
    assert group_key({}) == "{}:{}"


def test_group_wait_then_group_interval_then_repeat_interval() -> None:
    book, query = AlertBook(), FakeQuery()
    rules = [rule("InstanceDown", DOWN)]
    timing = Alerts(group_wait=10.0, group_interval=30.0, repeat_interval=300.0)
    receivers = [hook()]
    query.set(DOWN, down("a#0"))
    book.evaluate(rules, query, T0)

    def due(at: float) -> list[list[str]]:
        notes = book.due_notifications(receivers, timing, at)
        return [[f"{a.status}:{a.labels['instance']}" for a in n.alerts] for n in notes]

    assert due(T0) == []
    assert due(T0 + 9.9) == []
    assert due(T0 + 10) == [["firing:a#0"]]  # a new group after group_wait
    query.set(DOWN, down("a#0"), down("b#0"))
    book.evaluate(rules, query, T0 + 15)
    assert due(T0 + 15) == []  # a change waits for the next group tick
    assert due(T0 + 39.9) == []
    assert due(T0 + 40) == [["firing:a#0", "firing:b#0"]]
    assert due(T0 + 70) == []  # unchanged: nothing until the repeat interval
    assert due(T0 + 310) == []
    assert due(T0 + 340) == [["firing:a#0", "firing:b#0"]]  # repeat, on a group tick
    assert due(T0 + 370) == []


def test_resolved_alerts_go_out_once_to_receivers_that_want_them() -> None:
    book, query = _firing_book(down("a#0"), down("b#0"))
    both = [hook("loud"), hook("quiet", send_resolved=False)]
    timing = Alerts(group_interval=30.0)
    assert [n.receiver for n in book.due_notifications(both, timing, T0)] == ["loud", "quiet"]
    query.set(DOWN, down("b#0"))
    book.evaluate([rule("InstanceDown", DOWN)], query, T0 + 5)
    (note,) = book.due_notifications(both, timing, T0 + 30)
    assert note.receiver == "loud"
    assert [(a.status, a.labels["instance"]) for a in note.alerts] == [
        ("firing", "b#0"),
        ("resolved", "a#0"),
    ]
    assert note.resolved[0].ends_at == T0 + 5 and note.status == "firing"
    assert book.due_notifications(both, timing, T0 + 60) == []
    query.set(DOWN)
    book.evaluate([rule("InstanceDown", DOWN)], query, T0 + 65)
    (note,) = book.due_notifications(both, timing, T0 + 90)
    assert note.status == "resolved" and [a.labels["instance"] for a in note.alerts] == ["b#0"]
    assert book.due_notifications(both, timing, T0 + 120) == []
    # the group is gone: a new alert in it waits group_wait again, from scratch
    query.set(DOWN, down("a#0"))
    book.evaluate([rule("InstanceDown", DOWN)], query, T0 + 125)
    assert len(book.due_notifications(both, Alerts(group_wait=5.0), T0 + 125)) == 0
    assert len(book.due_notifications(both, Alerts(group_wait=5.0), T0 + 130)) == 2


def test_an_alert_resolved_before_anyone_was_told_is_not_sent() -> None:
    book, query = _firing_book(down("a#0"))
    timing = Alerts(group_wait=30.0)
    assert book.due_notifications([hook()], timing, T0) == []
    query.set(DOWN)
    book.evaluate([rule("InstanceDown", DOWN)], query, T0 + 10)
    assert book.due_notifications([hook()], timing, T0 + 30) == []
    assert book.due_notifications([hook()], timing, T0 + 60) == []


def test_pending_alerts_are_never_notified() -> None:
    book, query = AlertBook(), FakeQuery()
    query.set(DOWN, down("a#0"))
    book.evaluate([rule("InstanceDown", DOWN, 60.0)], query, T0)
    assert book.due_notifications([hook()], Alerts(), T0 + 30) == []


def test_an_undelivered_notification_is_due_again_at_the_next_tick() -> None:
    book, _ = _firing_book(down("a#0"))
    timing = Alerts(group_interval=30.0)
    (note,) = book.due_notifications([hook()], timing, T0)
    book.mark_undelivered(note)
    assert book.due_notifications([hook()], timing, T0 + 10) == []
    (again,) = book.due_notifications([hook()], timing, T0 + 30)
    assert again.alerts == note.alerts


def test_a_new_receiver_is_told_at_the_next_tick() -> None:
    book, _ = _firing_book(down("a#0"))
    timing = Alerts(group_interval=30.0)
    assert len(book.due_notifications([hook("a")], timing, T0)) == 1
    notes = book.due_notifications([hook("a"), hook("b")], timing, T0 + 30)
    assert [n.receiver for n in notes] == ["b"]


def test_views_are_plain_json() -> None:
    book, query = _firing_book(down("a#0"))
    query.set("x > 1", ({"site": "jakarta"}, math.inf))
    book.evaluate([rule("InstanceDown", DOWN), rule("Inf", "x > 1", 60)], query, T0)
    views = book.alerts(T0)
    json.dumps(views, allow_nan=False)
    assert [v["state"] for v in views] == ["firing", "pending"]
    assert views[1]["value"] == "+Inf"
    assert set(views[0]) >= {
        "state", "labels", "annotations", "summary", "value", "activeAt",
        "firedAt", "resolvedAt", "silenced_by", "inhibited_by",
    }  # fmt: skip
    assert [v["name"] for v in book.firing()] == ["InstanceDown"]


# -- payloads ----------------------------------------------------------------------------


def _notification(*alerts: NotifiedAlert, receiver: str = "hook") -> Notification:
    return Notification(
        receiver=receiver,
        group_key='{}:{alertname="InstanceDown", site="jakarta"}',
        group_labels={"alertname": "InstanceDown", "site": "jakarta"},
        alerts=alerts,
        at=T0,
    )


FIRING = NotifiedAlert(
    fingerprint="995fe0871535afa7",
    status="firing",
    labels={
        "alertname": "InstanceDown",
        "instance": "accounts@jakarta#0",
        "severity": "warning",
        "site": "jakarta",
    },
    annotations={"summary": "down"},
    starts_at=1767323045.5,  # 2026-01-02T03:04:05.5Z
    ends_at=None,
    value=0.0,
)


def test_webhook_payload_is_alertmanagers_version_4() -> None:
    # What a real Alertmanager 0.25 posted for the same alert (its generatorURL aside).
    from_alertmanager = {
        "receiver": "hook",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": dict(FIRING.labels),
                "annotations": {"summary": "down"},
                "startsAt": "2026-01-02T03:04:05.5Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://vm:36591/alerts?fingerprint=995fe0871535afa7",
                "fingerprint": "995fe0871535afa7",
            }
        ],
        "groupLabels": {"alertname": "InstanceDown", "site": "jakarta"},
        "commonLabels": dict(FIRING.labels),
        "commonAnnotations": {"summary": "down"},
        "externalURL": "http://vm:36591",
        "version": "4",
        "groupKey": '{}:{alertname="InstanceDown", site="jakarta"}',
        "truncatedAlerts": 0,
    }
    assert webhook_payload(_notification(FIRING), "http://vm:36591") == from_alertmanager


def test_resolved_alerts_carry_their_end_and_common_parts_shrink() -> None:
    other = NotifiedAlert(
        fingerprint="1",
        status="resolved",
        labels={"alertname": "InstanceDown", "instance": "b", "site": "jakarta"},
        annotations={"summary": "other"},
        starts_at=T0,
        ends_at=T0 + 60.25,
        value=0.0,
    )
    payload = webhook_payload(_notification(FIRING, other))
    assert payload["status"] == "firing"
    assert payload["alerts"][1]["endsAt"] == "2027-01-15T08:01:00.25Z"
    assert payload["alerts"][1]["generatorURL"] == ""
    assert payload["commonLabels"] == {"alertname": "InstanceDown", "site": "jakarta"}
    assert payload["commonAnnotations"] == {}
    assert webhook_payload(_notification(other))["status"] == "resolved"


def test_rfc3339() -> None:
    assert rfc3339(None) == "0001-01-01T00:00:00Z"
    assert rfc3339(0.0) == "1970-01-01T00:00:00Z"
    assert rfc3339(1.000001) == "1970-01-01T00:00:01.000001Z"


def test_headline_email_and_slack() -> None:
    resolved = NotifiedAlert(
        fingerprint="2",
        status="resolved",
        labels={"alertname": "SiteDown", "site": "surabaya"},
        annotations={},
        starts_at=T0,
        ends_at=T0 + 1,
        value=0.0,
    )
    note = _notification(FIRING, resolved)
    assert headline(note) == "[FIRING:1] InstanceDown SiteDown (sites jakarta, surabaya)"
    assert headline(_notification(resolved)) == "[RESOLVED] SiteDown (site surabaya)"
    email = Email.model_validate({"to": "sre@bank.example", "smarthost": "127.0.0.1:25",
                                  "from": "alerts@bank.example"})  # fmt: skip
    message = email_message(note, email, "http://ctl:7070")
    assert message["Subject"] == headline(note)
    assert (message["From"], message["To"]) == ("alerts@bank.example", "sre@bank.example")
    assert message["X-Alwayson-Status"] == "firing"
    body = message.get_content()
    assert "[FIRING] InstanceDown (warning) since 2026-01-02T03:04:05.5Z" in body
    assert "[RESOLVED] SiteDown" in body and "  down\n" in body
    assert "http://ctl:7070/alerts" in body
    slack = slack_payload(note, "#oncall")
    assert slack["text"] == headline(note) and slack["channel"] == "#oncall"
    assert [(a["color"], a["title"]) for a in slack["attachments"]] == [
        ("danger", "1 firing"),
        ("good", "1 resolved"),
    ]
    assert "channel" not in slack_payload(note)


# -- delivery with a fake transport and a fake sleep ---------------------------------------


def _dispatcher(
    answers: Sequence[int | Exception], **kwargs: Any
) -> tuple[Dispatcher, list[float], list[httpx.Request], ManualClock]:
    clock = ManualClock()
    slept: list[float] = []
    seen: list[httpx.Request] = []
    pending = list(answers)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = pending.pop(0) if pending else 200
        if isinstance(answer, Exception):
            raise answer
        headers = {"Retry-After": "7"} if answer == 429 else {}
        return httpx.Response(answer, headers=headers)

    dispatcher = Dispatcher(
        sleep=sleep,
        monotonic=clock.monotonic,
        transport=httpx.MockTransport(handle),
        **kwargs,
    )
    return dispatcher, slept, seen, clock


def _receiver(max_attempts: int, kind: str = "webhook") -> Receiver:
    return Receiver.model_validate(
        {"name": "r", kind: {"url": "http://127.0.0.1:9/x"}, "max_attempts": max_attempts}
    )


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_delay(n, 1.0, 10.0) for n in range(0, 7)] == [0, 1, 2, 4, 8, 10, 10]
    assert backoff_delay(10_000, 1.0, 10.0) == 10.0


async def test_retries_with_backoff_until_it_gets_through() -> None:
    seen_hook: list[dict[str, Any]] = []
    dispatcher, slept, requests, _ = _dispatcher(
        [500, httpx.ConnectError("refused"), 200], on_attempt=seen_hook.append
    )
    ok = await dispatcher.send(_notification(FIRING), _receiver(5), T0)
    assert ok is True
    assert slept == [1.0, 2.0]
    attempts = dispatcher.attempts()
    assert attempts == seen_hook
    assert [(a["attempt"], a["ok"], a["status"], a["final"]) for a in attempts] == [
        (1, False, 500, False),
        (2, False, None, False),
        (3, True, 200, True),
    ]
    assert [a["at"] for a in attempts] == [T0, T0 + 1.0, T0 + 3.0]
    assert attempts[1]["error"] == "ConnectError: refused"
    assert {a["kind"] for a in attempts} == {"webhook"}
    assert json.loads(requests[-1].content)["version"] == "4"
    await dispatcher.close()


async def test_gives_up_after_max_attempts_and_caps_the_delay() -> None:
    dispatcher, slept, _, _ = _dispatcher([503] * 10, max_delay=3.0)
    assert await dispatcher.deliver(_notification(FIRING), _receiver(4), T0) is False
    assert slept == [1.0, 2.0, 3.0]
    attempts = dispatcher.attempts()
    assert len(attempts) == 4 and not any(a["ok"] for a in attempts)
    assert attempts[-1]["final"] and "gave up after 4 attempts" in attempts[-1]["error"]
    await dispatcher.close()


async def test_a_client_error_is_not_retried_but_retry_after_is_honoured() -> None:
    dispatcher, slept, _, _ = _dispatcher([429, 404])
    assert await dispatcher.deliver(_notification(FIRING), _receiver(5, "slack"), T0) is False
    assert slept == [7.0]
    assert [(a["status"], a["final"]) for a in dispatcher.attempts()] == [(429, False), (404, True)]
    await dispatcher.close()


def test_line_breaks_in_labels_do_not_break_the_email_headers() -> None:
    odd = NotifiedAlert("3", "firing", {"alertname": "A", "site": "x\ny"}, {}, T0, None, 1.0)
    email = Email(to="a@b.example", smarthost="127.0.0.1:25")
    message = email_message(_notification(odd), email)
    assert message["Subject"] == "[FIRING:1] A (site x y)"


async def test_an_unexpected_error_ends_in_a_logged_final_attempt() -> None:
    dispatcher, _, _, _ = _dispatcher([ValueError("bug")])
    assert await dispatcher.deliver(_notification(FIRING), _receiver(5), T0) is False
    (attempt,) = dispatcher.attempts()
    assert (attempt["final"], attempt["error"]) == (True, "ValueError: bug")
    await dispatcher.close()


async def test_a_broken_hook_does_not_stop_delivery() -> None:
    def broken(record: dict[str, Any]) -> None:
        raise RuntimeError("disk full")

    dispatcher, _, _, _ = _dispatcher([200], on_attempt=broken)
    assert await dispatcher.deliver(_notification(FIRING), _receiver(1), T0) is True
    await dispatcher.close()


async def test_close_cancels_deliveries_still_waiting_to_retry() -> None:
    gate = asyncio.Event()

    async def forever(seconds: float) -> None:
        await gate.wait()

    dispatcher = Dispatcher(
        sleep=forever, transport=httpx.MockTransport(lambda r: httpx.Response(500))
    )
    task = dispatcher.send(_notification(FIRING), _receiver(3), T0)
    while not dispatcher.attempts():
        await asyncio.sleep(0)
    assert dispatcher.pending == 1
    await dispatcher.close()
    assert task.cancelled() and dispatcher.pending == 0
    with pytest.raises(RuntimeError, match="closed"):
        dispatcher.send(_notification(FIRING), _receiver(3), T0)
