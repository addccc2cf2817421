"""Pushing routing tables to gateway admin endpoints, and writing them for a cold start."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx

from alwayson.control.routing import Table
from alwayson.util.errors import TemporaryError


class RoutePusher:
    def __init__(self, token: str, timeout: float = 2.0) -> None:
        self._client = httpx.AsyncClient(
            timeout=timeout, headers={"Authorization": f"Bearer {token}"}, trust_env=False
        )

    async def push(self, admin: str, table: Table) -> None:
        try:
            response = await self._client.put(f"http://{admin}/routes", json=table)
        except httpx.HTTPError as exc:
            raise TemporaryError(f"gateway {admin}: {exc!r}", retry_after=0.5) from exc
        if response.status_code == 409:
            return
        if response.status_code != 200:
            raise TemporaryError(
                f"gateway {admin} refused routes: HTTP {response.status_code} {response.text[:200]}"
            )

    async def close(self) -> None:
        await self._client.aclose()


def write_table(path: Path, table: Table) -> None:
    """Atomically write a table where a gateway reads it when it starts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table))
    os.replace(tmp, path)
