"""The admin endpoint's decisions, against a fake gateway (no sockets)."""

from __future__ import annotations

import json
from typing import Any

from alwayson.gateway.admin import AdminApp, AdminResponse
from alwayson.gateway.routes import RouteTable, StaleRouteTable, empty_table

TOKEN = "s3cret"
AUTH = {b"authorization": b"Bearer s3cret"}


class FakeGateway:
    def __init__(self) -> None:
        self.table = empty_table("jakarta")
        self.draining = False
        self.accepting_pushes = True
        self.pushed: list[RouteTable] = []

    @property
    def site(self) -> str:
        return "jakarta"

    @property
    def generation(self) -> int:
        return self.table.generation

    def current_table(self) -> RouteTable:
        return self.table

    def render_metrics(self) -> bytes:
        return b"metrics\n"

    async def push_table(self, table: RouteTable) -> None:
        if table.generation < self.table.generation:
            raise StaleRouteTable(table.generation, self.table.generation)
        self.pushed.append(table)
        self.table = table


def body(generation: int, site: str = "jakarta") -> bytes:
    return json.dumps({"generation": generation, "site": site, "routes": []}).encode()


def document(response: AdminResponse) -> Any:
    return json.loads(response.body)


async def test_healthz_reports_generation_and_site() -> None:
    gateway = FakeGateway()
    app = AdminApp(gateway, lambda: TOKEN)
    response = await app.handle(b"GET", b"/healthz", {}, b"")
    assert response.status == 200
    assert document(response) == {"status": "ok", "generation": 0, "site": "jakarta"}
    gateway.draining = True
    assert (await app.handle(b"GET", b"/healthz", {}, b"")).status == 503


async def test_put_routes_needs_the_token() -> None:
    gateway = FakeGateway()
    app = AdminApp(gateway, lambda: TOKEN)
    missing = await app.handle(b"PUT", b"/routes", {}, body(1))
    wrong = await app.handle(b"PUT", b"/routes", {b"authorization": b"Bearer nope"}, body(1))
    assert missing.status == wrong.status == 401
    assert ("www-authenticate", 'Bearer realm="alwayson-gateway"') in missing.headers
    assert gateway.pushed == []


async def test_put_routes_is_refused_without_a_token_file() -> None:
    app = AdminApp(FakeGateway(), lambda: None)
    assert (await app.handle(b"PUT", b"/routes", AUTH, body(1))).status == 403


async def test_put_routes_installs_a_good_table_and_get_returns_it() -> None:
    gateway = FakeGateway()
    app = AdminApp(gateway, lambda: TOKEN)
    response = await app.handle(b"PUT", b"/routes", AUTH, body(3))
    assert response.status == 200 and document(response)["generation"] == 3
    current = await app.handle(b"GET", b"/routes", {}, b"")
    assert document(current)["generation"] == 3


async def test_bad_table_is_400_with_the_reason() -> None:
    app = AdminApp(FakeGateway(), lambda: TOKEN)
    bad = json.dumps(
        {"generation": 1, "site": "jakarta", "routes": [{"service": "x", "path_prefix": "nope"}]}
    )
    response = await app.handle(b"PUT", b"/routes", AUTH, bad.encode())
    assert response.status == 400
    assert "routes.0.path_prefix" in document(response)["error"]


async def test_table_for_another_site_is_400() -> None:
    app = AdminApp(FakeGateway(), lambda: TOKEN)
    response = await app.handle(b"PUT", b"/routes", AUTH, body(1, site="surabaya"))
    assert response.status == 400 and "surabaya" in document(response)["error"]


async def test_older_generation_is_409() -> None:
    gateway = FakeGateway()
    app = AdminApp(gateway, lambda: TOKEN)
    assert (await app.handle(b"PUT", b"/routes", AUTH, body(5))).status == 200
    response = await app.handle(b"PUT", b"/routes", AUTH, body(4))
    assert response.status == 409
    assert document(response)["generation"] == 5
    assert gateway.generation == 5


async def test_unknown_path_and_method() -> None:
    app = AdminApp(FakeGateway(), lambda: TOKEN)
    assert (await app.handle(b"GET", b"/nope", {}, b"")).status == 404
    assert (await app.handle(b"POST", b"/healthz", {}, b"")).status == 405
    metrics = await app.handle(b"GET", b"/metrics?x=1", {}, b"")
    assert metrics.status == 200 and metrics.content_type.startswith("text/plain")
