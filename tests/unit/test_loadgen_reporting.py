"""The load test's HTML report, and the built-in journeys against an in-memory bank."""

from __future__ import annotations

import base64
import contextlib
import json
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from alwayson.loadgen.clients import FakeTransport, Response, SentRequest
from alwayson.loadgen.journeys import (
    JOURNEYS,
    NIK_SPACE,
    Applicants,
    BankRegistration,
    JourneyError,
    load_journey,
    nik_for,
    resolve_journey,
)
from alwayson.loadgen.recording import Recorder
from alwayson.loadgen.reporting import render_html, verdict
from alwayson.loadgen.results import RunResult
from alwayson.loadgen.scenarios import Session, StepFailed
from alwayson.loadgen.thresholds import evaluate, parse_thresholds
from alwayson.util.clocks import ManualClock

WALL = 1_800_000_000
BANK = Path(__file__).resolve().parents[2] / "examples" / "digital-bank"


def recorded_run(seconds: int = 5, per_second: int = 20) -> RunResult:
    """A run on a manual clock: ``per_second`` iterations a second, every tenth failing,
    latency growing each second; one named step per iteration."""
    clock = ManualClock(start=100.0, wall_start=WALL)
    recorder = Recorder(clock)
    for second in range(seconds):
        for i in range(per_second):
            intended = clock.monotonic()
            recorder.started(intended)
            latency = 0.001 * (second + 1) + 0.0001 * i
            clock.advance(latency)
            ok = i % 10 != 0
            recorder.step("GET /accounts", intended, clock.monotonic(), None if ok else "http 503")
            recorder.finished(intended, clock.monotonic(), ok)
            clock.advance(1.0 / per_second - latency)
    recorder.dropped_one(clock.monotonic())
    return RunResult.from_recorder(recorder, clock.monotonic())


def empty_run() -> RunResult:
    clock = ManualClock(start=100.0, wall_start=WALL)
    return RunResult.from_recorder(Recorder(clock), clock.monotonic())


def images(page: str) -> list[bytes]:
    found = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [base64.b64decode(data) for data in found]


def test_the_report_is_one_page_with_its_plots_embedded_and_nothing_from_outside() -> None:
    result = recorded_run()
    outcomes = evaluate(parse_thresholds(["p99 < 1s", "error_rate < 1%"]), result)
    page = render_html(result, "accounts at 20/s", outcomes, {"model": "open: 20/s"})

    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:)""", page)
    assert "<script" not in page and "@import" not in page and "url(" not in page
    pngs = images(page)
    assert len(pngs) == 2 and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert "Throughput (iterations per second)" in page
    assert "Latency per second (p50, p99, max)" in page
    assert "<title>Load test: accounts at 20/s</title>" in page
    assert "open: 20/s" in page


def test_the_report_shows_percentiles_to_p99_99_steps_and_each_threshold_outcome() -> None:
    result = recorded_run()
    outcomes = evaluate(parse_thresholds(["p99 < 1s", "error_rate < 1%"]), result)
    page = render_html(result, "accounts", outcomes)

    for name in ("min", "p50", "p90", "p99", "p99.9", "p99.99", "max"):
        assert f"<th>{name}</th>" in page
    assert "GET /accounts" in page and "http 503: 10" in page  # every tenth of 100 failed
    assert "<code>p99 &lt; 1s</code>" in page and "<code>error_rate &lt; 1%</code>" in page
    assert page.count('<span class="met">pass</span>') == 1
    assert page.count('<span class="missed">FAIL</span>') == 1
    assert "1 of 2 threshold(s) failed: FAIL: error_rate &lt; 1% (actual: 10%)" in page
    assert 'class="verdict missed"' in page
    # the totals: 100 sent, 90 ok, 10 failed, 1 dropped
    assert "<td>100</td><td>90</td>" in page and "<td>10%</td>" in page


def test_verdict_names_the_totals_and_whether_every_threshold_held() -> None:
    result = recorded_run()
    passing = evaluate(parse_thresholds(["p99 < 1s"]), result)
    assert verdict(result, passing).startswith("100 iterations sent, 90 ok, 10 failed, 1 dropped")
    assert verdict(result, passing).endswith("All 1 threshold(s) passed.")
    assert verdict(result, []).endswith("No threshold was set.")
    assert 'class="verdict met"' in render_html(result, "x", passing)
    assert 'class="verdict unknown"' in render_html(result, "x", [])


def test_a_run_where_nothing_happened_says_no_data_and_plots_nothing() -> None:
    result = empty_run()
    outcomes = evaluate(parse_thresholds(["p99 < 200ms"]), result)
    page = render_html(result, "idle", outcomes)

    assert images(page) == []
    assert "No data: no iteration was started." in page
    assert page.count('<p class="nodata">no data</p>') == 3  # two plots, the step table
    assert "none (nothing finished)" in page  # the latency threshold has nothing to judge
    assert "http://" not in page and "https://" not in page


def test_a_report_survives_a_round_trip_through_json_and_plots_the_same() -> None:
    result = recorded_run()
    again = RunResult.from_json(json.loads(json.dumps(result.to_json())))
    assert len(images(render_html(again, "again"))) == 2


# ---------------------------------------------------------------- journeys


class Bank:
    """An in-memory front door: registers customers once per NIK and email, reads them."""

    def __init__(self, answer: Callable[[dict[str, Any]], Response] | None = None) -> None:
        self.seen: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.keys: list[str | None] = []
        self.answer = answer
        self.customers: dict[str, dict[str, Any]] = {}

    def __call__(self, request: SentRequest) -> Response:
        self.seen.append(f"{request.method} {request.path}")
        if request.method == "GET":
            found = request.path.rsplit("/", 1)[1]
            known = found in self.customers or any(
                c["account_id"] == found for c in self.customers.values()
            )
            return Response.with_json(200 if known else 404, {"id": found})
        body = json.loads(request.content)
        self.bodies.append(body)
        self.keys.append(request.headers.get("idempotency-key"))
        if self.answer is not None:
            return self.answer(body)
        taken = {(c["id_number"], c["email"]) for c in self.customers.values()}
        if any(body["id_number"] == n or body["email"] == e for n, e in taken):
            return Response.with_json(409, {"error": "already registered"})
        customer = f"cus_{len(self.customers)}"
        self.customers[customer] = {**body, "account_id": f"acc_{len(self.customers)}"}
        return Response.with_json(
            201,
            {
                "status": "completed",
                "customer_id": customer,
                "account_id": self.customers[customer]["account_id"],
            },
        )


async def run_journey(journey: Any, bank: Bank, times: int = 1) -> Recorder:
    clock = ManualClock(start=100.0, wall_start=WALL)
    recorder = Recorder(clock)
    client = FakeTransport(bank, "http://front-door")
    for _ in range(times):
        session = Session(client, recorder, clock, clock.monotonic())
        with contextlib.suppress(StepFailed):  # recorded under its step
            await journey(session)
    return recorder


async def test_bank_registration_posts_a_new_valid_customer_each_iteration() -> None:
    bank = Bank()
    journey = BankRegistration(applicants=Applicants(random.Random(7)))
    recorder = await run_journey(journey, bank, 50)

    assert bank.seen == ["POST /onboarding/register"] * 50
    assert recorder.steps["register"].ok == 50 and recorder.steps["register"].failed == 0
    assert len({b["id_number"] for b in bank.bodies}) == 50
    assert len({b["email"] for b in bank.bodies}) == 50
    assert {b["city"] for b in bank.bodies} == {"jakarta", "surabaya"}
    assert len(set(bank.keys)) == 50 and all(k and k.startswith("loadtest-") for k in bank.keys)
    assert set(bank.bodies[0]) == {"name", "email", "id_number", "city"}


def test_every_generated_nik_passes_the_sample_banks_own_kyc_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(BANK))
    for name in [m for m in sys.modules if m == "bank" or m.startswith("bank.")]:
        monkeypatch.delitem(sys.modules, name)  # put back afterwards
    try:
        from bank.kyc import check_name, check_nik  # the sample bank's own validator
    finally:
        for name in [m for m in sys.modules if m == "bank" or m.startswith("bank.")]:
            del sys.modules[name]  # the ones imported here are forgotten

    today = time.localtime()
    rng = random.Random(3)
    picks = [0, 1, NIK_SPACE - 1, *(rng.randrange(NIK_SPACE) for _ in range(500))]
    for index in picks:
        assert check_nik(nik_for(index), today)[0] == [], nik_for(index)
    assert len({nik_for(i) for i in range(0, NIK_SPACE, NIK_SPACE // 997)}) == 998
    applicants = Applicants(random.Random(5))
    for _ in range(100):
        assert check_name(applicants.next()["name"]) == []


def test_applicants_start_afresh_in_a_forked_process(monkeypatch: pytest.MonkeyPatch) -> None:
    applicants = Applicants(random.Random(11))
    first = [applicants.next()["id_number"] for _ in range(3)]
    assert int(first[1][-4:]) - int(first[0][-4:]) in (1, -9998)  # a counter, not random
    monkeypatch.setattr("os.getpid", lambda: 424242)
    after_fork = applicants.next()["id_number"]
    assert after_fork not in first and abs(int(after_fork) - int(first[2])) > 10


async def test_bank_registration_readback_reads_the_customer_and_account_it_made() -> None:
    bank = Bank()
    recorder = await run_journey(JOURNEYS["bank-registration-readback"], bank, 2)

    assert bank.seen == [
        "POST /onboarding/register",
        "GET /customers/cus_0",
        "GET /accounts/acc_0",
        "POST /onboarding/register",
        "GET /customers/cus_1",
        "GET /accounts/acc_1",
    ]
    assert {n: s.ok for n, s in recorder.steps.items()} == {
        "register": 2,
        "read customer": 2,
        "read account": 2,
    }


async def test_a_pending_review_or_a_body_without_ids_fails_the_iteration() -> None:
    pending = Bank(lambda body: Response.with_json(202, {"status": "pending_review"}))
    recorder = await run_journey(BankRegistration(), pending)
    assert recorder.steps["register"].errors == {"http 202": 1}

    hollow = Bank(lambda body: Response.with_json(201, {"status": "completed"}))
    with pytest.raises(Exception, match="201 without customer_id") as raised:
        await run_journey(BankRegistration(), hollow)
    assert type(raised.value).__name__ == "UnexpectedAnswer"


async def test_acknowledged_registrations_are_handed_to_the_caller() -> None:
    acknowledged: list[str] = []
    journey = BankRegistration(on_acknowledged=lambda b: acknowledged.append(b["customer_id"]))
    await run_journey(journey, Bank(), 3)
    assert acknowledged == ["cus_0", "cus_1", "cus_2"]


def test_an_unknown_journey_lists_the_known_ones() -> None:
    with pytest.raises(JourneyError) as raised:
        resolve_journey("bank-onboarding")
    message = str(raised.value)
    assert "unknown journey 'bank-onboarding'" in message
    assert "bank-registration, bank-registration-readback" in message
    assert "path/to/file.py:function" in message


def test_a_users_journey_loads_from_a_file_and_bad_references_say_why(tmp_path: Path) -> None:
    script = tmp_path / "mine.py"
    script.write_text(
        "async def browse(session):\n    await session.get('/')\n\ndef plain(session):\n    pass\n"
    )
    journey = resolve_journey(f"{script}:browse")
    assert journey.__name__ == "browse"  # type: ignore[attr-defined]

    for reference, expected in (
        (f"{script}:missing", "has no 'missing'; its functions: browse, plain"),
        (f"{script}:plain", "must be an async function taking a session"),
        (f"{tmp_path / 'nope.py'}:browse", "no such file"),
        ("no_such_module_here:browse", "cannot import no_such_module_here"),
        (f"{script}:", "write it as path/to/file.py:function"),
    ):
        with pytest.raises(JourneyError, match=re.escape(expected)):
            load_journey(reference)

    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('half written')\n")
    with pytest.raises(JourneyError, match="failed to load: RuntimeError: half written"):
        load_journey(f"{broken}:anything")
