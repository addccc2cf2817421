"""The runner's view of the platform: a few calls to the controller's API (token)."""

from __future__ import annotations

from typing import Any

import httpx

from alwayson.util.errors import TemporaryError


class ControllerApi:
    def __init__(self, api: str, token: str, timeout: float = 5.0) -> None:
        base = api if api.startswith("http") else f"http://{api}"
        self.http = httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def _get(self, path: str, **params: Any) -> Any:
        try:
            response = await self.http.get(path, params=params or None)
        except httpx.HTTPError as exc:
            raise TemporaryError(f"controller API {path}: {exc!r}") from exc
        if response.status_code >= 400:
            raise TemporaryError(f"controller API {path}: {response.status_code} {response.text}")
        return response.json()

    async def _post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = await self.http.post(path, json=body or {})
        except httpx.HTTPError as exc:
            raise TemporaryError(f"controller API {path}: {exc!r}") from exc
        if response.status_code >= 400:
            raise TemporaryError(f"controller API {path}: {response.status_code} {response.text}")
        return response.json()

    async def alive(self) -> bool:
        try:
            response = await self.http.get("/healthz", timeout=1.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

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
