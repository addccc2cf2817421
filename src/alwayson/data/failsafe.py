"""The failsafe's question between site agents (Patroni's ``failsafe_mode``;
docs/DATA-DESIGN.md, "Failsafe").

A primary whose renewal fails because etcd cannot be reached asks every standby site's
agent, through this site's link to it::

    POST /v1/failsafe/<db>   {"site": <primary's site>, "epoch": E, "ttl": T}
    Authorization: Bearer <the platform's token>

and the standby answers ``{"ok": true, "promise_until": <wall time>, "promise_seconds":
P}`` when it confirms that primary (having recorded first, in memory, its promise not to
take over for P ≥ T seconds), else ``{"ok": false, "why": ...}``. The question changes
what the standby may do, so it needs the token; the rule for the answer is
:func:`~alwayson.data.deciding.failsafe_refusal`, the promise is kept by
:func:`~alwayson.data.deciding.held_back`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
from fastapi import APIRouter, Depends, Header, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from alwayson.util.certs import web_context
from alwayson.util.errors import TemporaryError

PATH = "/v1/failsafe/{db}"
LONGEST_PROMISE = 600.0
"""A question may ask for a promise up to this long (its primary's ttl)."""


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid")

    site: str = Field(min_length=1)
    """The primary's site."""
    epoch: int = Field(ge=1)
    ttl: float = Field(default=0.0, ge=0.0, le=LONGEST_PROMISE)
    """The primary's ttl: the promise lasts at least this long."""


class Promiser(Protocol):
    """A steward as the standby side of the question sees it."""

    def promise(self, site: str, epoch: int, ttl: float) -> dict[str, Any]: ...


class Asker(Protocol):
    """How a primary's steward asks another site's agent (an HTTP client in the agent, a
    fake in unit tests). Raises TemporaryError when no answer came."""

    async def ask(
        self, peer: str, db: str, question: dict[str, Any], timeout: float
    ) -> dict[str, Any]: ...


def read_token(path: Path) -> str | None:
    try:
        token = path.read_text().strip()
    except OSError:
        return None
    return token or None


def bearer_matches(authorization: str, token: str | None) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    scheme, _, given = authorization.partition(" ")
    if token is None or scheme.lower() != "bearer":
        return False
    return secrets.compare_digest(given.strip().encode(), token.encode())


def failsafe_router(stewards: Mapping[str, Promiser], token_file: Path) -> APIRouter:
    """The standby side: ``POST /v1/failsafe/<db>`` on the agent's admin API."""

    def authorize(authorization: str = Header(default="")) -> None:
        if not bearer_matches(authorization, read_token(token_file)):
            raise HTTPException(401, "missing or wrong bearer token")

    router = APIRouter()

    @router.post(PATH, dependencies=[Depends(authorize)])
    async def failsafe(db: str, question: Question) -> dict[str, Any]:
        steward = stewards.get(db)
        if steward is None:
            raise HTTPException(404, f"no database {db!r} in this site")
        # No await between the check and the promise: no acquire can slip in.
        return steward.promise(question.site, question.epoch, question.ttl)

    return router


class HttpAsker:
    """The primary side: asks other sites' agents at ``agents`` (their admin APIs as
    reached through this site's links). A new connection per question: a connection
    kept through a link that a drill cut and mended would fail the next question."""

    def __init__(
        self,
        agents: Mapping[str, str],
        token_file: Path,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.agents = dict(agents)
        self.token_file = token_file
        self._client = httpx.AsyncClient(
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            transport=transport,  # tests: an agent's app in process
            verify=web_context(),
        )

    async def ask(
        self, peer: str, db: str, question: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        address = self.agents.get(peer)
        if address is None:
            raise TemporaryError(f"no address for {peer}'s agent")
        token = read_token(self.token_file)
        if token is None:
            raise TemporaryError(f"no platform token in {self.token_file} to ask {peer} with")
        url = f"http://{address}{PATH.format(db=db)}"
        try:
            async with asyncio.timeout(timeout):
                response = await self._client.post(
                    url,
                    json=question,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=timeout,
                )
        except (httpx.HTTPError, TimeoutError) as exc:
            raise TemporaryError(f"{peer}'s agent did not answer: {exc!r}") from exc
        if response.status_code != 200:
            raise TemporaryError(
                f"{peer}'s agent answered HTTP {response.status_code}: {response.text[:200]}"
            )
        try:
            answer = response.json()
        except ValueError as exc:
            raise TemporaryError(f"{peer}'s agent answered no JSON") from exc
        if not isinstance(answer, dict):
            raise TemporaryError(f"{peer}'s agent answered {answer!r}")
        return answer

    async def close(self) -> None:
        await self._client.aclose()
