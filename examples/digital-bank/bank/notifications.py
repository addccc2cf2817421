"""notifications: renders templated messages and "sends" them by email, SMS or push.

Nothing leaves the machine: a sent message goes to an in-memory outbox that can be read
back, which is what tests and demos need.
"""

from __future__ import annotations

import re
from typing import Any

from bank.server import run
from bank.store import Store, new_id, now_iso
from bank.validate import EMAIL, Fields, query_int
from bank.web import App, HTTPError, Request, Response, json_response

app = App("notifications", "Templated email, SMS and push messages, kept in an outbox.")
sent = app.metrics.counter("bank_notifications_total", "Messages sent by channel and template.")
PHONE = re.compile(r"^\+[1-9][0-9]{7,14}$")
DEVICE = re.compile(r"^[A-Za-z0-9_-]{16,200}$")
TEMPLATES: dict[str, tuple[str, str]] = {
    "welcome": (
        "Welcome to Digital Bank",
        "Selamat datang, {name}! Your account {account_number} is open.",
    ),
    "transfer_sent": ("Transfer sent", "You sent {amount} to {to_account}. Ref {transfer_id}."),
    "payment_receipt": ("Payment receipt", "Paid {amount} to {biller}. Ref {payment_id}."),
    "otp": ("Your one-time code", "Your code is {code}. It expires in 5 minutes."),
    "card_blocked": ("Card blocked", "Your card {pan_masked} is blocked ({reason})."),
}
FIELDS = re.compile(r"{(\w+)}")
outbox: Store[dict[str, Any]] = Store()


def _check_recipient(fields: Fields, channel: str, to: str) -> None:
    pattern = {"email": EMAIL, "sms": PHONE, "push": DEVICE}.get(channel)
    if pattern is not None and to and not pattern.match(to):
        what = {
            "email": "an email address",
            "sms": "an E.164 phone number like +6281234567890",
            "push": "a device token",
        }[channel]
        fields.fail("to", f"must be {what} for channel {channel}")


@app.post("/notifications", idempotent=True)
async def send(request: Request) -> Response:
    fields = Fields(request.json_object())
    channel = fields.choice("channel", {"email", "sms", "push"})
    to = fields.text("to", max_len=254)
    template = fields.choice("template", TEMPLATES)
    data = fields.mapping("data", default={})
    _check_recipient(fields, channel, to)
    if template:
        missing = [k for k in FIELDS.findall(TEMPLATES[template][1]) if k not in data]
        if missing:
            fields.fail("data", f"template {template} needs: {', '.join(missing)}")
    fields.done()
    subject, body = TEMPLATES[template]
    text = FIELDS.sub(lambda m: str(data[m.group(1)])[:200], body)
    message = {
        "notification_id": new_id("ntf"),
        "channel": channel,
        "to": to.lower() if channel == "email" else to,
        "template": template,
        "subject": subject,
        "body": text,
        "status": "sent",
        "sent_at": now_iso(),
    }
    outbox.put(message["notification_id"], message)
    sent.inc(channel=channel, template=template)
    return json_response(message, 202)


@app.get("/notifications/{notification_id}")
async def get_notification(request: Request) -> Response:
    message = outbox.get(request.params["notification_id"])
    if message is None:
        raise HTTPError(404, "no such notification", id=request.params["notification_id"])
    return json_response(message)


@app.get("/notifications")
async def list_notifications(request: Request) -> Response:
    to = request.query.get("to", "").strip()
    if not to:
        raise HTTPError(400, "invalid request", fields={"to": "is required"})
    limit = query_int(request, "limit", 20, 1, 200)
    wanted = to.lower() if "@" in to else to
    found = [m for m in outbox.latest(len(outbox)) if m["to"] == wanted][:limit]
    return json_response({"to": to, "notifications": found})


if __name__ == "__main__":
    run(app)
