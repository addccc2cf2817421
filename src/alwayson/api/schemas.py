"""Request and response bodies shared by the API and its client."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SpecBody(BaseModel):
    text: str = Field(description="The spec file's text.")
    path: str = Field(description="Absolute path of the spec file (its folder is the root).")


class ChangesOut(BaseModel):
    changes: list[str]
    digest: str | None = None


class ScaleBody(BaseModel):
    service: str
    replicas: int = Field(ge=0, le=200)
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
