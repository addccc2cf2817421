"""The state of every alert, silences, inhibition and grouping: what Prometheus' rule
manager and Alertmanager do, in one pure object.

:class:`AlertBook` is given the time (``now``, wall seconds) and a query callable; it
reads no clock and does no I/O, so a 4-hour ``repeat_interval`` is tested in
microseconds and its whole state survives a controller restart through
:meth:`AlertBook.to_json` / :meth:`AlertBook.from_json`.

Lifecycle of one alert (identity: the rule's name, the result series' labels and the
rule's labels; its fingerprint is Alertmanager's, FNV-1a over the sorted labels)::

    (inactive) ──true──► PENDING ──true for `for`──► FIRING ──false──► RESOLVED
        ▲                  │ false                                       │ 15 min
        └──────────────────┴─────────────────────────────────────────────┘ (forgotten)

With ``for: 0`` an alert fires at the evaluation that first sees it. A rule whose query
fails keeps its alerts exactly as they were (neither promoted nor resolved) and shows
the error in :meth:`AlertBook.rules`.

Matchers (silences and inhibition rules) are a ``{label: value}`` mapping; a value that
starts with ``~`` is a regular expression matched against the whole label value, as
Alertmanager's ``=~`` (``{"alertname": "~Instance.*"}``). A missing label matches like
an empty value. To match a value that really starts with ``~``, escape it: ``~\\~x``.

Notifications follow Alertmanager: alerts are grouped by ``Alerts.group_by`` (``...``
means all labels); a new group waits ``group_wait``, then the group is looked at every
``group_interval`` and a receiver is notified when its group has new firing alerts,
when alerts it was told about resolved (if it ``send_resolved``), or when nothing
changed for ``repeat_interval``. Silenced and inhibited alerts are left out. A delivery
that finally fails can be handed back with :meth:`AlertBook.mark_undelivered` so the
next tick tries again.
"""

from __future__ import annotations

import enum
import json
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from alwayson.metrics.model import Point
from alwayson.observe.rules import SITE_DOWN, go_float, render_summary
from alwayson.spec.observing import LABEL_NAME, AlertRule, Alerts, Receiver
from alwayson.util.errors import ConflictError, NotFoundError

Query = Callable[[str, float], list[Point]]
"""An instant query: PromQL expression and evaluation time (wall seconds) → vector."""

Matchers = Mapping[str, str]

RESOLVED_RETENTION = 15 * 60.0
SILENCE_RETENTION = 120 * 3600.0
MAX_SILENCE = 30 * 86400.0
"""The longest a silence can last (30 days): a longer mute is a rule to change, not a
silence; one that is still needed is added again."""
STATE_VERSION = 1


class AlertState(enum.Enum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class RuleHealth(enum.Enum):
    UNKNOWN = "unknown"
    OK = "ok"
    ERROR = "error"


class SilenceState(enum.Enum):
    ACTIVE = "active"
    EXPIRED = "expired"


# -- labels, fingerprints, matchers ----------------------------------------------------

_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_SEPARATOR = 0xFF


def fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's fingerprint of a label set (``model.LabelSet.Fingerprint``):
    FNV-1a 64 over sorted names and values, each followed by 0xff; 16 hex digits."""
    digest = _FNV_OFFSET
    for name in sorted(labels):
        for text in (name, labels[name]):
            for byte in (*text.encode("utf-8"), _SEPARATOR):
                digest = ((digest ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{digest:016x}"


def label_set_text(labels: Mapping[str, str]) -> str:
    """``{a="1", b="2"}``: Prometheus' spelling of a label set, names sorted."""
    return "{" + ", ".join(f"{k}={json.dumps(labels[k])}" for k in sorted(labels)) + "}"


def check_matchers(matchers: Matchers) -> None:
    """Raise ValueError unless every name is a label name and every ``~`` value compiles."""
    for name, value in matchers.items():
        if not LABEL_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a label name")
        if value.startswith("~"):
            try:
                re.compile(value[1:])
            except re.error as exc:
                raise ValueError(
                    f"{name}: {value[1:]!r} is not a regular expression: {exc}"
                ) from None


def matches(matchers: Matchers, labels: Mapping[str, str]) -> bool:
    """Whether every matcher holds for ``labels`` (see the module docstring)."""
    for name, wanted in matchers.items():
        actual = labels.get(name, "")
        if wanted.startswith("~"):
            if re.fullmatch(wanted[1:], actual) is None:
                return False
        elif actual != wanted:
            return False
    return True


def _finite(value: float) -> float | str:
    """JSON has no NaN or infinities: those travel as Prometheus spells them."""
    return value if math.isfinite(value) else go_float(value)


def _float(value: float | str) -> float:
    return float(value.replace("Inf", "inf")) if isinstance(value, str) else float(value)


# -- records ----------------------------------------------------------------------------


@dataclass(slots=True)
class Alert:
    """One alert instance; times are wall seconds."""

    fingerprint: str
    rule: str
    labels: dict[str, str]
    annotations: dict[str, str]
    state: AlertState
    value: float
    active_at: float
    last_evaluated: float
    fired_at: float | None = None
    resolved_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "rule": self.rule,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "state": self.state.value,
            "value": _finite(self.value),
            "activeAt": self.active_at,
            "firedAt": self.fired_at,
            "resolvedAt": self.resolved_at,
            "lastEvaluated": self.last_evaluated,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Alert:
        return cls(
            fingerprint=str(data["fingerprint"]),
            rule=str(data["rule"]),
            labels={str(k): str(v) for k, v in data["labels"].items()},
            annotations={str(k): str(v) for k, v in data["annotations"].items()},
            state=AlertState(data["state"]),
            value=_float(data["value"]),
            active_at=float(data["activeAt"]),
            last_evaluated=float(data["lastEvaluated"]),
            fired_at=None if data["firedAt"] is None else float(data["firedAt"]),
            resolved_at=None if data["resolvedAt"] is None else float(data["resolvedAt"]),
        )


@dataclass(frozen=True, slots=True)
class Change:
    """One transition of one alert; ``None`` is inactive (new, or forgotten)."""

    fingerprint: str
    rule: str
    labels: dict[str, str]
    before: AlertState | None
    after: AlertState | None
    at: float
    value: float
    summary: str = ""

    @property
    def name(self) -> str:
        """The rule's name (the ``alertname`` label)."""
        return self.rule

    @property
    def state(self) -> str:
        """The state it moved to: ``pending``, ``firing``, ``resolved`` or ``inactive``."""
        return self.after.value if self.after else "inactive"

    def __str__(self) -> str:
        shown = {k: v for k, v in self.labels.items() if k not in ("alertname", "source")}
        old = self.before.value if self.before else "inactive"
        new = self.after.value if self.after else "inactive"
        return f"{self.rule}{label_set_text(shown)} {old} → {new} (value {go_float(self.value)})"


@dataclass(slots=True)
class RuleStatus:
    name: str
    health: RuleHealth = RuleHealth.UNKNOWN
    error: str | None = None
    last_evaluation: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "health": self.health.value,
            "error": self.error,
            "lastEvaluation": self.last_evaluation,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RuleStatus:
        last = data["lastEvaluation"]
        return cls(
            name=str(data["name"]),
            health=RuleHealth(data["health"]),
            error=None if data["error"] is None else str(data["error"]),
            last_evaluation=None if last is None else float(last),
        )


@dataclass(slots=True)
class Silence:
    """Mutes the alerts its matchers select from ``starts_at`` until ``ends_at``."""

    id: str
    matchers: dict[str, str]
    starts_at: float
    ends_at: float
    comment: str
    created_by: str

    def state(self, now: float) -> SilenceState:
        return SilenceState.ACTIVE if self.starts_at <= now < self.ends_at else SilenceState.EXPIRED

    def mutes(self, labels: Mapping[str, str], now: float) -> bool:
        return self.state(now) is SilenceState.ACTIVE and matches(self.matchers, labels)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "matchers": dict(self.matchers),
            "startsAt": self.starts_at,
            "endsAt": self.ends_at,
            "comment": self.comment,
            "createdBy": self.created_by,
        }

    def view(self, now: float) -> dict[str, Any]:
        return {**self.to_json(), "state": self.state(now).value}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Silence:
        return cls(
            id=str(data["id"]),
            matchers={str(k): str(v) for k, v in data["matchers"].items()},
            starts_at=float(data["startsAt"]),
            ends_at=float(data["endsAt"]),
            comment=str(data["comment"]),
            created_by=str(data["createdBy"]),
        )


@dataclass(frozen=True)
class InhibitRule:
    """Like Alertmanager's inhibit_rules: a firing alert matching ``source`` mutes every
    alert matching ``target`` that has the same values of the ``equal`` labels. An alert
    matching both sides never mutes itself nor another one matching both."""

    source: Mapping[str, str]
    target: Mapping[str, str]
    equal: tuple[str, ...] = ()


DEFAULT_INHIBIT_RULES = (InhibitRule(source={"alertname": SITE_DOWN}, target={}, equal=("site",)),)
"""A site down mutes every other alert of that site (its instances, its databases…)."""


@dataclass(frozen=True, slots=True)
class NotifiedAlert:
    """One alert as a receiver gets it (Alertmanager's webhook alert, plus the value)."""

    fingerprint: str
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    ends_at: float | None
    value: float


@dataclass(frozen=True)
class Notification:
    """What one receiver must be told now about one group."""

    receiver: str
    group_key: str
    group_labels: dict[str, str]
    alerts: tuple[NotifiedAlert, ...]
    at: float

    @property
    def status(self) -> Literal["firing", "resolved"]:
        return "firing" if any(a.status == "firing" for a in self.alerts) else "resolved"

    @property
    def firing(self) -> list[NotifiedAlert]:
        return [a for a in self.alerts if a.status == "firing"]

    @property
    def resolved(self) -> list[NotifiedAlert]:
        return [a for a in self.alerts if a.status == "resolved"]

    @property
    def common_labels(self) -> dict[str, str]:
        return _common([a.labels for a in self.alerts])

    @property
    def common_annotations(self) -> dict[str, str]:
        return _common([a.annotations for a in self.alerts])


def _common(sets: Sequence[Mapping[str, str]]) -> dict[str, str]:
    if not sets:
        return {}
    first = sets[0]
    return {k: v for k, v in sorted(first.items()) if all(s.get(k) == v for s in sets[1:])}


@dataclass(slots=True)
class _Group:
    key: str
    labels: dict[str, str]
    created_at: float
    next_flush: float


@dataclass(slots=True)
class _Delivered:
    """What one receiver was last told about one group (Alertmanager's notification log)."""

    firing: set[str]
    resolved: set[str]
    at: float


# -- the book ---------------------------------------------------------------------------


class AlertBook:
    """Every alert's state, the silences and the notification log. Pure: give it ``now``."""

    def __init__(
        self,
        *,
        inhibit_rules: Sequence[InhibitRule] = DEFAULT_INHIBIT_RULES,
        resolved_retention: float = RESOLVED_RETENTION,
        silence_retention: float = SILENCE_RETENTION,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        for rule in inhibit_rules:
            check_matchers(rule.source)
            check_matchers(rule.target)
        self.inhibit_rules = tuple(inhibit_rules)
        self.resolved_retention = resolved_retention
        self.silence_retention = silence_retention
        self._new_id = new_id
        self._alerts: dict[str, Alert] = {}
        self._rules: dict[str, RuleStatus] = {}
        self._silences: dict[str, Silence] = {}
        self._groups: dict[str, _Group] = {}
        self._delivered: dict[tuple[str, str], _Delivered] = {}
        self._now = 0.0

    # -- evaluation --------------------------------------------------------------------

    def evaluate(self, rules: Sequence[AlertRule], query: Query, now: float) -> list[Change]:
        """Run every rule at ``now`` and move the alerts; ``rules`` is the whole rule set
        (alerts of a rule no longer in it resolve). Returns the transitions."""
        self._now = now
        changes: list[Change] = []
        seen: set[str] = set()
        for rule in rules:
            if rule.name in seen:
                status = self._rules.setdefault(rule.name, RuleStatus(rule.name))
                status.health, status.error = RuleHealth.ERROR, "duplicate rule name; ignored"
                continue
            seen.add(rule.name)
            changes += self._evaluate_rule(rule, query, now)
        for alert in list(self._alerts.values()):
            if alert.rule not in seen:
                changes += self._absent(alert, now)
        for name in [name for name in self._rules if name not in seen]:
            del self._rules[name]
        for alert in list(self._alerts.values()):
            resolved = alert.resolved_at
            if resolved is not None and now - resolved >= self.resolved_retention:
                del self._alerts[alert.fingerprint]
                changes.append(self._change(alert, AlertState.RESOLVED, None, now))
        self._prune_silences(now)
        return changes

    def _evaluate_rule(self, rule: AlertRule, query: Query, now: float) -> list[Change]:
        status = self._rules.setdefault(rule.name, RuleStatus(rule.name))
        try:
            found = self._run(rule, query, now)
        except Exception as exc:  # a failing rule must not stop the others
            status.health = RuleHealth.ERROR
            status.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            status.last_evaluation = now
            return []
        status.health, status.error, status.last_evaluation = RuleHealth.OK, None, now
        changes: list[Change] = []
        for fp, (labels, value) in found.items():
            summary = render_summary(rule.summary, labels, value) if rule.summary else ""
            annotations = {"summary": summary} if summary else {}
            alert = self._alerts.get(fp)
            if alert is None or alert.state is AlertState.RESOLVED:
                before = alert.state if alert else None
                alert = Alert(
                    fp, rule.name, labels, annotations, AlertState.PENDING, value, now, now
                )
                self._alerts[fp] = alert
                if rule.for_ <= 0:
                    alert.state, alert.fired_at = AlertState.FIRING, now
                changes.append(self._change(alert, before, alert.state, now))
                continue
            alert.value, alert.annotations, alert.last_evaluated = value, annotations, now
            if alert.state is AlertState.PENDING and now - alert.active_at >= rule.for_:
                alert.state, alert.fired_at = AlertState.FIRING, now
                changes.append(self._change(alert, AlertState.PENDING, AlertState.FIRING, now))
        for alert in list(self._alerts.values()):
            if alert.rule == rule.name and alert.fingerprint not in found:
                changes += self._absent(alert, now)
        return changes

    @staticmethod
    def _run(rule: AlertRule, query: Query, now: float) -> dict[str, tuple[dict[str, str], float]]:
        result = query(rule.expr, now)
        if not isinstance(result, list):
            raise TypeError(f"the query gave {type(result).__name__}, not a vector")
        found: dict[str, tuple[dict[str, str], float]] = {}
        for point in result:
            labels = alert_labels(rule, point.labels)
            fp = fingerprint(labels)
            if fp in found:
                raise ValueError(
                    f"two series have the labels {label_set_text(labels)} once the rule's "
                    "labels are added"
                )
            found[fp] = (labels, float(point.value))
        return found

    def _absent(self, alert: Alert, now: float) -> list[Change]:
        if alert.state is AlertState.PENDING:
            del self._alerts[alert.fingerprint]
            return [self._change(alert, AlertState.PENDING, None, now)]
        if alert.state is AlertState.FIRING:
            alert.state, alert.resolved_at = AlertState.RESOLVED, now
            return [self._change(alert, AlertState.FIRING, AlertState.RESOLVED, now)]
        return []

    @staticmethod
    def _change(
        alert: Alert, before: AlertState | None, after: AlertState | None, now: float
    ) -> Change:
        return Change(
            alert.fingerprint,
            alert.rule,
            dict(alert.labels),
            before,
            after,
            now,
            alert.value,
            alert.annotations.get("summary", ""),
        )

    # -- silences ------------------------------------------------------------------------

    def add_silence(
        self, matchers: Matchers, ends_at: float, comment: str, created_by: str, now: float
    ) -> Silence:
        """Mute matching alerts from ``now`` until ``ends_at``. Raises ValueError for no
        matchers, bad ones, matchers that would all match an empty label (a silence of
        everything), or an end not after ``now`` or more than :data:`MAX_SILENCE` after it."""
        if not matchers:
            raise ValueError("a silence needs at least one matcher, like alertname=InstanceDown")
        check_matchers(matchers)
        if all(matches({name: value}, {}) for name, value in matchers.items()):
            raise ValueError("at least one matcher must need a non-empty label value")
        if not ends_at > now:
            raise ValueError("a silence must end after it starts")
        if ends_at - now > MAX_SILENCE:
            raise ValueError(
                f"a silence lasts at most {MAX_SILENCE / 86400:g} days (MAX_SILENCE); add it "
                "again when it ends, or change the alert rule"
            )
        silence = Silence(self._new_id(), dict(matchers), now, ends_at, comment, created_by)
        self._silences[silence.id] = silence
        return silence

    def expire_silence(self, silence_id: str, now: float) -> Silence:
        """End a silence now. NotFoundError: no such silence; ConflictError: it has ended."""
        silence = self._silences.get(silence_id)
        if silence is None:
            raise NotFoundError(f"no silence {silence_id}")
        if silence.state(now) is SilenceState.EXPIRED:
            raise ConflictError(f"silence {silence_id} has already expired")
        silence.ends_at = now
        return silence

    def silences(self, now: float) -> list[dict[str, Any]]:
        """Active silences then expired ones (kept 120 h), each with its ``state``."""
        ordered = sorted(
            self._silences.values(),
            key=lambda s: (s.state(now) is SilenceState.EXPIRED, s.ends_at, s.id),
        )
        return [silence.view(now) for silence in ordered]

    def _prune_silences(self, now: float) -> None:
        for silence in list(self._silences.values()):
            if now - silence.ends_at >= self.silence_retention:
                del self._silences[silence.id]

    def silenced_by(self, labels: Mapping[str, str], now: float) -> list[str]:
        return sorted(s.id for s in self._silences.values() if s.mutes(labels, now))

    def inhibited_by(self, alert: Alert) -> list[str]:
        """Fingerprints of the firing alerts that inhibit ``alert``."""
        sources: set[str] = set()
        firing = [a for a in self._alerts.values() if a.state is AlertState.FIRING]
        for rule in self.inhibit_rules:
            if not matches(rule.target, alert.labels):
                continue
            two_sided = matches(rule.source, alert.labels)
            for source in firing:
                if source.fingerprint == alert.fingerprint or not matches(
                    rule.source, source.labels
                ):
                    continue
                if two_sided and matches(rule.target, source.labels):
                    continue
                if all(source.labels.get(n, "") == alert.labels.get(n, "") for n in rule.equal):
                    sources.add(source.fingerprint)
        return sorted(sources)

    def _muted(self, alert: Alert, now: float) -> bool:
        return bool(self.silenced_by(alert.labels, now) or self.inhibited_by(alert))

    # -- notifications -------------------------------------------------------------------

    def due_notifications(
        self, receivers: Sequence[Receiver], settings: Alerts, now: float
    ) -> list[Notification]:
        """What must go out now, one per receiver and group; recorded as told."""
        self._now = now
        members: dict[str, tuple[dict[str, str], list[Alert], list[Alert]]] = {}
        for alert in self._alerts.values():
            if alert.state is AlertState.PENDING or self._muted(alert, now):
                continue
            labels = group_labels(alert.labels, settings.group_by)
            key = group_key(labels)
            entry = members.setdefault(key, (labels, [], []))
            (entry[1] if alert.state is AlertState.FIRING else entry[2]).append(alert)
        for key, (labels, firing, _) in members.items():
            if firing and key not in self._groups:
                self._groups[key] = _Group(key, labels, now, now + settings.group_wait)
        names = {receiver.name for receiver in receivers}
        for pair in [pair for pair in self._delivered if pair[0] not in names]:
            del self._delivered[pair]
        out: list[Notification] = []
        for group in sorted(self._groups.values(), key=lambda g: g.key):
            if now < group.next_flush:
                continue
            _, firing, resolved = members.get(group.key, (group.labels, [], []))
            for receiver in receivers:
                notification = self._flush(group, receiver, firing, resolved, settings, now)
                if notification is not None:
                    out.append(notification)
            group.next_flush = now + settings.group_interval
            if not firing:
                del self._groups[group.key]
                for receiver in receivers:
                    self._delivered.pop((receiver.name, group.key), None)
        return out

    def _flush(
        self,
        group: _Group,
        receiver: Receiver,
        firing: list[Alert],
        resolved: list[Alert],
        settings: Alerts,
        now: float,
    ) -> Notification | None:
        pair = (receiver.name, group.key)
        told = self._delivered.get(pair)
        firing_now = {a.fingerprint for a in firing}
        # Only resolutions of alerts this receiver was told were firing are news to it.
        newly_resolved = [a for a in resolved if told and a.fingerprint in told.firing]
        resolved_now = {a.fingerprint for a in newly_resolved}
        if told is None:
            needed = bool(firing_now)
        elif not firing_now <= told.firing:
            needed = True
        elif not firing_now:
            needed = bool(told.firing)
        elif receiver.send_resolved and not resolved_now <= told.resolved:
            needed = True
        else:
            needed = now - told.at >= settings.repeat_interval
        if not needed:
            return None
        self._delivered[pair] = _Delivered(firing_now, resolved_now, now)
        sent = sorted(firing, key=_order) + (
            sorted(newly_resolved, key=_order) if receiver.send_resolved else []
        )
        if not sent:
            return None
        return Notification(
            receiver=receiver.name,
            group_key=group.key,
            group_labels=dict(group.labels),
            alerts=tuple(_notified(a) for a in sent),
            at=now,
        )

    def mark_undelivered(self, notification: Notification) -> None:
        """Forget that ``notification`` went out (its delivery finally failed), so the
        group's next tick sends its firing alerts again."""
        self._delivered.pop((notification.receiver, notification.group_key), None)

    # -- views ---------------------------------------------------------------------------

    def alerts(self, now: float | None = None) -> list[dict[str, Any]]:
        """Every known alert (pending, firing, resolved), JSON-ready, firing first."""
        at = self._now if now is None else now
        order = {AlertState.FIRING: 0, AlertState.PENDING: 1, AlertState.RESOLVED: 2}
        ordered = sorted(self._alerts.values(), key=lambda a: (order[a.state], _order(a)))
        return [self._view(alert, at) for alert in ordered]

    def firing(self, now: float | None = None) -> list[dict[str, Any]]:
        """The firing alerts, JSON-ready (as of ``now`` or the last evaluation)."""
        return [view for view in self.alerts(now) if view["state"] == "firing"]

    def rules(self) -> list[dict[str, Any]]:
        """Each rule's health: ``ok``, ``error`` (with the error) or ``unknown``."""
        return [status.to_json() for _, status in sorted(self._rules.items())]

    def _view(self, alert: Alert, now: float) -> dict[str, Any]:
        return {
            "fingerprint": alert.fingerprint,
            "name": alert.rule,
            "state": alert.state.value,
            "labels": dict(alert.labels),
            "annotations": dict(alert.annotations),
            "summary": alert.annotations.get("summary", ""),
            "severity": alert.labels.get("severity", ""),
            "value": _finite(alert.value),
            "activeAt": alert.active_at,
            "firedAt": alert.fired_at,
            "resolvedAt": alert.resolved_at,
            "silenced_by": self.silenced_by(alert.labels, now),
            "inhibited_by": self.inhibited_by(alert),
        }

    # -- persistence ---------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Everything needed to carry on after a restart; plain JSON types only."""
        return {
            "version": STATE_VERSION,
            "now": self._now,
            "alerts": [a.to_json() for _, a in sorted(self._alerts.items())],
            "rules": self.rules(),
            "silences": [s.to_json() for _, s in sorted(self._silences.items())],
            "groups": [
                {
                    "key": g.key,
                    "labels": dict(g.labels),
                    "createdAt": g.created_at,
                    "nextFlush": g.next_flush,
                }
                for _, g in sorted(self._groups.items())
            ],
            "delivered": [
                {
                    "receiver": receiver,
                    "group": key,
                    "firing": sorted(d.firing),
                    "resolved": sorted(d.resolved),
                    "at": d.at,
                }
                for (receiver, key), d in sorted(self._delivered.items())
            ],
        }

    @classmethod
    def from_json(
        cls,
        data: Mapping[str, Any],
        *,
        inhibit_rules: Sequence[InhibitRule] = DEFAULT_INHIBIT_RULES,
        resolved_retention: float = RESOLVED_RETENTION,
        silence_retention: float = SILENCE_RETENTION,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> AlertBook:
        """The book :meth:`to_json` saved. Raises ValueError for another state version
        and KeyError/ValueError/TypeError for a damaged one."""
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"alert state version {data.get('version')!r} is not {STATE_VERSION}")
        book = cls(
            inhibit_rules=inhibit_rules,
            resolved_retention=resolved_retention,
            silence_retention=silence_retention,
            new_id=new_id,
        )
        book._now = float(data["now"])
        for item in data["alerts"]:
            alert = Alert.from_json(item)
            book._alerts[alert.fingerprint] = alert
        for item in data["rules"]:
            status = RuleStatus.from_json(item)
            book._rules[status.name] = status
        for item in data["silences"]:
            silence = Silence.from_json(item)
            book._silences[silence.id] = silence
        for item in data["groups"]:
            labels = {str(k): str(v) for k, v in item["labels"].items()}
            group = _Group(
                str(item["key"]), labels, float(item["createdAt"]), float(item["nextFlush"])
            )
            book._groups[group.key] = group
        for item in data["delivered"]:
            book._delivered[(str(item["receiver"]), str(item["group"]))] = _Delivered(
                {str(f) for f in item["firing"]},
                {str(f) for f in item["resolved"]},
                float(item["at"]),
            )
        return book


# -- helpers ----------------------------------------------------------------------------


def alert_labels(rule: AlertRule, series: Mapping[str, str]) -> dict[str, str]:
    """An alert's labels: the series' (without ``__name__``), ``severity`` from the rule,
    the rule's labels (which win), and ``alertname``. Empty values are dropped."""
    labels = {k: v for k, v in series.items() if k != "__name__"}
    labels["severity"] = rule.severity
    labels.update(rule.labels)
    labels["alertname"] = rule.name
    return {k: v for k, v in labels.items() if v != ""}


def group_labels(labels: Mapping[str, str], group_by: Iterable[str]) -> dict[str, str]:
    """The labels that name an alert's group; ``...`` in ``group_by`` means all."""
    names = list(group_by)
    if "..." in names:
        return dict(labels)
    return {name: labels[name] for name in names if labels.get(name, "") != ""}


def group_key(labels: Mapping[str, str]) -> str:
    """Alertmanager's group key of the root route: ``{}:{alertname="X", site="Y"}``."""
    return "{}:" + label_set_text(labels)


def _order(alert: Alert) -> tuple[float, str, str]:
    started = alert.fired_at if alert.fired_at is not None else alert.active_at
    return (started, label_set_text(alert.labels), alert.fingerprint)


def _notified(alert: Alert) -> NotifiedAlert:
    firing = alert.state is AlertState.FIRING
    return NotifiedAlert(
        fingerprint=alert.fingerprint,
        status="firing" if firing else "resolved",
        labels=dict(alert.labels),
        annotations=dict(alert.annotations),
        starts_at=alert.fired_at if alert.fired_at is not None else alert.active_at,
        ends_at=None if firing else alert.resolved_at,
        value=alert.value,
    )
