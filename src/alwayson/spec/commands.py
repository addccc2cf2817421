"""Turning a service's ``run`` line into an argv that exists on this machine.

The line is split into words the way a shell would (``shlex``), then ``$NAME`` and
``${NAME}`` in every word are replaced by the instance's environment (``$$`` is a literal
``$``), so an off-the-shelf server is told its address without a wrapper script::

    run: uvicorn --host $HOST --port $PORT app:app

Nothing else of a shell applies: no globbing, no ``$(...)``, no defaults like ``${X:-y}``.
Which names a service may use is known when the spec loads (``service_variables``), so a
typo is a spec error, not a crash loop.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alwayson.spec.models import PlatformSpec, Service

PYTHON_NAMES = {"python", "python3", f"python3.{sys.version_info.minor}"}

PLATFORM_VARIABLES = (
    "HOST",
    "PORT",
    "ALWAYSON_SITE",
    "ALWAYSON_SERVICE",
    "ALWAYSON_INSTANCE",
    "ALWAYSON_VERSION",
    "ALWAYSON_GATEWAY",
    "ALWAYSON_PLATFORM",
)
"""What ``control.desired.workload_instance`` sets for every instance (a unit test holds
the two lists together)."""

DATABASE_VARIABLE = "DATABASE_URL"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPE_HINT = "write $$ for a literal $"


class CommandNotFound(ValueError):
    """A ``run`` line that cannot be started: not split into words, empty, a program that
    is not there, or a ``$`` that does not name a variable the instance has."""


class BadVariable(CommandNotFound):
    """A ``$`` in a ``run`` line that is not a known variable, ``${NAME}`` or ``$$``."""


def service_variables(spec: PlatformSpec, service: Service) -> list[str]:
    """Names a ``run`` line of ``service`` may use: the platform's, its ``env:`` keys, and
    ``DATABASE_URL`` when a database lists it."""
    names = [*PLATFORM_VARIABLES, *sorted(k for k in service.env if k not in PLATFORM_VARIABLES)]
    if any(service.name in db.services for db in spec.databases):
        names.append(DATABASE_VARIABLE)
    return names


def _pieces(word: str) -> list[tuple[str, bool]]:
    """``word`` as (text, is a variable name) pieces; ``BadVariable`` on a stray ``$``."""
    out: list[tuple[str, bool]] = []
    literal: list[str] = []
    at = 0
    while at < len(word):
        dollar = word.find("$", at)
        if dollar < 0:
            literal.append(word[at:])
            break
        literal.append(word[at:dollar])
        rest = word[dollar + 1 :]
        if rest.startswith("$"):
            literal.append("$")
            at = dollar + 2
            continue
        if rest.startswith("{"):
            close = rest.find("}")
            name = rest[1:close] if close >= 0 else ""
            if close < 0 or not _NAME.fullmatch(name):
                raise BadVariable(
                    f"{word!r}: '${{' must be followed by a name and '}}'; {_ESCAPE_HINT}"
                )
            at = dollar + 2 + close
        else:
            found = _NAME.match(rest)
            if found is None:
                shown = f"'${rest[:1]}'" if rest else "a '$' at its end"
                raise BadVariable(f"{word!r} has {shown}, not a variable; {_ESCAPE_HINT}")
            name = found.group()
            at = dollar + 1 + found.end()
        out.append(("".join(literal), False))
        out.append((name, True))
        literal = []
    out.append(("".join(literal), False))
    return [(text, is_name) for text, is_name in out if text or is_name]


def _unknown(name: str, known: Collection[str]) -> BadVariable:
    listed = ", ".join(known) or "none"
    return BadVariable(f"${name} is not set for this service (known: {listed}); {_ESCAPE_HINT}")


def expand(words: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """Each word with ``$NAME``, ``${NAME}`` replaced from ``env`` and ``$$`` made ``$``.

    Per word, after splitting, so a value with spaces stays one word. ``BadVariable`` for
    a name ``env`` lacks or a ``$`` that names nothing."""
    out = []
    for word in words:
        parts = []
        for text, is_name in _pieces(word):
            if is_name and text not in env:
                raise _unknown(text, list(env))
            parts.append(env[text] if is_name else text)
        out.append("".join(parts))
    return out


def split_words(run: str) -> list[str]:
    """``run`` split like a shell; ``CommandNotFound`` when it cannot be, or is empty."""
    try:
        words = shlex.split(run)
    except ValueError as exc:
        raise CommandNotFound(f"cannot split {run!r} into words: {exc}") from exc
    if not words:
        raise CommandNotFound("the command is empty")
    return words


def check_run(run: str, folder: Path, known: Collection[str]) -> None:
    """Before anything runs: the line splits, uses only ``known`` variables, and names a
    program that exists (one named by a variable is found when each instance starts)."""
    words = split_words(run)
    for word in words:
        for text, is_name in _pieces(word):
            if is_name and text not in known:
                raise _unknown(text, known)
    if "$" not in words[0]:
        resolve_command(run, folder)


def resolve_command(run: str, folder: Path, env: Mapping[str, str] | None = None) -> list[str]:
    """Return the argv for ``run``, started in ``folder``.

    With ``env``, variables in every word are expanded first (``expand``). A leading
    ``python`` is the interpreter alwayson runs in, so a sample copied anywhere
    runs with the same environment. A path with a slash is relative to ``folder``.
    Anything else is looked up on PATH, with this Python's ``bin`` folder first.
    """
    argv = split_words(run)
    if env is not None:
        argv = expand(argv, env)
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
