"""The one typed client of the REST API; the CLI talks to the controller only through it.

Every CLI command imports this module, so it stays light: the pydantic bodies of
``api.schemas`` are imported only by the methods that send or read them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from alwayson.util.errors import (
    AlwaysonError,
    ConflictError,
    NotFoundError,
    PermanentError,
    SpecError,
    SpecProblem,
    TemporaryError,
)

if TYPE_CHECKING:
    from alwayson.api.schemas import ChangesOut, DeployBody, MessageOut, ReplacedOut


class ControllerUnreachable(TemporaryError):
    pass


# The API is plain HTTP on loopback. httpx's default TLS context reads certifi's whole CA
# bundle for every client (a tenth of a second of `alwayson status`); this one loads no
# certificate at all, so a TLS connection, should one ever be attempted, fails closed.
_NO_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


NO_LEADER_HEADER = "X-Alwayson-No-Leader"
NO_LEADER_WAIT = 10.0
NO_LEADER_RETRY = 0.25
PICK_TIMEOUT = 1.0
"""How long a controller has to answer ``/healthz`` before the next one is asked."""


class ApiClient:
    """The API of one platform. ``others``: the other controllers' addresses (a platform
    with a controller in every site); the first of ``api`` and ``others`` whose
    ``/healthz`` answers within a second is asked, so a lost, hung or stopped site's
    controller costs a command one second, not its timeout. Any controller serves every
    request: a follower passes it to the leader."""

    def __init__(
        self,
        api: str,
        token: str | None,
        command: str,
        timeout: float = 30.0,
        others: Sequence[str] = (),
    ) -> None:
        self.api = api
        self.others = [a for a in others if a != api]
        self._picked = not self.others
        headers = {"X-Alwayson-Command": command}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=f"http://{api}",
            headers=headers,
            timeout=timeout,
            trust_env=False,
            verify=_NO_TLS,
        )

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._http.aclose()

    async def pick(self) -> str:
        """The first controller that answers (``api`` first); ``api`` when none does."""
        if self._picked:
            return self.api
        self._picked = True
        for candidate in [self.api, *self.others]:
            try:
                answer = await self._http.get(f"http://{candidate}/healthz", timeout=PICK_TIMEOUT)
            except httpx.TransportError:
                continue
            if answer.status_code != 200:
                continue
            self._use(candidate)
            leader = _leader_api(answer)
            if leader and leader != candidate:  # ask the leader itself: one hop fewer
                try:
                    direct = await self._http.get(f"http://{leader}/healthz", timeout=PICK_TIMEOUT)
                except httpx.TransportError:
                    return candidate
                if direct.status_code == 200 and _leader_api(direct) == leader:
                    self._use(leader)
                    return leader
            return candidate
        return self.api

    def _use(self, api: str) -> None:
        self.api = api
        self._http.base_url = httpx.URL(f"http://{api}")

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        await self.pick()
        waited = 0.0
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                self._picked = not self.others  # the next request looks for one again
                raise ControllerUnreachable(
                    f"no controller answers at {', '.join([self.api, *self.others])} "
                    f"({exc.__class__.__name__}); start it with `alwayson up`"
                ) from exc
            # A follower that knows no leader yet never passed the request on: asking
            # again is safe, and the controllers elect a leader within seconds.
            if response.headers.get(NO_LEADER_HEADER) and waited < NO_LEADER_WAIT:
                await asyncio.sleep(NO_LEADER_RETRY)
                waited += NO_LEADER_RETRY
                continue
            _raise_for(response)
            return response

    async def healthy(self) -> bool:
        try:
            response = await self._http.get("/healthz", timeout=1.0)
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def status(self) -> dict[str, Any]:
        data: dict[str, Any] = (await self._request("GET", "/api/v1/status")).json()
        return data

    async def plan(self, text: str, path: str, secrets: dict[str, str] | None = None) -> ChangesOut:
        from alwayson.api.schemas import ChangesOut, SpecBody

        body = SpecBody(text=text, path=path, secrets=secrets or {}).model_dump()
        return ChangesOut.model_validate(
            (await self._request("POST", "/api/v1/plan", json=body)).json()
        )

    async def apply(
        self,
        text: str,
        path: str,
        allow_destroy: bool = False,
        secrets: dict[str, str] | None = None,
    ) -> ChangesOut:
        from alwayson.api.schemas import ChangesOut, SpecBody

        body = SpecBody(
            text=text, path=path, allow_destroy=allow_destroy, secrets=secrets or {}
        ).model_dump()
        response = await self._request("POST", "/api/v1/apply", json=body)
        return ChangesOut.model_validate(response.json())

    async def scale(self, service: str, replicas: int, site: str | None) -> MessageOut:
        from alwayson.api.schemas import MessageOut, ScaleBody

        body = ScaleBody(service=service, replicas=replicas, site=site).model_dump()
        response = await self._request("POST", "/api/v1/scale", json=body)
        return MessageOut.model_validate(response.json())

    async def restart_gateways(self, site: str | None) -> list[ReplacedOut]:
        from alwayson.api.schemas import ReplacedOut, SiteBody

        body = SiteBody(site=site).model_dump()
        response = await self._request("POST", "/api/v1/gateways/restart", json=body, timeout=120.0)
        return [ReplacedOut.model_validate(r) for r in response.json()]

    async def deploy(self, body: DeployBody) -> dict[str, Any]:
        response = await self._request("POST", "/api/v1/releases", json=body.model_dump())
        data: dict[str, Any] = response.json()
        return data

    async def releases(self, service: str | None = None) -> list[dict[str, Any]]:
        params = {"service": service} if service else {}
        data: list[dict[str, Any]] = (
            await self._request("GET", "/api/v1/releases", params=params)
        ).json()
        return data

    async def release_history(self, service: str | None = None) -> list[dict[str, Any]]:
        params = {"service": service} if service else {}
        data: list[dict[str, Any]] = (
            await self._request("GET", "/api/v1/releases/history", params=params)
        ).json()
        return data

    async def release_action(
        self, service: str, action: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        path = f"/api/v1/releases/{service}/{action}"
        data: dict[str, Any] = (await self._request("POST", path, json=body or {})).json()
        return data

    async def upgrade_gateways(self, site: str | None) -> dict[str, Any]:
        from alwayson.api.schemas import SiteBody

        body = SiteBody(site=site).model_dump()
        response = await self._request("POST", "/api/v1/upgrade/gateway", json=body, timeout=300.0)
        data: dict[str, Any] = response.json()
        return data

    async def get_json(self, path: str, **params: Any) -> Any:
        return (await self._request("GET", path, params=params)).json()

    async def post_json(self, path: str, body: dict[str, Any]) -> Any:
        return (await self._request("POST", path, json=body)).json()

    async def delete_json(self, path: str) -> Any:
        return (await self._request("DELETE", path)).json()

    async def get_text(self, path: str, **params: Any) -> str:
        return (await self._request("GET", path, params=params)).text

    async def down(self) -> MessageOut:
        from alwayson.api.schemas import MessageOut

        response = await self._request("POST", "/api/v1/down", timeout=120.0)
        return MessageOut.model_validate(response.json())

    async def events(self, limit: int = 100, kind: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if kind:
            params["kind"] = kind
        data: list[dict[str, Any]] = (
            await self._request("GET", "/api/v1/events", params=params)
        ).json()
        return data

    async def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = (
            await self._request("GET", "/api/v1/audit", params={"limit": limit})
        ).json()
        return data

    async def logs(
        self, service: str, site: str | None, tail: int, follow: bool
    ) -> AsyncIterator[str]:
        params: dict[str, Any] = {"service": service, "tail": tail, "follow": follow}
        if site:
            params["site"] = site
        await self.pick()
        try:
            async with self._http.stream(
                "GET", "/api/v1/logs", params=params, timeout=None
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    _raise_for(response)
                async for line in response.aiter_lines():
                    yield line
        except httpx.TransportError as exc:
            raise ControllerUnreachable(f"no controller answers at {self.api}: {exc}") from exc


def _leader_api(answer: httpx.Response) -> str | None:
    """The leader's address from a site controller's ``/healthz`` (None: not known)."""
    try:
        leader = answer.json().get("leader")
    except (ValueError, AttributeError):
        return None
    return str(leader["api"]) if isinstance(leader, dict) and leader.get("api") else None


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text}
    message = str(body.get("error") or body.get("detail") or body)
    code = response.status_code
    if code == 422 and "problems" in body:
        raise SpecError([_problem(p) for p in body["problems"]])
    if code == 404:
        raise NotFoundError(message)
    if code == 409:
        raise ConflictError(message)
    if code == 401:
        raise PermanentError(f"the controller refused the token: {message}")
    if code == 503:
        raise TemporaryError(message)
    if code < 500:
        raise PermanentError(message)
    raise AlwaysonError(f"controller error {code}: {message}")


def _problem(data: dict[str, Any]) -> SpecProblem:
    return SpecProblem(
        str(data.get("file", "?")),
        int(data.get("line", 1)),
        int(data.get("column", 1)),
        str(data.get("path", "")),
        str(data.get("message", "")),
    )
