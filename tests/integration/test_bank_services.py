"""The digital bank's services as real processes, wired through a tiny in-process router.

Every service runs as ``python -m bank.<name>`` in ``examples/digital-bank`` on its own
loopback address, exactly as the platform runs it. ``ALWAYSON_GATEWAY`` points at
:class:`PrefixRouter`, an asyncio path-prefix router (``/kyc/...`` → the kyc process)
standing in for the platform's gateway. Every process started here is stopped by its pid in
a fixture finalizer, even when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

BANK = Path(__file__).resolve().parents[2] / "examples" / "digital-bank"
SERVICES = [
    "onboarding",
    "kyc",
    "customers",
    "accounts",
    "ledger",
    "transfers",
    "payments",
    "cards",
    "notifications",
    "auth",
    "audit",
    "fraud",
    "statements",
    "fx",
    "loans",
]
NET = f"127.201.{os.getpid() % 200 + 10}"  # this test run's own /24 on loopback
GOOD_NIK = "3171011508900001"  # Jakarta, man born 15 Aug 1990
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- processes


class Service:
    def __init__(self, name: str, host: str, port: int, proc: subprocess.Popen[bytes], log: Path):
        self.name = name
        self.host = host
        self.port = port
        self.proc = proc
        self.log = log
        self.url = f"http://{host}:{port}"

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


class Launcher:
    """Starts services as subprocesses and stops every one of them by pid."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[Service] = []

    def start(
        self, name: str, host: str, *, port: int | None = None, env: dict[str, str] | None = None
    ) -> Service:
        port = port or free_port(host)
        instance = f"{name}-test-{len(self.started) + 1}"
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOST": host,
            "PORT": str(port),
            "ALWAYSON_SITE": "jakarta",
            "ALWAYSON_SERVICE": name,
            "ALWAYSON_INSTANCE": instance,
            "ALWAYSON_VERSION": "1.0.0",
            "ALWAYSON_GATEWAY": "",
            **(env or {}),
        }
        log = self.logs / f"{instance}.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"bank.{name}"],
                cwd=BANK,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name, host, port, proc, log)
        self.started.append(service)
        return service

    def stop_all(self) -> None:
        running = [s for s in self.started if s.proc.poll() is None]
        for service in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(service.proc.pid, signal.SIGTERM)
        for service in running:
            try:
                service.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(service.proc.pid, signal.SIGKILL)
                service.proc.wait(timeout=5)


def healthy(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def wait_ready(services: list[Service], timeout: float = 15.0) -> float:
    """Poll /healthz of every service until all answer 200; return the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    waiting = list(services)
    while waiting:
        for service in list(waiting):
            if service.proc.poll() is not None:
                pytest.fail(
                    f"{service.name} exited {service.proc.returncode}:\n{service.log_tail()}"
                )
            if healthy(service.host, service.port):
                waiting.remove(service)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(s.name for s in waiting)
            pytest.fail(f"not ready after {timeout}s: {names}\n{waiting[0].log_tail()}")
        if waiting:
            time.sleep(0.01)
    return time.monotonic() - started


# --------------------------------------------------------------------------- the router


class PrefixRouter:
    """A tiny stand-in for the site gateway: routes ``/<prefix>/...`` to one upstream.

    It runs an asyncio server on its own event loop in a background thread, forwards with
    httpx, passes response headers (``x-served-by``) through, answers 404 for an unknown
    prefix and 502 for an unreachable upstream, and counts the requests it forwarded.
    """

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self.routes: dict[str, str] = {}
        self.hits: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    async def _start(self) -> None:
        self._client = httpx.AsyncClient(timeout=5.0)
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None and self._client is not None
        self._server.close()
        await self._client.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status, out_headers, out_body = await self._forward(method, target, headers, body)
                response = [f"HTTP/1.1 {status} X", f"content-length: {len(out_body)}"]
                response += [f"{k}: {v}" for k, v in out_headers.items()]
                writer.write(("\r\n".join(response) + "\r\n\r\n").encode() + out_body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _forward(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        assert self._client is not None
        prefix = target.split("?")[0].strip("/").split("/")[0]
        upstream = self.routes.get(prefix)
        if upstream is None:
            return 404, {"content-type": "application/json"}, b'{"error": "no route"}'
        forwarded = {k: v for k, v in headers.items() if k not in HOP_BY_HOP}
        try:
            answer = await self._client.request(
                method, upstream + target, headers=forwarded, content=body
            )
        except httpx.HTTPError as exc:
            error = json.dumps({"error": f"upstream unreachable: {exc!r}"}).encode()
            return 502, {"content-type": "application/json"}, error
        self.hits[prefix] += 1
        out = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        return answer.status_code, out, answer.content


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def router() -> Iterator[PrefixRouter]:
    router = PrefixRouter(f"{NET}.1")
    router.start()
    yield router
    router.stop()


@pytest.fixture(scope="module")
def bank(
    router: PrefixRouter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Service]]:
    """All 15 services, one instance each, calling each other through ``router``."""
    launcher = Launcher(tmp_path_factory.mktemp("bank-logs"))
    try:
        services = {
            name: launcher.start(name, f"{NET}.{index + 2}", env={"ALWAYSON_GATEWAY": router.url})
            for index, name in enumerate(SERVICES)
        }
        wait_ready(list(services.values()))
        for name, service in services.items():
            router.routes[name] = service.url
        yield services
    finally:
        launcher.stop_all()


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


@pytest.fixture
def gw(router: PrefixRouter, bank: dict[str, Service], http: httpx.Client) -> Any:
    """Call the bank through the router, like a client of the front door."""

    def request(method: str, path: str, **kwargs: Any) -> httpx.Response:
        return http.request(method, router.url + path, **kwargs)

    return request


def nik(serial: int, *, day: int = 15, month: int = 8, year: int = 90, female: bool = False) -> str:
    return f"317101{day + 40 * female:02d}{month:02d}{year:02d}{serial:04d}"


def register(gw: Any, serial: int, **overrides: str) -> httpx.Response:
    body = {
        "name": "Budi Santoso",
        "email": f"budi{serial}@example.co.id",
        "id_number": nik(serial),
        "city": "jakarta",
        **overrides,
    }
    response: httpx.Response = gw("POST", "/onboarding/register", json=body)
    return response


# --------------------------------------------------------------------------- basics


def test_every_service_is_healthy_metered_and_describes_itself(
    bank: dict[str, Service], http: httpx.Client
) -> None:
    for name, service in bank.items():
        health = http.get(service.url + "/healthz")
        assert health.status_code == 200, name
        assert health.json()["status"] == "ok"
        assert health.json()["instance"] == health.headers["x-served-by"]
        about = http.get(service.url + "/").json()
        assert about["service"] == name
        assert about["version"] == "1.0.0" and about["site"] == "jakarta"
        assert 2 <= len(about["endpoints"]) <= 5, about
        assert all(e.split(" ")[1].startswith(f"/{name}") for e in about["endpoints"]), about
        metrics = http.get(service.url + "/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert (
            f'bank_requests_total{{service="{name}",method="GET",route="/healthz",code="200"}}'
            in metrics.text
        )
        assert f'bank_request_duration_seconds_count{{service="{name}"' in metrics.text


def test_unknown_routes_methods_and_bodies(bank: dict[str, Service], http: httpx.Client) -> None:
    kyc = bank["kyc"].url
    missing = http.get(kyc + "/kyc/nothing/here")
    assert missing.status_code == 404 and missing.json()["service"] == "kyc"
    wrong = http.delete(kyc + "/kyc/checks")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    garbage = http.post(kyc + "/kyc/checks", content=b"{not json")
    assert garbage.status_code == 400 and "not valid JSON" in garbage.json()["error"]
    array = http.post(kyc + "/kyc/checks", json=[1, 2])
    assert array.status_code == 400 and array.json()["error"] == "the body must be a JSON object"
    huge = http.post(kyc + "/kyc/checks", content=b"x" * (2 * 1024 * 1024))
    assert huge.status_code == 413


@pytest.mark.parametrize(
    ("service", "path", "body", "field"),
    [
        ("kyc", "/kyc/checks", {"name": "Ani"}, "id_number"),
        (
            "customers",
            "/customers",
            {"name": "Ani", "email": "nope", "id_number": GOOD_NIK, "city": "jakarta"},
            "email",
        ),
        ("accounts", "/accounts", {"customer_id": "cus_1", "product": "gold"}, "product"),
        (
            "ledger",
            "/ledger/entries",
            {
                "description": "x",
                "postings": [{"account": "acc_a", "direction": "debit", "amount": -5}],
            },
            "postings",
        ),
        (
            "transfers",
            "/transfers",
            {"from_account": "acc_a", "to_account": "acc_a", "amount": 10},
            "to_account",
        ),
        (
            "payments",
            "/payments/bills",
            {"account_id": "acc_a", "biller": "pln", "customer_ref": "12", "amount": 50_000},
            "customer_ref",
        ),
        ("cards", "/cards", {"account_id": "acc_a", "kind": "platinum"}, "kind"),
        (
            "notifications",
            "/notifications",
            {"channel": "sms", "to": "0812", "template": "otp", "data": {"code": 1}},
            "to",
        ),
        ("auth", "/auth/credentials", {"customer_id": "cus_1", "password": "short"}, "password"),
        (
            "audit",
            "/audit/events",
            {"actor": "a", "action": "no spaces allowed", "subject": "s"},
            "action",
        ),
        ("fraud", "/fraud/score", {"account_id": "acc_a", "amount": "lots"}, "amount"),
        ("fx", "/fx/convert", {"from": "USD", "to": "USD", "amount": 100}, "to"),
        (
            "loans",
            "/loans/applications",
            {
                "customer_id": "c",
                "account_id": "acc_a",
                "amount": 5_000_000,
                "tenor_months": 7,
                "monthly_income": 9_000_000,
            },
            "tenor_months",
        ),
        ("onboarding", "/onboarding/register", {"name": "Ani", "email": "ani@x.id"}, "city"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    bank: dict[str, Service],
    http: httpx.Client,
    service: str,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    response = http.post(bank[service].url + path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["error"] == "invalid request" and error["service"] == service
    assert any(name.startswith(field) for name in error["fields"]), error


def test_statements_reject_a_bad_month(bank: dict[str, Service], http: httpx.Client) -> None:
    response = http.get(bank["statements"].url + "/statements/acc_x?month=2024-13")
    assert response.status_code == 400 and "month" in response.json()["fields"]


# --------------------------------------------------------------------------- services


def test_kyc_checks_the_nik_and_the_name(bank: dict[str, Service], http: httpx.Client) -> None:
    url = bank["kyc"].url + "/kyc/checks"
    ok = http.post(url, json={"name": "Siti Rahma", "id_number": nik(2, female=True)})
    assert ok.status_code == 201
    assert ok.json()["status"] == "approved" and ok.json()["sex"] == "female"
    assert ok.json()["birth_date"] == "1990-08-15"
    assert ok.json()["id_number_masked"] == "317101******0002"
    bad = http.post(url, json={"name": "R2-D2", "id_number": "9912345"}).json()
    assert bad["status"] == "rejected"
    assert any("16 digits" in r for r in bad["reasons"]) and any(
        "name" in r for r in bad["reasons"]
    )
    young = http.post(
        url, json={"name": "Adik", "id_number": nik(3, year=int(time.strftime("%y")) - 5)}
    )
    assert young.json()["status"] == "rejected" and "at least 17" in young.json()["reasons"][0]
    bad_date = http.post(url, json={"name": "Ani", "id_number": nik(4, day=31, month=2)}).json()
    assert bad_date["status"] == "rejected" and "birth date" in bad_date["reasons"][0]
    watched = http.post(url, json={"name": "Budi  Watchlist", "id_number": nik(5)}).json()
    assert watched["status"] == "review"
    again = http.get(bank["kyc"].url + f"/kyc/checks/{ok.json()['check_id']}")
    assert again.json() == ok.json()


def test_ledger_keeps_double_entry_books(bank: dict[str, Service], http: httpx.Client) -> None:
    url = bank["ledger"].url

    def entry(entry_id: str, debit: str, credit: str, amount: int) -> httpx.Response:
        return http.post(
            url + "/ledger/entries",
            json={
                "entry_id": entry_id,
                "description": "test",
                "currency": "IDR",
                "postings": [
                    {"account": debit, "direction": "debit", "amount": amount},
                    {"account": credit, "direction": "credit", "amount": amount},
                ],
            },
        )

    assert entry("t-deposit-1", "gl:cash:teller", "acc_ledgertest", 500_000).status_code == 201
    replay = entry("t-deposit-1", "gl:cash:teller", "acc_ledgertest", 500_000)
    assert replay.status_code == 200 and replay.json()["replayed"] is True
    assert entry("t-deposit-1", "gl:cash:teller", "acc_ledgertest", 1).status_code == 409
    overdraft = entry("t-spend-1", "acc_ledgertest", "gl:merchants", 600_000)
    assert overdraft.status_code == 409
    assert overdraft.json()["error"] == "insufficient funds"
    assert overdraft.json()["balance"] == 500_000
    assert entry("t-spend-2", "acc_ledgertest", "gl:merchants", 200_000).status_code == 201
    unbalanced = http.post(
        url + "/ledger/entries",
        json={
            "description": "x",
            "postings": [
                {"account": "acc_a", "direction": "debit", "amount": 5},
                {"account": "acc_b", "direction": "credit", "amount": 4},
            ],
        },
    )
    assert unbalanced.status_code == 400 and "does not balance" in unbalanced.json()["error"]
    balance = http.get(url + "/ledger/accounts/acc_ledgertest/balance").json()
    assert balance["balances"] == {"IDR": 300_000}
    postings = http.get(url + "/ledger/accounts/acc_ledgertest/postings").json()
    assert postings["opening"] == 0 and postings["closing"] == 300_000
    assert [p["direction"] for p in postings["postings"]] == ["credit", "debit"]
    trial = http.get(url + "/ledger/trial-balance").json()
    assert trial["balanced"] is True
    assert trial["currencies"]["IDR"]["debits"] == trial["currencies"]["IDR"]["credits"]


def test_fx_converts_exactly_with_a_spread(bank: dict[str, Service], http: httpx.Client) -> None:
    url = bank["fx"].url
    usd = http.post(url + "/fx/convert", json={"from": "USD", "to": "IDR", "amount": 10_000})
    assert usd.json()["converted"] == 1_616_875  # 100.00 USD x 16,250 x 0.995
    idr = http.post(url + "/fx/convert", json={"from": "IDR", "to": "USD", "amount": 1_000_000})
    assert idr.json()["converted"] == 6123  # 1,000,000 / (16,250 x 1.005), rounded down
    rates = http.get(url + "/fx/rates").json()
    assert rates["base"] == "IDR" and rates["rates"]["USD"]["mid"] == "16250"
    quote = http.post(url + "/fx/quotes", json={"from": "SGD", "to": "IDR", "amount": 100})
    assert quote.status_code == 201
    fetched = http.get(url + f"/fx/quotes/{quote.json()['quote_id']}").json()
    assert fetched["valid"] is True and fetched["converted"] == quote.json()["converted"]


def test_fraud_scores_with_reasons(bank: dict[str, Service], http: httpx.Client) -> None:
    url = bank["fraud"].url + "/fraud/score"
    small = http.post(url, json={"account_id": "acc_f1", "to_account": "acc_f2", "amount": 75_000})
    assert small.json()["decision"] == "allow"
    huge = http.post(
        url,
        json={
            "account_id": "acc_f1",
            "to_account": "acc_f3",
            "amount": 200_000_000,
            "country": "KP",
        },
    ).json()
    assert huge["decision"] == "block" and "very_large_amount" in huge["reasons"]
    assert http.get(bank["fraud"].url + "/fraud/rules").json()["block_at"] == 80


def test_auth_issues_and_verifies_tokens(bank: dict[str, Service], http: httpx.Client) -> None:
    url = bank["auth"].url
    created = http.post(
        url + "/auth/credentials", json={"customer_id": "cus_auth1", "password": "rahasia12345"}
    )
    assert created.status_code == 201
    wrong = http.post(url + "/auth/tokens", json={"customer_id": "cus_auth1", "password": "x"})
    assert wrong.status_code == 401
    token = http.post(
        url + "/auth/tokens", json={"customer_id": "cus_auth1", "password": "rahasia12345"}
    ).json()
    assert token["token_type"] == "Bearer"
    claims = http.post(url + "/auth/introspect", json={"token": token["access_token"]}).json()
    assert claims["active"] is True and claims["sub"] == "cus_auth1"
    forged = token["access_token"][:-2] + "xx"
    assert http.post(url + "/auth/introspect", json={"token": forged}).json() == {"active": False}


def test_cards_authorize_against_limits(bank: dict[str, Service], http: httpx.Client) -> None:
    url = bank["cards"].url
    card = http.post(url + "/cards", json={"account_id": "acc_c1", "daily_limit": 1_000_000})
    assert card.status_code == 201 and "pan" not in card.json()
    card_id = card.json()["card_id"]
    auth = f"{url}/cards/{card_id}/authorizations"
    assert (
        http.post(auth, json={"amount": 400_000, "merchant": "Toko"}).json()["response_code"]
        == "00"
    )
    assert (
        http.post(auth, json={"amount": 700_000, "merchant": "Toko"}).json()["response_code"]
        == "61"
    )
    assert (
        http.post(auth, json={"amount": 1, "merchant": "Casino", "mcc": "7995"}).json()[
            "response_code"
        ]
        == "57"
    )
    http.post(f"{url}/cards/{card_id}/block", json={"reason": "lost"})
    assert http.post(auth, json={"amount": 1, "merchant": "Toko"}).json()["response_code"] == "62"


def test_idempotency_key_replays_the_first_answer(
    bank: dict[str, Service], http: httpx.Client
) -> None:
    url = bank["customers"].url + "/customers"
    body = {"name": "Rina", "email": "rina@example.id", "id_number": nik(77), "city": "surabaya"}
    headers = {"Idempotency-Key": "create-rina-1"}
    first = http.post(url, json=body, headers=headers)
    second = http.post(url, json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json() and second.headers["idempotent-replay"] == "true"
    other = http.post(url, json={**body, "city": "medan"}, headers=headers)
    assert other.status_code == 422
    assert http.post(url, json=body).status_code == 409  # without the key: a duplicate NIK


# --------------------------------------------------------------------------- journeys


def test_registration_journey_crosses_five_services(gw: Any, router: PrefixRouter) -> None:
    before = router.hits.copy()
    response = register(gw, 101, name="Dewi Lestari", phone="+6281234567890")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "completed"
    assert body["customer_id"].startswith("cus_") and body["account_id"].startswith("acc_")
    assert len(body["account_number"]) == 10 and body["account_number"].startswith("101")
    assert body["kyc"]["status"] == "approved" and body["warnings"] == []
    hops = ["onboarding", "kyc", "customers", "accounts", "notifications", "audit"]
    assert set(body["served_by"]) == set(hops)
    for hop in hops:
        assert body["served_by"][hop].startswith(f"{hop}-test-"), body["served_by"]
    assert [s["hop"] for s in body["steps"]][:3] == ["kyc", "customers", "accounts"]
    crossed = router.hits - before
    assert all(crossed[hop] >= 1 for hop in hops), crossed

    customer = gw("GET", f"/customers/{body['customer_id']}").json()
    assert (
        customer["name"] == "Dewi Lestari" and customer["kyc_check_id"] == body["kyc"]["check_id"]
    )
    account = gw("GET", f"/accounts/{body['account_id']}").json()
    assert account["customer_id"] == body["customer_id"] and account["product"] == "savings"
    outbox = gw("GET", "/notifications?to=budi101@example.co.id").json()["notifications"]
    assert outbox[0]["template"] == "welcome" and body["account_number"] in outbox[0]["body"]
    trail = gw("GET", f"/audit/events?subject={body['customer_id']}").json()["events"]
    assert trail[0]["action"] == "customer.registered"
    assert trail[0]["request_id"] == response.headers["x-request-id"]
    assert gw("GET", "/audit/verify").json()["valid"] is True
    saved = gw("GET", f"/onboarding/registrations/{body['registration_id']}").json()
    assert saved["customer_id"] == body["customer_id"]


def test_registration_failures_name_the_hop(gw: Any) -> None:
    assert register(gw, 102).status_code == 201
    duplicate = register(gw, 102, email="other102@example.co.id")
    assert duplicate.status_code == 409
    assert duplicate.json()["hop"] == "customers"
    assert "id_number exists" in duplicate.json()["error"]
    rejected = register(gw, 103, id_number="1234")
    assert rejected.status_code == 422
    assert rejected.json()["hop"] == "kyc" and rejected.json()["kyc"]["status"] == "rejected"
    review = register(gw, 104, name="Sanctioned Person")
    assert review.status_code == 202 and review.json()["status"] == "pending_review"
    assert "customer_id" not in review.json()


def test_registration_with_a_hop_down_is_a_502(
    gw: Any, router: PrefixRouter, bank: dict[str, Service]
) -> None:
    dead = f"http://{NET}.250:{free_port(NET + '.250')}"
    router.routes["accounts"] = dead
    try:
        response = register(gw, 105)
    finally:
        router.routes["accounts"] = bank["accounts"].url
    assert response.status_code == 502, response.text
    error = response.json()
    assert error["hop"] == "accounts" and error["service"] == "onboarding"
    assert error["created"]["customer_id"].startswith("cus_")  # what to reconcile
    assert [s["hop"] for s in error["steps"]] == ["kyc", "customers", "accounts"]
    router.routes.pop("notifications")
    try:
        degraded = register(gw, 106)
    finally:
        router.routes["notifications"] = bank["notifications"].url
    assert degraded.status_code == 201  # the welcome email is best effort, after commit
    assert degraded.json()["warnings"][0]["hop"] == "notifications"


def test_money_moves_through_payments_transfers_and_statements(gw: Any) -> None:
    alice = register(gw, 201, email="alice@example.id").json()["account_id"]
    bob = register(gw, 202, email="bob@example.id").json()["account_id"]
    topup = gw("POST", "/payments/topups", json={"account_id": alice, "amount": 1_500_000})
    assert topup.status_code == 201 and set(topup.json()["served_by"]) == {"payments", "ledger"}
    transfer = gw(
        "POST",
        "/transfers",
        json={"from_account": alice, "to_account": bob, "amount": 250_000, "reference": "rent"},
    )
    assert transfer.status_code == 201, transfer.text
    assert transfer.json()["status"] == "completed"
    assert set(transfer.json()["served_by"]) == {"transfers", "fraud", "ledger"}
    too_much = gw(
        "POST", "/transfers", json={"from_account": alice, "to_account": bob, "amount": 5_000_000}
    )
    assert too_much.status_code == 409 and too_much.json()["hop"] == "ledger"
    bill = gw(
        "POST",
        "/payments/bills",
        json={
            "account_id": alice,
            "biller": "pln",
            "customer_ref": "12345678901",
            "amount": 100_000,
        },
    )
    assert bill.status_code == 201, bill.text
    balance = gw("GET", f"/accounts/{alice}/balance").json()
    assert balance["balance"] == 1_500_000 - 250_000 - 100_000 - 2_500
    assert gw("GET", f"/accounts/{bob}/balance").json()["balance"] == 250_000
    statement = gw("GET", f"/statements/{alice}").json()
    assert statement["money_in"] == 1_500_000 and statement["closing_balance"] == balance["balance"]
    assert [line["balance"] for line in statement["lines"]][-1] == balance["balance"]
    csv = gw("GET", f"/statements/{alice}/csv")
    assert csv.headers["content-type"].startswith("text/csv") and "rent" in csv.text
    assert gw("GET", "/ledger/trial-balance").json()["balanced"] is True

    loan = gw(
        "POST",
        "/loans/applications",
        json={
            "customer_id": "cus_x",
            "account_id": bob,
            "amount": 12_000_000,
            "tenor_months": 12,
            "monthly_income": 15_000_000,
        },
    ).json()
    assert loan["status"] == "approved" and loan["monthly_instalment"] == 1_052_203
    disbursed = gw("POST", f"/loans/applications/{loan['application_id']}/disburse")
    assert disbursed.json()["status"] == "disbursed"
    assert gw("GET", f"/accounts/{bob}/balance").json()["balance"] == 12_250_000


def test_fraud_blocks_a_transfer_to_a_blocklisted_account(gw: Any) -> None:
    gw("POST", "/fraud/blocklist", json={"account_id": "acc_mule", "reason": "mule"})
    blocked = gw(
        "POST",
        "/transfers",
        json={"from_account": "acc_payer", "to_account": "acc_mule", "amount": 10_000},
    )
    assert blocked.status_code == 422
    assert blocked.json()["hop"] == "fraud" and blocked.json()["transfer"]["status"] == "blocked"


# --------------------------------------------------------------------------- the server


def raw_exchange(host: str, port: int, payload: bytes, responses: int) -> list[bytes]:
    """Send raw bytes, read ``responses`` complete responses (by content-length)."""
    out: list[bytes] = []
    buffer = b""
    with socket.create_connection((host, port), timeout=3) as sock:
        sock.sendall(payload)
        while len(out) < responses:
            while b"\r\n\r\n" not in buffer:
                buffer += sock.recv(65536)
            head, _, rest = buffer.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(rest) < length:
                rest += sock.recv(65536)
            out.append(head + b"\r\n\r\n" + rest[:length])
            buffer = rest[length:]
    return out


@pytest.mark.parametrize("pure", [False, True], ids=["httptools", "pure-python"])
def test_keep_alive_pipelining_and_chunked_bodies(launcher: Launcher, pure: bool) -> None:
    env = {"BANK_PURE_PYTHON": "1"} if pure else {}
    fx = launcher.start("fx", f"{NET}.{240 + pure}", env=env)
    wait_ready([fx])
    chunked = b'{"from": "USD", "to": "IDR",' + b' "amount": 100}'
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunked), chunked)
    payload = (
        b"GET /fx/rates HTTP/1.1\r\nhost: t\r\n\r\n"
        b"POST /fx/convert HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
        + body
        + b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n"
        + b"NOT HTTP AT ALL\r\n\r\n"
    )
    first, second, third, fourth = raw_exchange(fx.host, fx.port, payload, 4)
    assert first.startswith(b"HTTP/1.1 200") and b'"base":"IDR"' in first
    assert second.startswith(b"HTTP/1.1 200") and b'"converted":16168' in second
    assert third.startswith(b"HTTP/1.1 200") and b"connection: keep-alive" in third
    assert fourth.startswith(b"HTTP/1.1 400") and b"connection: close" in fourth
    engine = "pure-python" if pure else "httptools"
    assert engine in fx.log.read_text()


def test_sigterm_finishes_in_flight_requests_and_exits_zero(launcher: Launcher) -> None:
    service = launcher.start("kyc", f"{NET}.242", env={"BANK_DEBUG": "1"})
    wait_ready([service])
    idle = socket.create_connection((service.host, service.port), timeout=3)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
    assert idle.recv(4096).startswith(b"HTTP/1.1 200")
    results: list[bytes] = []
    slow = threading.Thread(
        target=lambda: results.extend(
            raw_exchange(
                service.host,
                service.port,
                b"GET /_debug/sleep?s=0.6 HTTP/1.1\r\nhost: t\r\n\r\n",
                1,
            )
        )
    )
    slow.start()
    deadline = time.monotonic() + 5
    with httpx.Client(timeout=2) as client:
        while (
            'bank_requests_in_flight{service="kyc"} 2'
            not in client.get(service.url + "/metrics").text
        ):
            assert time.monotonic() < deadline, "the slow request never started"
            time.sleep(0.005)
    signalled = time.monotonic()
    os.kill(service.proc.pid, signal.SIGTERM)
    assert idle.recv(4096) == b""  # idle keep-alive connections are closed at once
    idle.close()
    assert service.proc.wait(timeout=3) == 0
    elapsed = time.monotonic() - signalled
    slow.join(timeout=3)
    assert results and results[0].startswith(b"HTTP/1.1 200")  # in flight: finished
    assert b"connection: close" in results[0]
    assert elapsed < 2.0, elapsed
    assert not healthy(service.host, service.port)
    assert "stopped" in service.log.read_text()


def test_sixty_instances_start_within_seconds(launcher: Launcher) -> None:
    """15 services x 2 sites x 2 replicas, all started at once, as ``alwayson up`` does."""
    started = time.monotonic()
    instances = [
        launcher.start(name, f"127.202.{index + 1}.{replica + 1}")
        for index, name in enumerate(SERVICES)
        for replica in range(4)
    ]
    took = wait_ready(instances, timeout=60)
    total = time.monotonic() - started
    print(f"\n60 instances ready in {total:.2f}s ({took:.2f}s after the last spawn)")
    assert total < 20


def test_no_service_logged_a_traceback(bank: dict[str, Service]) -> None:
    for service in bank.values():
        assert "Traceback" not in service.log_tail(), service.log_tail()


# --------------------------------------------------------------------------- the spec


def test_the_spec_declares_all_fifteen_services() -> None:
    loading = pytest.importorskip("alwayson.spec.loading")
    spec = loading.load_spec_file(BANK / "alwayson.yaml").spec
    assert [s.name for s in spec.services] == SERVICES
    assert [s.name for s in spec.workload_sites] == ["jakarta", "surabaya"]
    assert len({s.port for s in spec.services}) == 15
    for svc in spec.services:
        assert svc.run == f"python -m bank.{svc.name}"
        assert (BANK / "bank" / f"{svc.name}.py").is_file()
        assert svc.replicas == 2 and svc.health.http == "/healthz"
        assert {r.path for r in svc.routes if r.path} == {f"/{svc.name}"}
        assert {r.host for r in svc.routes if r.host} == {f"{svc.name}.bank.local"}
