"""The exception tree of alwayson.

``AlwaysonError``                 every error alwayson raises on purpose
├── ``SpecError``                 the spec is invalid; carries one ``SpecProblem`` per fault
├── ``PermanentError``            retrying will not help (bad input, missing command, port taken)
│   ├── ``NotFoundError``         an unknown service, site or instance
│   └── ``ConflictError``         the request conflicts with what runs
└── ``TemporaryError``            retry later; ``retry_after`` says when (seconds)

Foreign exceptions (OSError, httpx, sqlite3) are mapped to these at the layer boundary
that meets them, so callers above only ever catch this tree.
"""

from __future__ import annotations

from dataclasses import dataclass


class AlwaysonError(Exception):
    """Base of every error alwayson raises on purpose."""


@dataclass(frozen=True)
class SpecProblem:
    """One fault in a spec file, located precisely."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(AlwaysonError):
    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class PermanentError(AlwaysonError):
    """Retrying will not help: the input or the environment must change first."""


class NotFoundError(PermanentError):
    pass


class ConflictError(PermanentError):
    pass


class TemporaryError(AlwaysonError):
    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
