"""Turning a service's ``run`` line into an argv that exists on this machine."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

PYTHON_NAMES = {"python", "python3", f"python3.{sys.version_info.minor}"}


class CommandNotFound(ValueError):
    pass


def resolve_command(run: str, folder: Path) -> list[str]:
    """Return the argv for ``run``, started in ``folder``.

    A leading ``python`` is the interpreter alwayson runs in, so a sample copied anywhere
    runs with the same environment. A path with a slash is relative to ``folder``.
    Anything else is looked up on PATH, with this Python's ``bin`` folder first.
    """
    try:
        argv = shlex.split(run)
    except ValueError as exc:
        raise CommandNotFound(f"cannot split {run!r} into words: {exc}") from exc
    if not argv:
        raise CommandNotFound("the command is empty")
    program = argv[0]
    if program in PYTHON_NAMES:
        return [sys.executable, *argv[1:]]
    if "/" in program:
        candidate = (folder / program).resolve()
        if not candidate.is_file():
            raise CommandNotFound(f"{program!r} does not exist (looked for {candidate})")
        if not os.access(candidate, os.X_OK):
            raise CommandNotFound(f"{candidate} is not executable (chmod +x it)")
        return [str(candidate), *argv[1:]]
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(program, path=search)
    if found is None:
        raise CommandNotFound(f"{program!r} was not found on PATH")
    return [found, *argv[1:]]
