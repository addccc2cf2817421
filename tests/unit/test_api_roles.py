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
from alwayson.control.controller import Controller
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
    controller: Controller
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
        yield Lab(state_dir, controller, store, client, tmp_path / "alwayson.yaml")


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


DB_SPEC = SPEC + (
    "  - {name: customers, version: '1.0.0', run: python -m x, port: 8001, replicas: 1}\n"
    "databases:\n  - {name: bank, primary_site: jakarta, services: [customers]}\n"
)


async def test_database_credentials_need_an_admin_token_and_are_audited_without_secrets(
    lab: Lab,
) -> None:
    lab.controller.only_one = False  # a site controller: the one kind that runs databases
    owner = {"Authorization": f"Bearer {OWNER}"}
    body = {"text": DB_SPEC, "path": str(lab.spec_path)}
    assert (await lab.client.post("/api/v1/apply", json=body, headers=owner)).status_code == 200
    url = "/api/v1/databases/bank/credentials"

    operator = lab.token("ci", "operate")
    refused = await lab.client.post(url, json={"role": "app"}, headers=operator)
    assert refused.status_code == 403

    admin = lab.token("dba", "admin")
    app = (await lab.client.post(url, json={"role": "app"}, headers=admin)).json()
    superuser = await lab.client.post(
        url, json={"role": "admin", "site": "surabaya"}, headers=admin
    )

    assert (app["user"], app["dbname"], app["site"]) == ("bank", "bank", "jakarta")
    assert app["url"] == (
        f"postgresql://bank:{app['password']}@{app['host']}:{app['port']}/bank"
    ) and app["host"].startswith("127.1.")
    assert superuser.json()["user"] == "alwayson" and superuser.json()["site"] == "surabaya"
    assert superuser.json()["password"] != app["password"]
    assert app["psql"].endswith("/psql")
    asked = [e for e in await lab.store.list_audit() if e.action == "db-credentials"]
    assert [(e.actor, e.detail["role"], e.detail["site"]) for e in asked] == [
        ("dba (api)", "admin", "surabaya"),
        ("dba (api)", "app", "jakarta"),
    ]
    assert app["password"] not in repr(asked)
    bad = await lab.client.post(url, json={"role": "root"}, headers=admin)
    assert bad.status_code == 422
