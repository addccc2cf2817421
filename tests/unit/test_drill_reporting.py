"""The drill's HTML report: self-contained, escaped, honest about what was not measured."""

from __future__ import annotations

import base64
import copy
import html
import json
import re
from typing import Any

import markupsafe
import pytest

from alwayson.drills import measuring
from alwayson.drills.checks import WriteCheck
from alwayson.drills.faults import Fault
from alwayson.drills.model import RESULT_SCHEMA, Mark, judge
from alwayson.drills.reporting import (
    IDS_SHOWN,
    key_figures,
    render_report,
    timeline_plot,
    timeline_rows,
    utc_text,
)

WALL = 1_800_000_000.0
FAULT = WALL + 4.0
RECOVERED = WALL + 9.0
UNDONE = WALL + 19.0
END = WALL + 50.0
EVIL = "<script>alert('x')</script>"


def site_loss_log() -> measuring.OutcomeLog:
    """20 registrations a second for 50 s: fine, then the site dies at +4 s (connection
    errors until +9 s), slower on the other site until the undo, normal after it."""
    log = measuring.OutcomeLog()
    for i in range(int((END - WALL) * 20)):
        start = WALL + i / 20
        if FAULT <= start < RECOVERED:
            log.add(start, start + 0.002, False, "ConnectError")
        elif RECOVERED <= start < UNDONE:
            log.add(start, start + 0.040, True)
        else:
            log.add(start, start + 0.020 + (i % 7) / 1000, True)
    return log


def marks() -> list[dict[str, Any]]:
    found = [
        Mark(WALL, "phase", "preflight: site-loss: checking the platform"),
        Mark(WALL + 0.5, "load-start", "20 bank-registration/s via 127.0.0.1:8080"),
        Mark(WALL + 0.5, "phase", "baseline: 3 s of load before the fault"),
        Mark(FAULT, "fault", "site-loss jakarta (killed 14 processes)"),
        Mark(FAULT + 0.1, "phase", "fault: jakarta held 15 s"),
        Mark(FAULT + 1.2, "detected", "orders-db: surabaya saw the primary gone"),
        Mark(FAULT + 2.9, "promoted", "orders-db: surabaya promoted"),
        Mark(RECOVERED + 0.04, "recovered", "requests succeed again and keep succeeding"),
        Mark(UNDONE, "undone", "site-loss undone"),
        Mark(WALL + 30.0, "restored", "every instance ready again"),
        Mark(WALL + 33.0, "replicating", "orders-db: standby streaming again"),
        Mark(WALL + 34.0, "failback-start", "orders-db: switchover to jakarta (r-17)"),
        Mark(WALL + 38.0, "failback", "orders-db: primary back in jakarta"),
        Mark(END, "load-stop", "load stopped"),
    ]
    return [m.to_dict() for m in found]


def site_loss_result(**changes: Any) -> dict[str, Any]:
    """A passed site-loss drill, shaped as ``Drill.result()`` writes it."""
    log = site_loss_log()
    rto = measuring.rto(log, FAULT, UNDONE)
    gap, gap_at = measuring.longest_gap(log, FAULT, END)
    counts, after = log.counts(), log.counts(start=FAULT)
    writes = WriteCheck(
        checked=True,
        acknowledged=900,
        attempted=1000,
        stored=903,
        unacknowledged_stored=["c-9001", "c-9002", "c-9003"],
        ledger_checked=True,
    )
    fault = Fault("site-loss", "jakarta", "d-42", site="jakarta", note="killed 14 processes")
    fault.injected_at, fault.undone_at = FAULT, UNDONE
    objectives = [
        judge("rto", rto, 10.0, " s", "from the fault until requests succeed again"),
        judge("acknowledged writes lost", 0.0, 0.0, "", "RPO 0: every acknowledged write"),
        judge("ledger problems", 0.0, 0.0, "", "balances sum to 0"),
        judge("platform whole after undo", 0.0, 0.0, "", "every instance ready"),
    ]
    result: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "id": "d-42",
        "scenario": "site-loss",
        "summary": "Lose every process of a site under load; then restore it and fail back.",
        "site": "jakarta",
        "target": "jakarta",
        "actor": "auditor@bank.example",
        "status": "passed",
        "reason": "",
        "interrupted": False,
        "started_at": WALL,
        "finished_at": END + 2.0,
        "fault_at": FAULT,
        "undone_at": UNDONE,
        "healed_at": WALL + 38.0,
        "load": {
            "front_door": "127.0.0.1:8080",
            "journey": "bank-registration",
            "rate": 20.0,
            "hold": 15.0,
        },
        "measures": {
            "requests": counts["requests"],
            "ok": counts["ok"],
            "failed": counts["failed"],
            "failed_after_fault": after["failed"],
            "errors": log.errors(),
            "detect_seconds": 1.2,
            "rto_seconds": rto,
            "recovered_at": measuring.recovered_at(log, FAULT, UNDONE),
            "longest_gap_seconds": gap,
            "longest_gap_at": gap_at,
        },
        "writes": writes.to_dict(),
        "rpo": {
            "acknowledged_writes_lost": 0,
            "lag_at_fault": {"bytes_behind_last_report": 0, "wal_bytes_not_received": 0},
            "records": [
                {
                    "kind": "failover",
                    "database": "orders-db",
                    "to": "surabaya",
                    "from": "jakarta",
                    "fault_basis": "the old primary's last successful renewal",
                    "detect_seconds": 1.1,
                    "promote_seconds": 0.4,
                    "rto_seconds": 3.1,
                    "lag_at_fault": {"bytes_behind_last_report": 0, "wal_bytes_not_received": 0},
                }
            ],
        },
        "primaries": None,
        "objectives": [o.to_dict() for o in objectives],
        "faults": [fault.to_dict()],
        "timeline": marks(),
        "series": measuring.series(log, WALL, END),
        "series_origin": WALL,
        "notes": [],
    }
    result.update(changes)
    return result


def aborted_result() -> dict[str, Any]:
    """The load target failed in the baseline: no fault, nothing to judge (as
    ``Drill.result()`` writes it: longest gap and failures after the fault as 0)."""
    reason = (
        "the load target 127.0.0.1:8080 is failing before the fault (0 of 0 requests "
        "succeeded; none finished); no fault was injected."
    )
    return {
        "schema": RESULT_SCHEMA,
        "id": "d-43",
        "scenario": "instance-kill",
        "summary": "SIGKILL one instance of the journey's service.",
        "site": "jakarta",
        "target": None,
        "actor": "cron",
        "status": "aborted",
        "reason": reason,
        "interrupted": False,
        "started_at": WALL,
        "finished_at": WALL + 4.0,
        "fault_at": None,
        "undone_at": None,
        "healed_at": None,
        "load": {"front_door": "127.0.0.1:8080", "journey": "/healthz", "rate": 20.0, "hold": 5.0},
        "measures": {
            "requests": 0,
            "ok": 0,
            "failed": 0,
            "failed_after_fault": 0,
            "errors": {},
            "detect_seconds": None,
            "rto_seconds": None,
            "recovered_at": None,
            "longest_gap_seconds": 0.0,
            "longest_gap_at": 0.0,
        },
        "writes": WriteCheck().to_dict(),
        "rpo": {"acknowledged_writes_lost": None, "lag_at_fault": None, "records": []},
        "primaries": None,
        "objectives": [],
        "faults": [],
        "timeline": [
            Mark(WALL, "phase", "preflight: instance-kill: checking the platform").to_dict(),
            Mark(WALL + 3.5, "aborted", reason).to_dict(),
        ],
        "series": [],
        "series_origin": WALL,
        "notes": [],
    }


def failed_result() -> dict[str, Any]:
    """A partition that lost acknowledged writes, some ids hostile, and saw two writers."""
    lost = [EVIL, *(f"c-{n}" for n in range(119))]
    writes = WriteCheck(
        checked=True,
        acknowledged=700,
        attempted=800,
        stored=580,
        lost=lost,
        ledger_checked=True,
        ledger_problems=["IDR balances sum to 5000, not 0"],
    )
    objectives = [
        judge("rto", 4.2, 10.0, " s", "from the fault until requests succeed again"),
        judge("acknowledged writes lost", float(len(lost)), 0.0, "", "RPO 0"),
        judge("ledger problems", 1.0, 0.0, "", "balances sum to 0"),
        judge("writable primaries at once", 2.0, 1.0, "", "never two writers"),
    ]
    return site_loss_result(
        id="d-44",
        scenario="site-partition",
        status="failed",
        reason=f"acknowledged writes lost 120.0 > 0.0; label {EVIL}",
        writes=writes.to_dict(),
        rpo={"acknowledged_writes_lost": len(lost), "lag_at_fault": None, "records": []},
        primaries={
            "samples": 60,
            "max_writable": 2,
            "two_writers": [{"at": FAULT + 3.0, "database": "orders-db", "writable": ["a", "b"]}],
        },
        objectives=[o.to_dict() for o in objectives],
        notes=[f"note with {EVIL}"],
    )


def errored_result() -> dict[str, Any]:
    result = site_loss_result(
        id="d-45",
        status="error",
        reason="FaultError: undo site-loss jakarta: the controller did not answer",
        undone_at=None,
        healed_at=None,
    )
    result["faults"][0]["undone_at"] = None
    result["timeline"] = [m for m in result["timeline"] if m["kind"] != "undone"]
    result["timeline"].append(Mark(UNDONE, "error", result["reason"]).to_dict())
    return result


# -- helpers ---------------------------------------------------------------------------------


def images(page: str) -> list[bytes]:
    found = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [base64.b64decode(data) for data in found]


def table_rows(page: str, table_id: str) -> list[str]:
    """The text of each body row of ``<table id=table_id>`` (cells separated by ``|``)."""
    match = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S)
    assert match, f"no table {table_id}"
    rows = re.findall(r"<tr.*?</tr>", match.group(1), re.S)[1:]
    out = []
    for row in rows:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        text = [html.unescape(re.sub(r"<[^>]+>", " ", c)) for c in cells]
        out.append(" | ".join(" ".join(t.split()) for t in text))
    return out


def figure_row(page: str, name: str) -> str:
    rows = [r for r in table_rows(page, "figures") if r.startswith(name + " |")]
    assert len(rows) == 1, (name, rows)
    return rows[0]


def assert_self_contained(page: str) -> None:
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page)
    assert all(r.startswith(("data:", "#")) for r in refs), refs
    assert "<script" not in page and "@import" not in page and "url(" not in page
    assert "<link" not in page and "<iframe" not in page


# -- tests -----------------------------------------------------------------------------------


def test_a_passed_site_loss_is_one_self_contained_page_with_the_timeline_plotted() -> None:
    result = site_loss_result()
    assert len(result["series"]) == 100
    page = render_report(result)

    assert_self_contained(page)
    pngs = images(page)
    assert len(pngs) == 1 and pngs[0].startswith(b"\x89PNG\r\n\x1a\n")
    assert re.search(r'class="verdict met".*?<span class="word">PASSED</span>', page, re.S)
    assert "Every objective held (4 of 4)." in page
    assert 'id="interrupted"' not in page
    for text in ("d-42", "site-loss", "auditor@bank.example", "Lose every process of a site"):
        assert text in page
    assert utc_text(FAULT) == "2027-01-15T08:00:04.000Z"
    assert "2027-01-15T08:00:04.000Z" in page and "2027-01-15T08:00:19.000Z" in page


def test_every_objective_has_its_row_with_limit_measure_and_verdict() -> None:
    rows = table_rows(render_report(site_loss_result()), "objectives")

    assert len(rows) == 4
    assert rows[0].startswith("rto | ≤ 10 s | 5.0") and "| pass |" in rows[0]
    assert rows[1].startswith("acknowledged writes lost | ≤ 0 | 0 | pass")
    assert rows[3].startswith("platform whole after undo | yes | yes | pass")


def test_the_key_figures_come_from_the_result() -> None:
    page = render_report(site_loss_result())

    assert figure_row(page, "requests").startswith("requests | 1,000 | 900 succeeded")
    assert figure_row(page, "failed after the fault").startswith("failed after the fault | 100 |")
    assert figure_row(page, "time to detect").startswith("time to detect | 1.20 s")
    assert figure_row(page, "RTO").startswith("RTO | 5.04 s")
    # The gap counts from the last success before the fault (3.972 s) to 9.04 s.
    assert figure_row(page, "longest gap") == (
        "longest gap | 5.07 s | no request succeeded from 0.03 s before the fault"
    )
    assert figure_row(page, "acknowledged writes lost (RPO)").startswith(
        "acknowledged writes lost (RPO) | 0 | of 900 acknowledged"
    )
    assert figure_row(page, "stored but never acknowledged").startswith(
        "stored but never acknowledged | 3 |"
    )
    assert figure_row(page, "ledger problems").startswith("ledger problems | 0 |")
    assert figure_row(page, "replication lag at the fault (RPO)").startswith(
        "replication lag at the fault (RPO) | 0 WAL bytes not received"
    )
    assert figure_row(page, "writable primaries at once").startswith(
        "writable primaries at once | not measured | this scenario does not sample"
    )


def test_the_timeline_table_has_every_mark_with_phases_and_offsets_from_the_fault() -> None:
    result = site_loss_result()
    page = render_report(result)
    rows = table_rows(page, "timeline")

    assert len(rows) == len(result["timeline"])
    assert rows[0] == (
        f"{utc_text(WALL)} | -4.00 s | phase | preflight: site-loss: checking the platform"
    )
    assert f"{utc_text(FAULT)} | +0.00 s | fault | site-loss jakarta" in rows[3]
    assert "+1.20 s | detected |" in rows[5] and "+2.90 s | promoted |" in rows[6]
    assert rows[-1].endswith("| load-stop | load stopped")


def test_the_faults_and_the_database_records_are_listed() -> None:
    page = render_report(site_loss_result())

    faults = table_rows(page, "faults")
    assert faults == [
        f"site-loss | jakarta | {utc_text(FAULT)} | {utc_text(UNDONE)} | 15.00 s | "
        "killed 14 processes"
    ]
    records = table_rows(page, "records")
    assert len(records) == 1
    assert records[0].startswith("orders-db | failover | surabaya | jakarta | 1.10 s | 0.40 s")
    assert "ConnectError" in " ".join(table_rows(page, "errors"))


def test_a_failed_drill_lists_the_lost_ids_escaped_and_flags_what_broke() -> None:
    page = render_report(failed_result())

    assert_self_contained(page)
    assert EVIL not in page and "<script" not in page
    escaped = str(markupsafe.escape(EVIL))
    assert page.count(escaped) >= 3  # in the ids, the reason and the notes, as text
    assert re.search(r'class="verdict missed".*?<span class="word">FAILED</span>', page, re.S)
    lost = re.search(r'<p class="ids" id="lost">(.*?)</p>', page, re.S)
    assert lost
    shown = html.unescape(lost.group(1)).split(", ")
    assert len(shown) == IDS_SHOWN and shown[0] == EVIL and shown[-1] == "c-48"
    assert "Acknowledged writes lost (120)" in page and "the first 50 of 120" in page
    assert "IDR balances sum to 5000, not 0" in page
    rows = table_rows(page, "objectives")
    assert len(rows) == 4 and sum("| FAIL |" in r for r in rows) == 3
    assert figure_row(page, "writable primaries at once").startswith(
        "writable primaries at once | 2 | highest count over 60 samples; two writers first seen"
    )
    assert '<span class="alarm">120</span>' in page


def test_an_aborted_drill_without_a_fault_renders_and_claims_nothing() -> None:
    page = render_report(aborted_result())

    assert_self_contained(page)
    assert re.search(r'class="verdict stopped".*?<span class="word">ABORTED</span>', page, re.S)
    assert "is failing before the fault" in page
    assert images(page) == [] and "no request finished, so there is nothing to plot" in page
    assert "No objective was judged: no fault was injected." in page
    assert 'id="objectives"' not in page and 'id="faults"' not in page
    # Drill.result() writes 0 for these when no fault was injected: they measured nothing.
    for name in ("failed after the fault", "time to detect", "RTO", "longest gap"):
        assert figure_row(page, name) == f"{name} | not measured | no fault was injected"
    assert figure_row(page, "acknowledged writes lost (RPO)").startswith(
        "acknowledged writes lost (RPO) | not measured |"
    )
    timeline = table_rows(page, "timeline")  # offsets from the drill's start
    assert [r.split(" | ")[1:3] for r in timeline] == [["+0.00 s", "phase"], ["+3.50 s", "aborted"]]
    assert "<th>from the start</th>" in page


def test_an_errored_drill_shows_the_fault_it_could_not_undo() -> None:
    page = render_report(errored_result())

    assert re.search(r'class="verdict missed".*?<span class="word">ERROR</span>', page, re.S)
    assert "FaultError: undo site-loss jakarta" in page
    assert table_rows(page, "faults")[0].split(" | ")[3] == "NOT UNDONE"
    assert len(images(page)) == 1  # the fault window runs to the end of the plot


def test_an_interrupted_drill_says_its_figures_are_partial() -> None:
    result = site_loss_result(
        status="aborted",
        reason="interrupted (Ctrl-C): faults undone, partial result",
        interrupted=True,
        objectives=[],
    )
    page = render_report(result)

    assert 'id="interrupted"' in page and "they are partial" in page
    assert '<span class="word">ABORTED</span>' in page


@pytest.mark.parametrize(
    "result",
    [
        {},
        {"status": "passed"},
        {"status": "failed", "objectives": [{"name": "rto"}], "series": [{"t": 0}]},
        {"measures": None, "writes": [], "rpo": "x", "timeline": [None, {"at": "bad"}]},
        {"series": [{"t": 0, "requests": 3, "failed": 3, "success_rate": 0.0}], "series_origin": 1},
    ],
)
def test_a_partial_or_malformed_result_still_renders(result: dict[str, Any]) -> None:
    page = render_report(result)

    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert_self_contained(page)
    assert "How each figure is measured" in page


def test_unmeasured_figures_are_never_shown_as_zero() -> None:
    result = site_loss_result()
    result["measures"]["detect_seconds"] = None
    result["measures"]["rto_seconds"] = None
    result["rpo"] = {"acknowledged_writes_lost": None, "lag_at_fault": None, "records": []}
    result["writes"] = WriteCheck(note="write check failed: jakarta: refused").to_dict()

    figures = {f.name: f for f in key_figures(result)}

    for name in (
        "time to detect",
        "RTO",
        "acknowledged writes lost (RPO)",
        "stored but never acknowledged",
        "ledger problems",
        "replication lag at the fault (RPO)",
    ):
        assert figures[name].value is None, name
        assert figures[name].hint, name
    assert figures["acknowledged writes lost (RPO)"].hint == "write check failed: jakarta: refused"
    assert "keep succeeding" in figures["RTO"].hint
    page = render_report(result)
    assert figure_row(page, "RTO").startswith("RTO | not measured |")


def test_the_plot_leaves_out_phases_and_survives_json() -> None:
    result = site_loss_result()
    again = json.loads(json.dumps(result))
    assert render_report(again) == render_report(result)

    with_phases = timeline_plot(result)
    result_without = copy.deepcopy(result)
    result_without["timeline"] = [m for m in result["timeline"] if m["kind"] != "phase"]
    assert with_phases == timeline_plot(result_without)  # phase marks draw nothing
    result_without["timeline"] = []
    assert timeline_plot(result_without) != with_phases  # the other marks are drawn
    assert [r.kind for r in timeline_rows(result)].count("phase") == 3
