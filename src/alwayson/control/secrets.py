"""The platform's copy of the spec's ``secrets:``: resolved at apply, kept 0600.

``resolve`` reads every secret's value from its source (a file beside the spec, the
operator's environment as the CLI sent it, or the value the platform generated before) and
checks them all before anything is written, so a missing file or variable refuses the
whole apply with the field to fix. ``save`` keeps them under ``<state>/secrets/`` (0700
folder, 0600 files, written atomically); instances get copies the runtime makes for their
identity. ``changes`` tells ``plan`` which secrets change, by digest, never by value.
"""

from __future__ import annotations

import hashlib
import secrets as random
from collections.abc import Mapping
from pathlib import Path

from alwayson.spec.models import PlatformSpec
from alwayson.spec.planning import Change, ChangeKind
from alwayson.util.credentials import write_private
from alwayson.util.errors import PermanentError

SECRETS_DIR = "secrets"
MAX_SECRET_BYTES = 64 * 1024

__all__ = ["changes", "digest_of", "load", "resolve", "save", "secret_file"]


def secret_file(state_dir: Path, name: str) -> Path:
    return state_dir / SECRETS_DIR / name


def digest_of(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def load(state_dir: Path, spec: PlatformSpec) -> dict[str, str]:
    """The kept values of the spec's secrets (those kept so far)."""
    out = {}
    for secret in spec.secrets:
        try:
            out[secret.name] = secret_file(state_dir, secret.name).read_text()
        except FileNotFoundError:
            continue
    return out


def resolve(
    spec: PlatformSpec, folder: Path, given: Mapping[str, str], state_dir: Path
) -> dict[str, str]:
    """Every secret's value now; PermanentError naming each one that cannot be had."""
    kept = load(state_dir, spec)
    values: dict[str, str] = {}
    problems: list[str] = []
    for index, secret in enumerate(spec.secrets):
        where = f"secrets[{index}:{secret.name}]"
        if secret.file is not None:
            path = (folder / secret.file).resolve()
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                why = getattr(exc, "strerror", None) or exc
                problems.append(f"{where}.file: cannot read {path}: {why}")
                continue
            value = text[:-1] if text.endswith("\n") else text
        elif secret.env is not None:
            if secret.name not in given:
                problems.append(
                    f"{where}.env: ${secret.env} is not set in the environment of the command "
                    "that sent this spec; export it and run the command again"
                )
                continue
            value = given[secret.name]
        else:
            value = kept.get(secret.name) or random.token_urlsafe(secret.generate or 32)
        if len(value.encode()) > MAX_SECRET_BYTES:
            problems.append(f"{where}: the value is over {MAX_SECRET_BYTES} bytes")
            continue
        if not value:
            problems.append(f"{where}: the value is empty")
            continue
        values[secret.name] = value
    if problems:
        raise PermanentError("; ".join(problems) + ". Nothing was changed.")
    return values


def changes(spec: PlatformSpec, values: Mapping[str, str], state_dir: Path) -> list[Change]:
    """What applying ``values`` changes, shown as ``(secret changed)`` and never a value."""
    kept = load(state_dir, spec)
    out = []
    for secret in spec.secrets:
        before = kept.get(secret.name)
        now = values.get(secret.name)
        if before is None and now is not None:
            out.append(Change(ChangeKind.ADD, f"secret {secret.name}", f"from {secret.source}"))
        elif before is not None and now is not None and digest_of(before) != digest_of(now):
            detail = "(secret changed): the instances that use it are replaced"
            out.append(Change(ChangeKind.CHANGE, f"secret {secret.name}", detail))
    return out


def save(state_dir: Path, values: Mapping[str, str]) -> None:
    folder = state_dir / SECRETS_DIR
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    for name, value in values.items():
        target = secret_file(state_dir, name)
        if target.exists() and target.read_text() == value:
            continue
        write_private(target, value)
