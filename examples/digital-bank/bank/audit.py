"""audit: an append-only, hash-chained audit trail (each event seals the one before it).

``GET /audit/verify`` recomputes the chain, so any edit to a stored event is detected.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from bank.server import run
from bank.store import Store, new_id, now_iso
from bank.validate import Fields, query_int
from bank.web import App, HTTPError, Request, Response, json_response

app = App("audit", "Append-only, hash-chained audit trail of who did what to which subject.")
GENESIS = "0" * 64
events: Store[dict[str, Any]] = Store()
head: dict[str, Any] = {"hash": GENESIS, "seq": 0}


def seal(event: dict[str, Any]) -> str:
    body = {k: v for k, v in event.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@app.post("/audit/events", idempotent=True)
async def record(request: Request) -> Response:
    fields = Fields(request.json_object())
    actor = fields.text("actor", max_len=100)
    action = fields.text("action", max_len=100)
    subject = fields.text("subject", max_len=100)
    details = fields.mapping("details", default={})
    if action and not all(part.isidentifier() for part in action.split(".")):
        fields.fail("action", "must look like noun.verb, e.g. customer.registered")
    if len(json.dumps(details)) > 4096:
        fields.fail("details", "must be at most 4 KiB of JSON")
    fields.done()
    event = {
        "event_id": new_id("aud"),
        "seq": int(head["seq"]) + 1,
        "at": now_iso(),
        "actor": actor,
        "action": action,
        "subject": subject,
        "details": details,
        "request_id": request.request_id,
        "prev_hash": head["hash"],
    }
    event["hash"] = seal(event)
    events.put(event["event_id"], event)
    head.update(hash=event["hash"], seq=event["seq"])
    return json_response(event, 201)


@app.get("/audit/events")
async def search(request: Request) -> Response:
    subject = request.query.get("subject")
    action = request.query.get("action")
    if not subject and not action:
        raise HTTPError(400, "invalid request", fields={"subject": "give subject or action"})
    limit = query_int(request, "limit", 50, 1, 1000)
    found = [
        e
        for e in events.latest(len(events))
        if (not subject or e["subject"] == subject) and (not action or e["action"] == action)
    ][:limit]
    return json_response({"events": found, "count": len(found)})


@app.get("/audit/verify")
async def verify(request: Request) -> Response:
    previous: str | None = None
    checked = 0
    for event in events.values():
        if previous is not None and event["prev_hash"] != previous:
            return json_response(
                {"valid": False, "broken_at": event["event_id"], "checked": checked}
            )
        if seal(event) != event["hash"]:
            return json_response(
                {"valid": False, "tampered": event["event_id"], "checked": checked}
            )
        previous = event["hash"]
        checked += 1
    return json_response({"valid": True, "checked": checked, "head": head})


if __name__ == "__main__":
    run(app)
