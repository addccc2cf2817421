"""auth: customer passwords (PBKDF2), signed access tokens and token introspection.

Tokens are ``payload.signature`` (base64url JSON, HMAC-SHA256 with ``AUTH_SIGNING_KEY``), so
any instance in any site can verify a token another one issued. Five wrong passwords lock
the customer out for 15 minutes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
from typing import Any

from bank.server import run
from bank.validate import Fields
from bank.web import App, HTTPError, Request, Response, json_response

app = App("auth", "Customer credentials, signed access tokens and token introspection.")
attempts = app.metrics.counter("bank_auth_logins_total", "Login attempts by outcome.")


def _signing_key() -> bytes:
    """The platform's secret file when there is one (alwayson's ``secrets:``, the same in
    every instance, readable only by this service), else the environment (for a run by
    hand)."""
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if folder and os.path.isfile(os.path.join(folder, "auth-signing-key")):
        with open(os.path.join(folder, "auth-signing-key"), "rb") as kept:
            return kept.read().strip()
    return os.environ.get("AUTH_SIGNING_KEY", "dev-only-signing-key").encode()


KEY = _signing_key()
ITERATIONS = int(os.environ.get("AUTH_PBKDF2_ITERATIONS", "20000"))
TOKEN_TTL = 900
MAX_FAILURES = 5
LOCKOUT = 900
credentials: dict[str, dict[str, Any]] = {}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def _hash(password: str, salt: bytes) -> bytes:
    """PBKDF2 in a worker thread (it releases the GIL), so the event loop keeps serving."""
    return await asyncio.to_thread(
        hashlib.pbkdf2_hmac, "sha256", password.encode(), salt, ITERATIONS
    )


def sign(claims: dict[str, Any]) -> str:
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = _b64(hmac.new(KEY, payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{signature}"


def verify(token: str) -> dict[str, Any] | None:
    payload, _, signature = token.partition(".")
    expected = _b64(hmac.new(KEY, payload.encode(), hashlib.sha256).digest())
    if not signature or not hmac.compare_digest(signature, expected):
        return None
    try:
        claims: dict[str, Any] = json.loads(_unb64(payload))
    except ValueError:
        return None
    return claims if claims.get("exp", 0) > time.time() else None


def _password_problem(password: str) -> str | None:
    if len(password) < 10:
        return "must be at least 10 characters"
    if not any(c.isdigit() for c in password) or not any(c.isalpha() for c in password):
        return "must contain letters and digits"
    return None


@app.post("/auth/credentials")
async def set_credentials(request: Request) -> Response:
    fields = Fields(request.json_object())
    customer_id = fields.text("customer_id", max_len=64)
    password = fields.text("password", max_len=128)
    problem = _password_problem(password) if password else None
    if problem:
        fields.fail("password", problem)
    fields.done()
    if customer_id in credentials:
        raise HTTPError(409, "credentials already set for this customer", customer_id=customer_id)
    salt = os.urandom(16)
    digest = await _hash(password, salt)
    if customer_id in credentials:  # set concurrently while we were hashing
        raise HTTPError(409, "credentials already set for this customer", customer_id=customer_id)
    credentials[customer_id] = {"salt": salt, "hash": digest, "failures": 0, "locked_until": 0.0}
    return json_response({"customer_id": customer_id, "status": "set"}, 201)


@app.post("/auth/tokens")
async def login(request: Request) -> Response:
    fields = Fields(request.json_object())
    customer_id = fields.text("customer_id", max_len=64)
    password = fields.text("password", max_len=128)
    fields.done()
    record = credentials.get(customer_id)
    now = time.time()
    if record is not None and record["locked_until"] > now:
        attempts.inc(outcome="locked")
        raise HTTPError(
            423,
            "too many failed logins; try again later",
            retry_after_s=int(record["locked_until"] - now),
        )
    salt = record["salt"] if record is not None else b"no-such-customer"
    digest = await _hash(password, salt)  # also for unknown customers: no timing oracle
    if record is None or not hmac.compare_digest(digest, record["hash"]):
        if record is not None:
            record["failures"] += 1
            if record["failures"] >= MAX_FAILURES:
                record["locked_until"] = now + LOCKOUT
                record["failures"] = 0
        attempts.inc(outcome="failed")
        raise HTTPError(401, "wrong customer_id or password")
    record["failures"] = 0
    attempts.inc(outcome="ok")
    claims = {
        "sub": customer_id,
        "iat": int(now),
        "exp": int(now) + TOKEN_TTL,
        "iss": app.instance,
        "scope": "banking",
    }
    return json_response(
        {"access_token": sign(claims), "token_type": "Bearer", "expires_in": TOKEN_TTL}, 201
    )


@app.post("/auth/introspect")
async def introspect(request: Request) -> Response:
    fields = Fields(request.json_object())
    token = fields.text("token", max_len=4096)
    fields.done()
    claims = verify(token)
    if claims is None:
        return json_response({"active": False})
    return json_response({"active": True, **claims})


if __name__ == "__main__":
    run(app)
