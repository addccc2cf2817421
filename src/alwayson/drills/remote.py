"""The runner's view of the platform: a few calls to the controller's API (token)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from alwayson.util.certs import web_context
from alwayson.util.errors import TemporaryError


class ControllerApi:
    """``others``: the other site controllers; a call that finds no controller at the
    current address fails (the runner retries it) and moves on to the next one."""

    def __init__(
        self, api: str, token: str, timeout: float = 5.0, others: Sequence[str] = ()
    ) -> None:
        base = api if api.startswith("http") else f"http://{api}"
        self.addresses = [base, *(f"http://{a}" for a in others if f"http://{a}" != base)]
        self.http = httpx.AsyncClient(
            base_url=base,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            verify=web_context(),
        )

    def _next(self) -> None:
        at = self.addresses.index(str(self.http.base_url).rstrip("/"))
        self.http.base_url = httpx.URL(self.addresses[(at + 1) % len(self.addresses)])

    async def close(self) -> None:
        await self.http.aclose()

    async def _get(self, path: str, **params: Any) -> Any:
        try:
            response = await self.http.get(path, params=params or None)
        except httpx.TransportError as exc:
            self._next()
            raise TemporaryError(f"controller API {path}: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise TemporaryError(f"controller API {path}: {exc!r}") from exc
        if response.status_code >= 400:
            raise TemporaryError(f"controller API {path}: {response.status_code} {response.text}")
        return response.json()

    async def _post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = await self.http.post(path, json=body or {})
        except httpx.TransportError as exc:
            self._next()
            raise TemporaryError(f"controller API {path}: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise TemporaryError(f"controller API {path}: {exc!r}") from exc
        if response.status_code >= 400:
            raise TemporaryError(f"controller API {path}: {response.status_code} {response.text}")
        return response.json()

    async def alive(self) -> bool:
        """Whether a controller that acts answers: the only one, or the leader of several
        (a follower answers too, but while no one leads it can only say so). The next
        address is tried when this one is not it."""
        for _ in self.addresses:
            try:
                response = await self.http.get("/healthz", timeout=1.0)
                role = response.json().get("role", "leader") if response.status_code == 200 else ""
            except (httpx.HTTPError, ValueError, AttributeError):
                role = ""
            if role == "leader":
                return True
            self._next()
        return False

    async def status(self) -> dict[str, Any]:
        found: dict[str, Any] = await self._get("/api/v1/status")
        return found

    async def databases(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._get("/api/v1/databases")
        return found

    async def records(self, db: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._get(f"/api/v1/databases/{db}/records")
        return found

    async def events(self, limit: int = 500) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self._get("/api/v1/events", limit=limit)
        return found

    async def lose_site(self, site: str, drill: str) -> dict[str, Any]:
        found: dict[str, Any] = await self._post(f"/api/v1/sites/{site}/lose", {"drill": drill})
        return found

    async def restore_site(self, site: str, drill: str) -> dict[str, Any]:
        found: dict[str, Any] = await self._post(f"/api/v1/sites/{site}/restore", {"drill": drill})
        return found

    async def db_request(self, db: str, op: str, **params: Any) -> dict[str, Any]:
        """Hand the agents a request (switchover {to}, failback): its id, to poll."""
        found: dict[str, Any] = await self._post(
            f"/api/v1/databases/{db}/requests", {"op": op, **params}
        )
        return found
