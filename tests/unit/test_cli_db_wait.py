"""`db failback` / `db switchover --wait`: asked again while the target is not ready."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from alwayson.cli import databases
from alwayson.util.errors import ConflictError


class FakeClient:
    def __init__(self, refusals: list[str]) -> None:
        self.refusals = refusals
        self.posts = 0

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.posts += 1
        if self.refusals:
            raise ConflictError(self.refusals.pop(0))
        return {"id": "failback-1", "path": path, **body}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    monkeypatch.setattr(databases, "_sleep", sleep)
    monkeypatch.setattr(databases.time, "monotonic", lambda: now[0])
    return now


NOT_STREAMING = "jakarta is not streaming from surabaya; a switchover would lose writes"


def post(client: FakeClient, wait: float) -> dict[str, Any]:
    body = {"op": "failback"}
    return asyncio.run(databases._post_when_ready(client, "bank", body, wait, "failback"))  # type: ignore[arg-type]


def test_asks_again_until_the_target_streams(clock: list[float]) -> None:
    client = FakeClient([NOT_STREAMING, NOT_STREAMING, "jakarta is 4096 bytes behind surabaya"])
    assert post(client, 120.0)["id"] == "failback-1"
    assert client.posts == 4
    assert clock[0] == 1003.0


def test_gives_up_after_wait_naming_the_option(clock: list[float]) -> None:
    client = FakeClient([NOT_STREAMING] * 100)
    with pytest.raises(ConflictError, match=r"not streaming.*waited 5s; --wait"):
        post(client, 5.0)
    assert client.posts == 6


def test_no_wait_refuses_at_once(clock: list[float]) -> None:
    client = FakeClient([NOT_STREAMING])
    with pytest.raises(ConflictError, match="not streaming") as caught:
        post(client, 0.0)
    assert "--wait" not in str(caught.value)
    assert client.posts == 1


def test_other_refusals_are_not_waited_for(clock: list[float]) -> None:
    client = FakeClient(["jakarta is already the primary of bank; nothing to fail back"])
    with pytest.raises(ConflictError, match="already the primary"):
        post(client, 120.0)
    assert client.posts == 1


def _db(replication: str, sync: str | None, **roles: tuple[str, bool]) -> dict[str, Any]:
    return {
        "name": "bank",
        "replication": replication,
        "lease": {"holder": "jakarta", "sync_standby": sync},
        "sites": [
            {"site": site, "role": role, "writable": writable, "stale": False}
            for site, (role, writable) in roles.items()
        ],
    }


def test_up_waits_for_a_writable_primary_and_a_named_synchronous_standby() -> None:
    starting = _db("synchronous", None, jakarta=("starting", False), surabaya=("unknown", False))
    assert databases.serving_gaps([starting]) == [
        "bank: no writable primary yet (jakarta starting, surabaya unknown)"
    ]
    cloning = _db("synchronous", None, jakarta=("primary", True), surabaya=("starting", False))
    assert databases.serving_gaps([cloning]) == [
        "bank: primary in jakarta, no synchronous standby yet"
    ]
    serving = _db("synchronous", "surabaya", jakarta=("primary", True), surabaya=("standby", False))
    assert databases.serving_gaps([serving]) == []
    # Asynchronous: the primary alone serves; a stale report is not a primary.
    alone = _db("asynchronous", None, jakarta=("primary", True), surabaya=("starting", False))
    assert databases.serving_gaps([alone]) == []
    alone["sites"][0]["stale"] = True
    assert databases.serving_gaps([alone])[0].startswith("bank: no writable primary yet")
