"""``secrets:``: values a service needs that must never be written into the spec.

A secret comes from exactly one place: a file beside the spec (read by the controller
when the spec is applied), an environment variable of the operator (read by the CLI that
runs ``apply``/``up``/``plan`` and sent with the spec, never stored in it) or the
platform itself (``generate``: random, made once and kept). A service names the secrets
it uses; each is given to its instances as a file in ``$CREDENTIALS_DIRECTORY`` that only
the service's identity can read, and, when asked, also as an environment variable.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, model_validator

from alwayson.spec.types import Name

if TYPE_CHECKING:
    from alwayson.spec.models import PlatformSpec

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
SECRET_LOOKING = re.compile(r"(KEY|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE)", re.I)
"""Environment variable names whose values ``plan`` and the audit log never show."""

__all__ = ["SECRET_LOOKING", "Secret", "SecretUse", "secret_problems"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Secret(_Strict):
    """One secret and where its value comes from (exactly one of file, env, generate)."""

    name: Name
    file: str | None = Field(
        default=None, description="A file, relative to the spec's folder, read at apply."
    )
    env: str | None = Field(
        default=None,
        pattern=ENV_NAME,
        description="An environment variable of the operator running apply/up/plan.",
    )
    generate: int | None = Field(
        default=None,
        ge=16,
        le=256,
        description="Random bytes (URL-safe text), made by the platform once and kept.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Secret:
        given = [k for k in ("file", "env", "generate") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of file, env or generate "
                f"({', '.join(given) if given else 'none given'})"
            )
        return self

    @property
    def source(self) -> str:
        if self.file is not None:
            return f"file {self.file}"
        if self.env is not None:
            return f"${self.env} of the operator"
        return f"generated ({self.generate} bytes)"


class SecretUse(_Strict):
    """A secret a service uses: always the file ``$CREDENTIALS_DIRECTORY/<name>``."""

    name: Name
    env: str | None = Field(
        default=None,
        pattern=ENV_NAME,
        description="Also give the value as this environment variable (readable only by "
        "the service's own identity, but inherited by its children).",
    )


def secret_problems(spec: PlatformSpec) -> list[tuple[tuple[str | int, ...], str]]:
    """Secrets named by a service but not declared, declared twice, or whose variable
    clashes with the service's own ``env``."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    declared = [s.name for s in spec.secrets]
    for index, name in enumerate(declared):
        if declared.index(name) != index:
            problems.append((("secrets", index, "name"), f"{name!r} is declared twice"))
    for s_index, svc in enumerate(spec.services):
        for u_index, use in enumerate(svc.secrets):
            where: tuple[str | int, ...] = ("services", s_index, "secrets", u_index)
            if use.name not in declared:
                known = ", ".join(declared) or "none"
                problems.append(
                    ((*where, "name"), f"no secret {use.name!r} under secrets: (declared: {known})")
                )
            if use.env is not None and use.env in svc.env:
                problems.append(
                    ((*where, "env"), f"{use.env} is also in this service's env: keep one")
                )
    return problems
