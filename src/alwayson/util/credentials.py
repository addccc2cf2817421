"""Secrets the platform makes for itself: random, in files of mode 0600, never in argv.

Each kind of caller has its own, so one leaking does not open the others: the API's tokens
(``alwayson.api.tokens``), the gateways' admin secret (route pushes) and the database
agents' secret (their fail-safe questions to each other).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

GATEWAY_TOKEN_FILE = "run/gateway.token"
"""Relative to the state directory: what a controller shows a gateway's admin API."""
AGENT_TOKEN_FILE = "run/agents.token"
"""Relative to the state directory: what database agents show each other."""

__all__ = ["AGENT_TOKEN_FILE", "GATEWAY_TOKEN_FILE", "ensure_secret", "read_secret"]


def ensure_secret(path: Path) -> str:
    """The secret in ``path``, made (random, 0600, never replaced) when it is missing."""
    found = read_secret(path)
    if found is not None:
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another controller made it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


def read_secret(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
