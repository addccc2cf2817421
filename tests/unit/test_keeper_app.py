"""The lease keeper's HTTP surface on the memory store: who may call it, and what it keeps."""

from __future__ import annotations

import httpx

from alwayson.data.keeper import create_keeper_app
from alwayson.store.memory import MemoryStore
from alwayson.util.clocks import ManualClock

TOKEN = "s3cret"


def client(store: MemoryStore, token: str | None) -> httpx.AsyncClient:
    app = create_keeper_app(store, TOKEN, ManualClock(wall_start=5000.0))
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://keeper", headers=headers
    )


async def test_every_route_but_healthz_needs_the_token() -> None:
    store = MemoryStore()
    async with client(store, None) as anonymous, client(store, "wrong") as wrong:
        assert (await anonymous.get("/healthz")).json() == {"status": "ok", "now": 5000.0}
        for http in (anonymous, wrong):
            assert (await http.get("/v1/db/bank?sites=a,b")).status_code == 401
            put = await http.put("/v1/db/bank/site/a", json={"role": "primary"})
            assert put.status_code == 401
            lease = await http.post("/v1/db/bank/lease/acquire", json={"site": "a"})
            assert lease.status_code == 401
    assert await store.get("db/bank/site/a") is None


async def test_an_agent_acquires_renews_and_reports() -> None:
    store = MemoryStore()
    async with client(store, TOKEN) as agent:
        acquired = await agent.post("/v1/db/bank/lease/acquire", json={"site": "a", "ttl": 6})
        assert acquired.status_code == 200
        epoch = acquired.json()["lease"]["epoch"]
        renewed = await agent.post(
            "/v1/db/bank/lease/renew", json={"site": "a", "epoch": epoch, "ttl": 6}
        )
        assert renewed.json()["lease"]["holder"] == "a"
        refused = await agent.post("/v1/db/bank/lease/acquire", json={"site": "b", "ttl": 6})
        assert refused.status_code == 409
        assert (await agent.put("/v1/db/bank/site/a", json={"role": "primary"})).status_code == 200
        view = (await agent.get("/v1/db/bank?sites=a,b")).json()

    assert view["lease"]["holder"] == "a"
    assert view["sites"] == {"a": {"role": "primary", "reported_at": 5000.0}}
    assert view["now"] == 5000.0
