"""Request and response bodies shared by the API and its client."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class SpecBody(BaseModel):
    text: str = Field(description="The spec file's text.")
    path: str = Field(description="Absolute path of the spec file (its folder is the root).")
    secrets: dict[str, str] = Field(
        default_factory=dict,
        max_length=256,
        description="Values of the spec's secrets that come from the operator's environment "
        "(`env:`), by secret name; kept 0600 by the platform, never shown or audited.",
    )
    allow_destroy: bool = Field(
        default=False,
        description="Apply destructive changes (a database removed, its primary_site or "
        "replication changed); without it such a spec is refused with 409.",
    )


class ChangesOut(BaseModel):
    changes: list[str]
    digest: str | None = None


class ScaleBody(BaseModel):
    service: str
    replicas: int = Field(ge=0, le=100)
    site: str | None = None


class SiteBody(BaseModel):
    site: str | None = None


class ReplacedOut(BaseModel):
    id: str
    old_pid: int | None
    new_pid: int
    seconds: float


class MessageOut(BaseModel):
    message: str


class DeployBody(BaseModel):
    service: str
    version: str = Field(min_length=1, max_length=64)
    run: str | None = Field(default=None, description="Command of the new version.")
    strategy: str | None = Field(default=None, description="rolling, blue-green or canary.")
    settings: dict[str, Any] | None = Field(
        default=None,
        description="Overrides of the service's release settings, shaped like the spec's "
        '`release:` (e.g. {"canary": {"steps": [10, 100]}}).',
    )


class CredentialsBody(BaseModel):
    role: Literal["app", "admin"] = Field(
        default="app", description="app: the services' role; admin: the superuser."
    )
    site: str | None = Field(
        default=None, description="Whose endpoint (default: the primary site)."
    )


class PromoteBody(BaseModel):
    full: bool = False


class RollbackBody(BaseModel):
    to: str | None = None


MAX_BODY_BYTES = 1024 * 1024
"""The largest request body the API reads (1 MiB; a spec file is a few hundred KB at most).
A larger one is answered 413 before it is read whole."""


class ProblemOut(BaseModel):
    file: str
    line: int
    column: int
    path: str
    message: str


class ErrorOut(BaseModel):
    """The body of every error answer: what is wrong and how to fix it."""

    error: str = Field(description="What is wrong, naming the field or thing, and the fix.")
    problems: list[ProblemOut] | None = Field(
        default=None, description="A spec's faults, one per problem (422 of plan and apply)."
    )


def _answer(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


ERROR_ANSWERS: dict[int | str, dict[str, Any]] = {
    400: _answer("Bad input: the error names the field and how to fix it."),
    401: _answer("No bearer token, or a wrong one (the token is in `.alwayson/token`)."),
    403: _answer("The token's role may not make this request (read < operate < admin)."),
    404: _answer("No such service, site, database, release, drill, silence or record."),
    409: _answer(
        "The request conflicts with what runs (a release, drill or database request in "
        "progress, a silence already expired)."
    ),
    413: _answer(f"The request body is larger than {MAX_BODY_BYTES} bytes (1 MiB)."),
    422: _answer("The body or a parameter does not validate; for a spec, `problems` lists each."),
    503: _answer("Not now (the store is out of reach, no controller leads): see Retry-After."),
}
"""The error answers of a route behind the bearer token, for its OpenAPI ``responses``."""
