"""Which user runs an instance, and whether that user can run its command at all."""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from alwayson.util.credentials import write_private
from alwayson.util.errors import PermanentError


@dataclass(frozen=True)
class Identity:
    uid: int | None = None
    gid: int | None = None
    extra_groups: list[int] | None = None


DYNAMIC = "#"
"""``#61185``: a numeric identity (uid and gid alike) with no passwd entry, as ``sudo -u``
writes one; the controller gives each service one (``runtime.uid_base``)."""


PRIVATE_DIR_ENV = "RUNTIME_DIRECTORY"
"""Set (as systemd does) for an instance with an identity of its own: a folder only that
identity may enter, made by the runtime before the process starts; also its ``HOME``."""


CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
"""Set (as systemd does) for an instance that uses secrets: a folder holding one file per
secret, readable only by the instance's identity."""


def credentials_dir(state_dir: Path, service: str) -> Path:
    return state_dir / "run" / "credentials" / service


def deliver_secrets(folder: Path, files: Mapping[str, str], ident: Identity) -> None:
    """Copy each secret into ``folder`` as ``<name>``: the folder 0500 and the files 0400,
    owned by ``ident``, written anew before every start (a rotated secret arrives)."""
    folder.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    folder.mkdir(exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    owner = (ident.uid, ident.gid) if ident.uid is not None and ident.gid is not None else None
    for name, source in files.items():
        write_private(folder / name, Path(source).read_bytes(), mode=0o400, owner=owner)
    for stale in folder.iterdir():
        if stale.name not in files and not stale.name.startswith("."):
            stale.unlink()
    if ident.uid is not None and ident.gid is not None:
        os.chown(folder, ident.uid, ident.gid)
    folder.chmod(0o500)


def dynamic_user(uid: int) -> str:
    return f"{DYNAMIC}{uid}"


def private_dir(state_dir: Path, service: str) -> Path:
    return state_dir / "run" / "private" / service


def ensure_private_dir(path: Path, ident: Identity) -> None:
    """``path`` made (parents 0755), owned by ``ident``, mode 0700."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    path.mkdir(exist_ok=True, mode=0o700)
    if ident.uid is not None and ident.gid is not None:
        os.chown(path, ident.uid, ident.gid)
    path.chmod(0o700)


def identity(user: str | None) -> Identity:
    if user is None or os.geteuid() != 0:
        return Identity()
    if user.startswith(DYNAMIC) and user[1:].isdigit():
        uid = int(user[1:])
        return Identity(uid, uid, [])
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PermanentError(
            f"runtime.user {user!r} does not exist on this machine; create it or set "
            "runtime.user in the spec"
        ) from None
    return Identity(entry.pw_uid, entry.pw_gid, [])


def check_user_can_run(user: str | None, argv0: str, cwd: str) -> str | None:
    """Return why ``user`` cannot run ``argv0`` in ``cwd``, or None when it can."""
    if user is None or os.geteuid() != 0:
        return None
    ident = identity(user)
    try:
        result = subprocess.run(
            ["/bin/sh", "-c", 'test -x "$0" && cd "$1"', argv0, cwd],
            timeout=10,
            capture_output=True,
            user=ident.uid,
            group=ident.gid,
            extra_groups=ident.extra_groups,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if result.returncode != 0:
        return (
            f"user {user!r} cannot execute {argv0} or enter {cwd} (a parent folder is not "
            "readable by others, e.g. /root is 0700). Create the environment with a Python "
            "every user can run (the quick start uses /usr/bin/python3), or set "
            "runtime.user in the spec"
        )
    return None
