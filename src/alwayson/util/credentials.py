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

__all__ = [
    "AGENT_TOKEN_FILE",
    "GATEWAY_TOKEN_FILE",
    "ensure_secret",
    "read_secret",
    "write_private",
]


def write_private(
    path: Path,
    data: str | bytes,
    *,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
) -> None:
    """Replace ``path`` with ``data`` atomically, with ``mode`` (0600 unless told) and, as
    root, ``owner`` (uid, gid): every file of the platform that holds a secret is written
    here. The scratch file is made private before a byte is written, and narrowed again in
    case one a crash left behind had a wider mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)
    if owner is not None:
        os.chown(scratch, *owner)
    os.chmod(scratch, mode)
    os.replace(scratch, path)


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
