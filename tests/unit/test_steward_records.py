"""The failover record's completion with the old primary's end of WAL (pure)."""

from __future__ import annotations

from typing import Any

from alwayson.data.failovers import with_wal_end
from alwayson.data.lsns import lsn_int, lsn_text


def record(epoch: int = 5, receive: str | None = "0/3000000") -> dict[str, Any]:
    return {
        "kind": "failover",
        "from": "jakarta",
        "epoch": epoch,
        "lag_at_fault": {"standby_receive_lsn": receive, "bytes_behind_last_report": 0},
    }


def test_lsns_read_and_write_both_halves() -> None:
    assert lsn_int("16/B374D848") == (0x16 << 32) + 0xB374D848
    assert lsn_text(lsn_int("16/B374D848")) == "16/B374D848"
    assert lsn_int(None) == 0 and lsn_int("") == 0


def test_the_old_primarys_end_of_wal_counts_what_the_standby_never_received() -> None:
    done = with_wal_end(record(), {"epoch": 4, "lsn": "0/3000400"})
    assert done is not None
    lag = done["lag_at_fault"]
    assert lag["old_primary_wal_end_lsn"] == "0/3000400"
    assert lag["wal_bytes_not_received"] == 0x400
    assert lag["bytes_behind_last_report"] == 0  # the rest of the record is kept


def test_an_end_of_wal_behind_what_the_standby_received_counts_nothing() -> None:
    done = with_wal_end(record(), {"epoch": 4, "lsn": "0/2FFFF00"})
    assert done is not None and done["lag_at_fault"]["wal_bytes_not_received"] == 0


def test_without_the_standbys_position_the_missing_bytes_are_unknown() -> None:
    done = with_wal_end(record(receive=None), {"epoch": 4, "lsn": "0/3000400"})
    assert done is not None and done["lag_at_fault"]["wal_bytes_not_received"] is None


def test_a_report_about_another_epoch_or_without_a_position_completes_nothing() -> None:
    assert with_wal_end(record(), {"epoch": 3, "lsn": "0/3000400"}) is None
    assert with_wal_end(record(), {"epoch": 4}) is None
    assert with_wal_end(record(), {}) is None
