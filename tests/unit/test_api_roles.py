"""Scoped access through the real app: each token's role decides what it may do, a revoked
token stops working at once, and the audit log names the token, not a client's header."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tests.unit.controlparts import memory_controller

from alwayson.api.app import create_app
from alwayson.api.tokens import TokenBook, create_token, revoke_token
from alwayson.store.memory import MemoryStore

OWNER = "owner-s3cret"
SPEC = """\
platform: bank
sites:
  - name: jakarta
  - name: surabaya
  - name: witness
    witness: true
services:
  - {name: accounts, version: "1.0.0", run: python -m x, port: 8000, replicas: 1}
"""


@dataclass
class Lab:
    state_dir: Path
    store: MemoryStore
    client: httpx.AsyncClient
    spec_path: Path

    def token(self, name: str, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {create_token(self.state_dir, name, role)}"}

    async def apply(self, headers: dict[str, str]) -> httpx.Response:
        body = {"text": SPEC, "path": str(self.spec_path)}
        return await self.client.post("/api/v1/apply", json=body, headers=headers)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    store = MemoryStore()
    state_dir = tmp_path / ".alwayson"
    controller = await memory_controller(tmp_path, store)
    app = create_app(controller, TokenBook(state_dir, OWNER))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://controller") as client:
        yield Lab(state_dir, store, client, tmp_path / "alwayson.yaml")


async def test_a_read_token_reads_and_plans_but_changes_nothing(lab: Lab) -> None:
    reader = lab.token("grafana", "read")

    assert (await lab.client.get("/api/v1/status", headers=reader)).status_code == 200
    planned = await lab.client.post(
        "/api/v1/plan", json={"text": SPEC, "path": str(lab.spec_path)}, headers=reader
    )
    assert planned.status_code == 200
    refused = await lab.client.post(
        "/api/v1/scale", json={"service": "accounts", "replicas": 3}, headers=reader
    )
    assert refused.status_code == 403
    assert refused.json()["error"].startswith("token 'grafana' has role read; this request")
    assert (await lab.apply(reader)).status_code == 403
    assert await lab.store.list_audit() == []


async def test_an_operator_may_not_apply_an_admin_may(lab: Lab) -> None:
    operator = lab.token("ci", "operate")
    admin = lab.token("release-manager", "admin")

    assert (await lab.apply(operator)).status_code == 403
    assert (await lab.apply(admin)).status_code == 200


async def test_the_audit_names_the_token_whatever_header_the_client_sends(lab: Lab) -> None:
    admin = lab.token("release-manager", "admin")

    lying = {**admin, "X-Alwayson-Command": "owner) (apply"}
    assert (await lab.apply(lying)).status_code == 200
    owner = {"Authorization": f"Bearer {OWNER}", "X-Alwayson-Command": "up"}
    assert (await lab.apply(owner)).status_code == 200

    actors = [e.actor for e in await lab.store.list_audit()]
    assert sorted(actors) == ["owner (up)", "release-manager (api)"]


async def test_a_revoked_token_is_refused_at_its_next_request(lab: Lab) -> None:
    reader = lab.token("grafana", "read")
    assert (await lab.client.get("/api/v1/status", headers=reader)).status_code == 200

    revoke_token(lab.state_dir, "grafana")

    assert (await lab.client.get("/api/v1/status", headers=reader)).status_code == 401


async def test_no_token_or_a_wrong_one_is_401_on_every_guarded_route(lab: Lab) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {OWNER}"}):
        answer = await lab.client.get("/api/v1/status", headers=headers)
        assert answer.status_code == 401
