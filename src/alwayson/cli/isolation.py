"""What `up` says when services will not each run as an identity of their own."""

from __future__ import annotations

import os


def me() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def isolation_lost(user: str | None, euid: int, me: str) -> str | None:
    """What `up` says when services will not each run as an identity of their own."""
    if euid != 0:
        return (
            f"alwayson runs as {me}, not root, so every service, PostgreSQL and the platform "
            f"itself run as {me}: a service can read another's environment and files, signal "
            "its processes and reach the database's files. Run as root for an identity per "
            "service."
        )
    if user:
        return (
            f"runtime.user is {user}: every service runs as it, so a service can read "
            "another's environment and signal its processes. Leave runtime.user unset for "
            "an identity per service."
        )
    return None
