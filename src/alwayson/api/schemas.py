"""Request and response bodies shared by the API and its client."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class SpecBody(BaseModel):
    text: str = Field(description="The spec file's text.")
    path: str = Field(description="Absolute path of the spec file (its folder is the root).")


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


class PromoteBody(BaseModel):
    full: bool = False


class RollbackBody(BaseModel):
    to: str | None = None
