"""The agents' client of the lease keeper (through their site's link to the witness)."""

from __future__ import annotations

from typing import Any

import httpx

from alwayson.data.leases import Lease, LeaseRefused
from alwayson.util.errors import TemporaryError


class KeeperClient:
    def __init__(self, address: str, token: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=f"http://{address}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(2.0),
        )

    async def _call(
        self, method: str, path: str, timeout: float | None, body: Any = None
    ) -> httpx.Response:
        try:
            return await self.http.request(
                method, path, json=body, timeout=timeout or httpx.USE_CLIENT_DEFAULT
            )
        except httpx.HTTPError as exc:
            raise TemporaryError(f"lease keeper unreachable: {exc!r}") from exc

    async def view(self, db: str, sites: list[str], timeout: float = 1.5) -> dict[str, Any]:
        resp = await self._call("GET", f"/v1/db/{db}?sites={','.join(sites)}", timeout)
        if resp.status_code != 200:
            raise TemporaryError(f"lease keeper: {resp.status_code} {resp.text[:200]}")
        return dict(resp.json())

    async def lease(
        self,
        db: str,
        op: str,
        site: str,
        epoch: int,
        ttl: float,
        timeout: float,
        to: str | None = None,
        sync: str | None = None,
        synchronous: bool = False,
        why: str = "",
        fault_at: float | None = None,
    ) -> Lease:
        body = {
            "site": site,
            "epoch": epoch,
            "ttl": ttl,
            "to": to,
            "sync": sync,
            "synchronous": synchronous,
            "why": why,
            "fault_at": fault_at,
        }
        resp = await self._call("POST", f"/v1/db/{db}/lease/{op}", timeout, body)
        if resp.status_code == 409:
            data = resp.json()
            lease = Lease.from_json(data["lease"]) if data.get("lease") else None
            raise LeaseRefused(data.get("refused", "refused"), lease)
        if resp.status_code != 200:
            raise TemporaryError(f"lease keeper: {resp.status_code} {resp.text[:200]}")
        return Lease.from_json(resp.json()["lease"])

    async def report(self, db: str, site: str, status: dict[str, Any]) -> None:
        await self._call("PUT", f"/v1/db/{db}/site/{site}", 1.5, status)

    async def record(self, db: str, kind: str, ident: str, body: dict[str, Any]) -> None:
        resp = await self._call("PUT", f"/v1/db/{db}/record/{kind}/{ident}", 3.0, body)
        if resp.status_code != 200:
            raise TemporaryError(f"lease keeper: {resp.status_code} {resp.text[:200]}")

    async def finish(self, db: str, ident: str) -> None:
        await self._call("DELETE", f"/v1/db/{db}/request/{ident}", 3.0)

    async def event(self, kind: str, subject: str, message: str, data: dict[str, Any]) -> None:
        body = {"kind": kind, "subject": subject, "message": message, "data": data}
        await self._call("POST", "/v1/events", 3.0, body)

    async def close(self) -> None:
        await self.http.aclose()
