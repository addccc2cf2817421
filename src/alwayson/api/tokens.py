"""Who may call the API, and as what.

Two kinds of bearer token, both kept in the state directory with mode 0600:

- the **owner's** token (``token``), generated once by the first controller: role
  ``admin``, name ``owner``. The CLI on the platform's machine uses it.
- **named tokens** made with ``alwayson token create NAME --role ROLE``: only their
  SHA-256 digests are kept (``tokens.json``), so the file never holds a usable secret; the
  token itself is printed once. ``alwayson token revoke NAME`` removes one; controllers
  re-read the file when it changes, so a revoked token stops working at its next request.

Roles are ordered: ``read`` (every GET, and ``plan``), ``operate`` (also what changes what
runs: scale, deploy, releases, drills, silences, database operations), ``admin`` (also
``apply`` and stopping the platform). :func:`needed_role` is the one table that says which
request needs which. The audit log records the authenticated token's name, never a header
a client chose.

Gateways and database agents do not use these: each has its own secret
(:data:`GATEWAY_TOKEN_FILE`, :data:`AGENT_TOKEN_FILE`), so a leaked API token cannot push
routes to a gateway, and a gateway's or agent's secret cannot call the API.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alwayson.util.credentials import (
    AGENT_TOKEN_FILE,
    GATEWAY_TOKEN_FILE,
    ensure_secret,
    write_private,
)

TOKEN_FILE = "token"
TOKENS_FILE = "tokens.json"
OWNER = "owner"
ROLES = ("read", "operate", "admin")
NAME = re.compile(r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$|^[a-z]$")
READ_ONLY_POSTS = frozenset({"/api/v1/plan"})
ADMIN_ONLY = frozenset({"/api/v1/apply", "/api/v1/down"})
ADMIN_SUFFIXES = ("/credentials",)  # a database's passwords

__all__ = [
    "AGENT_TOKEN_FILE",
    "GATEWAY_TOKEN_FILE",
    "OWNER",
    "ROLES",
    "TOKENS_FILE",
    "TOKEN_FILE",
    "Principal",
    "TokenBook",
    "create_token",
    "ensure_secret",
    "ensure_token",
    "list_tokens",
    "needed_role",
    "read_token",
    "revoke_token",
]


def ensure_token(state_dir: Path) -> str:
    return ensure_secret(state_dir / TOKEN_FILE)


def read_token(state_dir: Path) -> str | None:
    path = state_dir / TOKEN_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class Principal:
    """Who made a request: a token's name and its role."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def needed_role(method: str, path: str) -> str:
    """The least role a request needs: the API's whole access policy."""
    if path in ADMIN_ONLY or path.endswith(ADMIN_SUFFIXES):
        return "admin"
    if method in ("GET", "HEAD") or path in READ_ONLY_POSTS:
        return "read"
    return "operate"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenBook:
    """The tokens a controller accepts, re-read when ``tokens.json`` changes."""

    def __init__(self, state_dir: Path, owner_token: str) -> None:
        self.path = state_dir / TOKENS_FILE
        self.owner = _digest(owner_token) if owner_token else ""
        self._seen: tuple[int, int] | None = None
        self._entries: list[dict[str, Any]] = []

    def authenticate(self, presented: str) -> Principal | None:
        """The token's principal, or None. Every entry is compared, each in constant
        time, so the answer's timing does not tell how close a guess was or which matched."""
        if not presented:
            return None  # never the digest of an empty token, whatever a file holds
        digest = _digest(presented)
        found: Principal | None = None
        if self.owner and hmac.compare_digest(digest, self.owner):
            found = Principal(OWNER, "admin")
        for entry in self._current():
            if hmac.compare_digest(digest, str(entry.get("sha256", ""))) and found is None:
                found = Principal(str(entry["name"]), str(entry["role"]))
        return found

    def _current(self) -> list[dict[str, Any]]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._seen, self._entries = None, []
            return self._entries
        mark = (stat.st_mtime_ns, stat.st_size)
        if mark != self._seen:
            self._entries = _read_entries(self.path)
            self._seen = mark
        return self._entries


def _read_entries(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return []
    entries = data.get("tokens", []) if isinstance(data, dict) else []
    return [e for e in entries if isinstance(e, dict) and e.get("role") in ROLES]


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[list[dict[str, Any]]]:
    """The named tokens, to change in place; written back atomically (0600) on exit."""
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = os.open(state_dir / f"{TOKENS_FILE}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = state_dir / TOKENS_FILE
        entries = _read_entries(path)
        before = json.dumps(entries)
        yield entries
        if json.dumps(entries) != before:
            write_private(path, json.dumps({"tokens": entries}, indent=2) + "\n")
    finally:
        os.close(lock)


def create_token(state_dir: Path, name: str, role: str) -> str:
    """Make a named token and return it: the only time it is shown."""
    if not NAME.match(name) or name == OWNER:
        raise ValueError(
            f"token name {name!r}: lowercase letters, digits and '-', at most 40, not "
            f"{OWNER!r} (e.g. ci-deployer)"
        )
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
    token = secrets.token_urlsafe(32)
    with _locked(state_dir) as entries:
        if any(e.get("name") == name for e in entries):
            raise ValueError(f"a token named {name!r} exists; revoke it first")
        entries.append(
            {"name": name, "role": role, "sha256": _digest(token), "created": time.time()}
        )
    return token


def list_tokens(state_dir: Path) -> list[dict[str, Any]]:
    """Name, role and creation time of every token (never a digest)."""
    owner = {"name": OWNER, "role": "admin", "created": None, "file": str(state_dir / TOKEN_FILE)}
    named = [
        {"name": e["name"], "role": e["role"], "created": e.get("created")}
        for e in _read_entries(state_dir / TOKENS_FILE)
    ]
    return [owner, *named]


def revoke_token(state_dir: Path, name: str) -> bool:
    """Remove a named token; False when there is none by that name."""
    with _locked(state_dir) as entries:
        kept = [e for e in entries if e.get("name") != name]
        gone = len(kept) != len(entries)
        entries[:] = kept
    return gone
