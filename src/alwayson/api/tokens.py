"""The API's bearer token: generated once into the state directory, mode 0600."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TOKEN_FILE = "token"


def ensure_token(state_dir: Path) -> str:
    path = state_dir / TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


def read_token(state_dir: Path) -> str | None:
    path = state_dir / TOKEN_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None
