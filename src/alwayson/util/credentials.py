"""Secrets the platform makes for itself: random, in files of mode 0600, never in argv.

Each kind of caller has its own, so one leaking does not open the others: the API's tokens
(``alwayson.api.tokens``), the gateways' admin secret (route pushes) and the database
agents' secret (their fail-safe questions to each other).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from alwayson.util.errors import PermanentError

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
    """The secret in ``path``, made (random, 0600, never replaced) when it is missing.

    Several controllers start at once and each may be the first: the secret is written
    whole to a scratch file of this process's and then hard-linked into place, which
    fails if another got there first, so no process ever reads a half-written (empty)
    secret and every one ends with the same."""
    found = read_secret(path)
    if found is not None:
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32) + "\n")
    try:
        os.link(scratch, path)
    except FileExistsError:
        pass  # another process made it first: theirs is the secret
    finally:
        scratch.unlink(missing_ok=True)
    made = read_secret(path)
    if made is None:  # only a writer other than this one leaves it empty
        raise PermanentError(f"{path} is empty: delete it and start again to make a new one")
    return made


def read_secret(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
