"""The API's hygiene (issue 15): input errors are 4xx that name the field, durations are
bounded, the OpenAPI declares the error answers, /docs loads nothing from another site,
bodies are capped, and a spec is parsed off the event loop.

The app is the real one (``create_app``) over a controller on the in-memory store,
runtime and clock, called in-process through ``httpx.ASGITransport``.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.unit.controlparts import memory_controller

import alwayson.control.controller as controller_module
from alwayson.api.app import create_app
from alwayson.api.schemas import MAX_BODY_BYTES, ErrorOut
from alwayson.api.tokens import TokenBook
from alwayson.control.controller import Controller
from alwayson.observe.alerting import MAX_SILENCE, AlertBook
from alwayson.spec.loading import LoadedSpec

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SPEC = """\
platform: bank
sites:
  - name: jakarta
  - name: surabaya
  - name: witness
    witness: true
services:
  - name: accounts
    version: "1.0.0"
    run: python -m bank.accounts
    port: 8000
    replicas: 1
    health: {http: /healthz, interval: 1s, timeout: 500ms}
    routes: [{path: /accounts}]
"""


@dataclass
class Api:
    controller: Controller
    client: httpx.AsyncClient
    spec_path: Path

    async def silence(self, **body: Any) -> httpx.Response:
        return await self.client.post("/api/v1/silences", json=body, headers=AUTH)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    controller = await memory_controller(tmp_path)
    book = TokenBook(tmp_path / ".alwayson", TOKEN)
    transport = httpx.ASGITransport(app=create_app(controller, book))
    async with httpx.AsyncClient(transport=transport, base_url="http://controller") as client:
        yield Api(controller, client, tmp_path / "alwayson.yaml")


def error_of(response: httpx.Response) -> str:
    """The error message, from a body shaped as the OpenAPI declares (ErrorOut)."""
    return ErrorOut.model_validate(response.json()).error


# ------------------------------------------------------------------ silences


@pytest.mark.parametrize(
    "matchers",
    [{"1bad": "x"}, {"alertname": "~("}, {"alertname": ""}],
    ids=["not-a-label-name", "bad-regex", "matches-everything"],
)
async def test_a_bad_matcher_is_a_400_naming_the_field(api: Api, matchers: dict[str, str]) -> None:
    answer = await api.silence(matchers=matchers, duration="1h")
    assert answer.status_code == 400, answer.text
    assert error_of(answer).startswith("matchers: ")
    assert "label: value or label: ~regex" in error_of(answer)  # and how to write one


async def test_a_silence_of_no_time_is_a_400_naming_the_field(api: Api) -> None:
    answer = await api.silence(matchers={"alertname": "InstanceDown"}, duration="0s")
    assert answer.status_code == 400, answer.text
    assert error_of(answer) == "duration: '0s' is no time; ask for e.g. '2h'"


async def test_a_silence_of_a_hundred_years_is_refused_naming_the_bound(api: Api) -> None:
    century = await api.silence(matchers={"alertname": "InstanceDown"}, duration="36500d")
    assert century.status_code == 400, century.text
    assert error_of(century) == "duration: '36500d' is more than 30 days; ask for 30d or less"
    listed = await api.client.get("/api/v1/silences", headers=AUTH)
    assert listed.json() == []  # nothing was silenced

    longest = await api.silence(matchers={"alertname": "InstanceDown"}, duration="30d")
    assert longest.status_code == 200, longest.text
    made = longest.json()
    assert made["endsAt"] - made["startsAt"] == MAX_SILENCE == 30 * 86400


def test_the_alert_book_itself_refuses_a_silence_longer_than_the_bound() -> None:
    with pytest.raises(ValueError, match="at most 30 days"):
        AlertBook().add_silence({"alertname": "X"}, 100.0 + MAX_SILENCE + 1, "", "ops", 100.0)


async def test_a_malformed_body_is_a_422_naming_each_field(api: Api) -> None:
    answer = await api.client.post("/api/v1/silences", json={"duration": 5}, headers=AUTH)
    assert answer.status_code == 422
    assert error_of(answer) == "matchers: Field required; duration: Input should be a valid string"


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/query", {"expr": "up", "at": "nan"}),
        ("/api/v1/query_range", {"expr": "up", "step": "inf"}),
    ],
)
async def test_a_number_that_is_not_finite_is_a_422_not_a_traceback(
    api: Api, path: str, params: dict[str, str]
) -> None:
    answer = await api.client.get(path, params=params, headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert "(query): Input should be a finite number" in error_of(answer)


async def test_a_range_query_looks_back_at_most_a_year(api: Api) -> None:
    answer = await api.client.get(
        "/api/v1/query_range", params={"expr": "up", "since": "400d"}, headers=AUTH
    )
    assert answer.status_code == 400
    assert error_of(answer) == "since: '400d' is more than 366 days; ask for 366d or less"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"scenario": "instance-kill", "rate": "nan"}, "rate: expected a number, got 'nan'"),
        ({"scenario": "instance-kill", "duration": True}, "duration: expected a number, got True"),
        ({"scenario": "instance-kill", "site": ["a"]}, "site: expected a string, got ['a']"),
    ],
)
async def test_a_drill_with_a_bad_field_is_a_400_naming_it(
    api: Api, body: dict[str, Any], message: str
) -> None:
    answer = await api.client.post("/api/v1/drills", json=body, headers=AUTH)
    assert answer.status_code == 400
    assert error_of(answer) == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"op": "switchover"}, "to: a switchover request needs it"),
        ({"op": "failback", "to": "x"}, "to: not a field of a failback request"),
        ({"op": "backup", "verify": "yes"}, "verify: expected bool, got 'yes'"),
        ({"op": "drop"}, "op: unknown database request 'drop'"),
    ],
)
async def test_a_database_request_with_a_bad_field_is_a_400_naming_it(
    api: Api, body: dict[str, Any], message: str
) -> None:
    answer = await api.client.post("/api/v1/databases/ledger/requests", json=body, headers=AUTH)
    assert answer.status_code == 400
    assert error_of(answer).startswith(message)


# ------------------------------------------------------------------ OpenAPI and /docs


async def test_the_openapi_declares_the_error_answers_with_the_body_they_have(api: Api) -> None:
    document = (await api.client.get("/openapi.json")).json()
    error_body = {"$ref": "#/components/schemas/ErrorOut"}
    for path, method in [
        ("/api/v1/silences", "post"),
        ("/api/v1/silences/{ident}", "delete"),
        ("/api/v1/apply", "post"),
        ("/api/v1/drills", "post"),
    ]:
        answers = document["paths"][path][method]["responses"]
        for code in ("400", "401", "404", "409", "413", "422"):
            assert answers[code]["content"]["application/json"]["schema"] == error_body
    assert "error" in document["components"]["schemas"]["ErrorOut"]["required"]

    # ... and the app answers in that shape: a 401 (FastAPI's), a 404 (ours), a 409.
    assert "bearer token" in error_of(await api.client.get("/api/v1/status"))
    gone = await api.client.delete("/api/v1/silences/nope", headers=AUTH)
    assert gone.status_code == 404 and error_of(gone) == "no silence nope"
    made = (await api.silence(matchers={"alertname": "X"}, duration="1h")).json()
    first = await api.client.delete(f"/api/v1/silences/{made['id']}", headers=AUTH)
    again = await api.client.delete(f"/api/v1/silences/{made['id']}", headers=AUTH)
    assert first.status_code == 200 and again.status_code == 409
    assert "already expired" in error_of(again)


async def test_docs_load_nothing_from_another_site_and_keep_the_strict_policy(api: Api) -> None:
    docs = await api.client.get("/docs")
    assert docs.status_code == 200
    page = docs.text
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "<script" not in page.lower()
    policy = docs.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    assert "<code>/api/v1/silences</code>" in page  # the routes, from the OpenAPI document
    assert "at most 30d" in page
    for sheet in re.findall(r'href="(/static/[^"]+)"', page):
        assert (await api.client.get(sheet)).status_code == 200
    assert (await api.client.get("/redoc")).status_code == 404  # ReDoc also used a CDN


# ------------------------------------------------------------------ request bodies


@dataclass
class Chunks:
    """A 2 MiB body sent in 64 KiB chunks, counting how many the app pulled."""

    size: int = 2 * MAX_BODY_BYTES
    chunk: int = 64 * 1024
    pulled: int = 0

    @property
    def total(self) -> int:
        return self.size // self.chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.total):
            self.pulled += 1
            yield b" " * self.chunk


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "chunked"])
async def test_a_body_over_the_limit_is_413_before_it_is_read_whole(
    api: Api, announced: bool
) -> None:
    body = Chunks()
    headers = {**AUTH, "Content-Type": "application/json"}
    if announced:
        headers["Content-Length"] = str(body.size)
    answer = await api.client.post("/api/v1/apply", content=body, headers=headers)
    assert answer.status_code == 413, answer.text
    assert "larger than 1048576 bytes (1 MiB)" in error_of(answer)
    if announced:
        assert body.pulled == 0
    else:
        assert body.pulled == MAX_BODY_BYTES // body.chunk + 1  # stopped at the limit
    assert api.controller.spec_or_none() is None

    # A body of exactly the limit is read and answered.
    plan = json.dumps({"text": SPEC, "path": str(api.spec_path)}).encode()
    padded = plan + b" " * (MAX_BODY_BYTES - len(plan))  # JSON allows trailing blanks
    json_type = {**AUTH, "Content-Type": "application/json"}
    planned = await api.client.post("/api/v1/plan", content=padded, headers=json_type)
    assert planned.status_code == 200, planned.text


# ------------------------------------------------------------------ parsing off the loop


@pytest.mark.parametrize("route", ["plan", "apply"])
async def test_a_spec_is_parsed_off_the_event_loop(
    api: Api, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    """While a (slow) parse runs, the controller's loop still runs its callbacks: the
    parser asks the loop to answer and waits for it, which it can only get when it is
    not itself blocking the loop."""
    loop = asyncio.get_running_loop()
    parse: Callable[..., LoadedSpec] = controller_module.load_spec_text
    loop_ran: list[bool] = []

    def slow_parse(text: str, path: Path, **options: Any) -> LoadedSpec:
        answered = threading.Event()
        loop.call_soon_threadsafe(answered.set)
        loop_ran.append(answered.wait(timeout=3.0))
        return parse(text, path, **options)

    monkeypatch.setattr(controller_module, "load_spec_text", slow_parse)
    answer = await api.client.post(
        f"/api/v1/{route}", json={"text": SPEC, "path": str(api.spec_path)}, headers=AUTH
    )
    assert answer.status_code == 200, answer.text
    assert loop_ran == [True]
    assert any("accounts" in change for change in answer.json()["changes"])
