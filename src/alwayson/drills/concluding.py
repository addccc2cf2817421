"""What a drill found once its load stopped: detection, the write check, the objectives.

- **Detection**: the first sign, at or after the fault, that the platform noticed: an
  alert firing or the target crashing or turning unhealthy in the controller's events, a
  database agent's failover record, or (when the controller itself was the target) its
  API no longer answering. The databases' records of the fault are the RPO's evidence.
- **Write check**: the bank's registrations the load sent and the bank acknowledged,
  against what PostgreSQL stored (``checks``), when the journey writes.
- **Objectives**: the figures judged against what the spec and the scenario promise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from alwayson.drills import checks, measuring
from alwayson.drills.loading import BANK_REGISTRATION, Writes
from alwayson.drills.model import DrillContext, Objective, Status, judge
from alwayson.drills.remote import ControllerApi
from alwayson.drills.scenarios import Scenario
from alwayson.util.errors import AlwaysonError

Marker = Callable[[str, str, float], None]  # put (kind, label, at) on the timeline


async def detection(
    api: ControllerApi,
    ctx: DrillContext,
    scenario: Scenario,
    target: str,
    fault_at: float,
    controller_down: list[float],
    mark: Marker,
) -> tuple[float | None, list[dict[str, Any]]]:
    """The first sign the platform noticed, and the databases' records of the fault.
    ``target`` is what the fault hit; ``controller_down``, when the controller's API was
    seen not answering during the hold."""
    moments: list[float | None] = []
    records: list[dict[str, Any]] = []
    with contextlib.suppress(AlwaysonError):
        seen = []
        for event in await api.events(limit=1000):
            at = float(event.get("at") or 0)
            kind, subject = str(event.get("kind")), str(event.get("subject"))
            relevant = kind.startswith("alert-firing") or (
                kind in ("crashed", "unhealthy", "start-timeout")
                and (subject == target or target in subject)
            )
            if at >= fault_at and relevant:
                seen.append((at, f"{kind} {subject}"))
        if seen:
            at, what = min(seen)
            moments.append(at)
            mark("detected", what, at)
    for db in ctx.databases:
        with contextlib.suppress(AlwaysonError):
            for record in await api.records(db.name):
                detected = record.get("detected_at")
                if detected is not None and float(detected) >= fault_at - 1.0:
                    records.append(record)
    for record in records:
        if record.get("kind") == "failover":
            moments.append(float(record["detected_at"]))
            mark(
                "detected",
                f"{record['database']}: {record['to']} saw the primary gone",
                float(record["detected_at"]),
            )
            if record.get("promoted_at"):
                mark(
                    "promoted",
                    f"{record['database']}: {record['to']} promoted",
                    float(record["promoted_at"]),
                )
    if scenario.target == "controller" and controller_down:
        moments.append(controller_down[0])
        mark("detected", "the controller's API stopped answering", controller_down[0])
    return measuring.first_after(moments, fault_at), records


async def write_check(ctx: DrillContext, writes: Writes) -> checks.WriteCheck:
    """The set check and the ledger, from the first site's endpoint that answers."""
    if ctx.journey != BANK_REGISTRATION or not ctx.databases:
        return checks.WriteCheck(note="no write check: the journey writes nothing to check")
    db = ctx.databases[0]
    errors = []
    for site, url in db.endpoints.items():
        try:
            return await checks.check_registrations(url, writes.acknowledged, writes.sent)
        except Exception as exc:
            errors.append(f"{site}: {exc}")
    return checks.WriteCheck(note="write check failed: " + "; ".join(errors))


def primaries_summary(scenario: Scenario, samples: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How many sites accepted writes at once, over the hold's samples (when watched)."""
    if not scenario.primaries:
        return None
    most = max((len(s["writable"]) for s in samples), default=None)
    two = [s for s in samples if len(s["writable"]) > 1]
    return {"samples": len(samples), "max_writable": most, "two_writers": two[:20]}


def objectives(
    ctx: DrillContext,
    scenario: Scenario,
    status: Status,
    rto: float | None,
    failed: int,
    writes: checks.WriteCheck,
    primaries: dict[str, Any] | None,
    healed: bool,
) -> list[Objective]:
    """The figures judged: RTO, failed requests (when the scenario bounds them), writes
    lost and the ledger (when checked), writable primaries (when watched) and whether
    the platform was whole again after the undo (unless the drill was aborted)."""
    out = [
        judge(
            "rto",
            rto,
            ctx.rto_objective,
            " s",
            "from the fault until requests succeed again and keep succeeding",
        )
    ]
    if scenario.max_failed is not None:
        out.append(
            judge(
                "failed requests",
                float(failed),
                float(scenario.max_failed),
                "",
                "requests that failed after the fault",
            )
        )
    if writes.checked:
        sync = all(db.rpo == 0 for db in ctx.databases)
        if sync:
            out.append(
                judge(
                    "acknowledged writes lost",
                    float(len(writes.lost)),
                    0.0,
                    "",
                    "RPO 0: every acknowledged registration stored",
                )
            )
        out.append(
            judge(
                "ledger problems",
                float(len(writes.ledger_problems)),
                0.0,
                "",
                "balances sum to 0, entries balance, balances equal postings",
            )
        )
    if scenario.primaries:
        most = (primaries or {}).get("max_writable")
        out.append(
            judge(
                "writable primaries at once",
                None if most is None else float(most),
                1.0,
                "",
                "never two writers",
            )
        )
    if status is not Status.ABORTED:
        out.append(
            judge(
                "platform whole after undo",
                0.0 if healed else 1.0,
                0.0,
                "",
                "every instance ready, replication streaming",
            )
        )
    return out
