"""The embedded time-series store: matching, staleness, persistence, retention, rollups."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alwayson.metrics.model import STALE, Matcher, Sample, is_stale
from alwayson.metrics.series import SeriesStore
from alwayson.spec.observing import Retention

T0 = 1_800_000_000.0  # a multiple of 60 s and of the 30-minute block
HOUR = 3600.0
SHORT = Retention(raw=HOUR, rollup_step=60.0, rollup=3 * HOUR)
TARGET = {"job": "instances", "instance": "accounts@jakarta#1"}


def points(store: SeriesStore, name: str, start: float = 0.0, end: float = 4e9, **kw: str) -> list:
    lines = store.select(name, [Matcher(k, "=", v) for k, v in kw.items()], start, end)
    assert len(lines) <= 1, lines
    return lines[0].points if lines else []


def counter_store(path: Path | None, seconds: float, every: float = 5.0) -> SeriesStore:
    """``c_total`` growing by 1 a scrape, ``g`` = the scrape's index, every ``every`` s."""
    store = SeriesStore(path, SHORT)
    for i in range(int(seconds / every)):
        store.append(
            [Sample("c_total", {"job": "j"}, float(i)), Sample("g", {}, float(i))], T0 + i * every
        )
    return store


# -- selecting -----------------------------------------------------------------------------


def test_select_returns_matching_series_with_name_and_points() -> None:
    store = SeriesStore(None, SHORT)
    store.append([Sample("req_total", {"code": "200", "site": "a"}, 1.0)], T0)
    store.append([Sample("req_total", {"code": "200", "site": "a"}, 3.0)], T0 + 5)
    store.append([Sample("req_total", {"code": "500", "site": "b"}, 7.0)], T0 + 5)
    lines = store.select("req_total", [Matcher("code", "=", "200")], T0, T0 + 10)
    assert [(line.labels, line.points) for line in lines] == [
        ({"__name__": "req_total", "code": "200", "site": "a"}, [(T0, 1.0), (T0 + 5, 3.0)])
    ]


@pytest.mark.parametrize(
    ("matcher", "expected"),
    [
        (Matcher("code", "=", "200"), ["200"]),
        (Matcher("code", "!=", "200"), ["500", "502", None]),
        (Matcher("code", "=~", "5.."), ["500", "502"]),
        (Matcher("code", "=~", "5"), []),  # anchored: "5" matches no whole value
        (Matcher("code", "!~", "50."), ["200", None]),
        (Matcher("code", "=", ""), [None]),  # a missing label is ""
        (Matcher("code", "=~", "|2.*"), ["200", None]),
        (Matcher("__name__", "=~", "req_.*"), ["200", "500", "502", None]),
    ],
)
def test_matchers_follow_promql(matcher: Matcher, expected: list[str | None]) -> None:
    store = SeriesStore(None, SHORT)
    samples = [Sample("req_total", {"code": c}, 1.0) for c in ("200", "500", "502")]
    store.append([*samples, Sample("req_total", {"site": "a"}, 1.0)], T0)
    found = [line.labels.get("code") for line in store.select(None, [matcher], T0, T0)]
    assert sorted(found, key=str) == sorted(expected, key=str)


def test_a_bad_regular_expression_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid regular expression"):
        Matcher("code", "=~", "(")


def test_label_order_and_empty_values_do_not_make_new_series() -> None:
    store = SeriesStore(None, SHORT)
    store.append([Sample("m", {"a": "1", "b": "2", "c": ""}, 1.0)], T0)
    store.append([Sample("m", {"b": "2", "a": "1"}, 2.0)], T0 + 5)
    assert store.stats()["series"] == 1
    assert points(store, "m") == [(T0, 1.0), (T0 + 5, 2.0)]


def test_older_or_repeated_samples_are_dropped_and_counted() -> None:
    store = SeriesStore(None, SHORT)
    store.append([Sample("m", {}, 1.0)], T0 + 10)
    store.append([Sample("m", {}, 2.0)], T0 + 10)
    store.append([Sample("m", {}, 3.0)], T0 + 5)
    assert points(store, "m") == [(T0 + 10, 1.0)]
    assert store.stats()["dropped_samples"] == 2


def test_times_are_kept_to_the_millisecond() -> None:
    store = SeriesStore(None, SHORT)
    store.append([Sample("m", {}, 1.0)], T0 + 0.12349)
    assert points(store, "m") == [(T0 + 0.123, 1.0)]


# -- staleness -----------------------------------------------------------------------------


def scrape(*series: str, up: float = 1.0) -> list[Sample]:
    return [Sample("up", TARGET, up), *(Sample(name, TARGET, 1.0) for name in series)]


def test_a_series_missing_from_its_targets_scrape_gets_a_stale_marker() -> None:
    store = SeriesStore(None, SHORT)
    store.append(scrape("a", "b"), T0)
    store.append(scrape("a"), T0 + 5)
    stale = store.select("b", [], T0, T0 + 10, keep_stale=True)[0].points
    assert stale[0] == (T0, 1.0)
    assert stale[1][0] == T0 + 5 and is_stale(stale[1][1])
    assert points(store, "b") == [(T0, 1.0)]  # markers are left out unless asked for
    store.append(scrape("a"), T0 + 10)  # no second marker
    assert len(store.select("b", [], T0, T0 + 20, keep_stale=True)[0].points) == 2
    store.append(scrape("a", "b"), T0 + 15)  # it came back
    assert points(store, "b")[-1] == (T0 + 15, 1.0)


def test_a_failed_scrape_marks_every_series_of_the_target_stale() -> None:
    store = SeriesStore(None, SHORT)
    store.append(scrape("a", "b"), T0)
    store.append(
        [Sample("up", TARGET, 0.0), Sample("scrape_duration_seconds", TARGET, 2.0)], T0 + 5
    )
    for name in ("a", "b"):
        assert is_stale(store.select(name, [], T0, T0 + 5, keep_stale=True)[0].points[-1][1])
    assert points(store, "up")[-1] == (T0 + 5, 0.0)


def test_a_batch_without_the_targets_up_is_not_its_whole_scrape() -> None:
    store = SeriesStore(None, SHORT)
    store.append(scrape("a", "b"), T0)
    store.append([Sample("a", TARGET, 2.0)], T0 + 5)  # e.g. samples appended on their own
    assert store.select("b", [], T0, T0 + 5, keep_stale=True)[0].points == [(T0, 1.0)]


def test_series_without_a_scraped_target_are_never_marked() -> None:
    store = SeriesStore(None, SHORT)
    store.append([*scrape("a"), Sample("alwayson_site_up", {"site": "a"}, 1.0)], T0)
    store.append(scrape("a"), T0 + 5)
    assert store.select("alwayson_site_up", [], T0, T0 + 5, keep_stale=True)[0].points == [
        (T0, 1.0)
    ]


def test_the_stale_marker_is_prometheus_bit_pattern() -> None:
    assert math.isnan(STALE) and is_stale(STALE)
    assert not is_stale(math.nan) and not is_stale(1.0)


# -- persistence ---------------------------------------------------------------------------


def test_history_survives_close_and_reopen(tmp_path: Path) -> None:
    store = counter_store(tmp_path / "tsdb", 2 * HOUR)  # sealed chunks and a head
    before = points(store, "c_total")
    assert store.stats()["raw_chunks"] > 0 and store.stats()["head_samples"] > 0
    store.close()
    again = SeriesStore(tmp_path / "tsdb", SHORT)
    assert points(again, "c_total") == before
    again.append([Sample("c_total", {"job": "j"}, 9999.0)], T0 + 2 * HOUR)
    assert points(again, "c_total")[-1] == (T0 + 2 * HOUR, 9999.0)
    again.close()


def test_a_crash_loses_nothing_that_append_returned(tmp_path: Path) -> None:
    store = counter_store(tmp_path / "live", HOUR + 600)
    expected = points(store, "c_total")
    shutil.copytree(tmp_path / "live", tmp_path / "after-crash")  # files as a kill leaves them
    survivor = SeriesStore(tmp_path / "after-crash", SHORT)
    assert points(survivor, "c_total") == expected
    survivor.close()
    store.close()


def test_a_torn_last_record_is_ignored_and_cut(tmp_path: Path) -> None:
    store = counter_store(tmp_path / "tsdb", 60)
    expected = points(store, "g")
    store.close()
    (wal,) = (tmp_path / "tsdb").glob("head-*.wal")
    size = wal.stat().st_size
    with wal.open("ab") as handle:
        handle.write(b"\x05\x00\x00\x00garbage")
    again = SeriesStore(tmp_path / "tsdb", SHORT)
    assert points(again, "g") == expected
    assert wal.stat().st_size == size
    again.close()


def test_reopening_after_a_seal_does_not_duplicate_samples(tmp_path: Path) -> None:
    store = counter_store(tmp_path / "tsdb", 1800 + 5)  # the last append sealed block one
    store.close()
    again = SeriesStore(tmp_path / "tsdb", SHORT)
    times = [t for t, _ in points(again, "g")]
    assert times == sorted(set(times)) and len(times) == 361
    again.close()


def test_a_new_block_is_sealed_a_batch_per_append_and_reads_never_miss(tmp_path: Path) -> None:
    store = SeriesStore(tmp_path / "tsdb", SHORT, batch=1)
    names = ["a", "b", "c"]
    for i in range(3):
        store.append([Sample(n, {}, float(i)) for n in names], T0 + 600 * i)
    everything = {n: points(store, n) for n in names}
    assert len(list((tmp_path / "tsdb").glob("head-*.wal"))) == 1
    frozen = []
    for i in range(4):  # the first sample of block two freezes the head
        at = T0 + 1800 + 5 * i
        store.append([Sample(n, {}, 9.0) for n in names], at)
        frozen.append(store.stats()["frozen_series"])
        for n in names:
            everything[n].append((at, 9.0))
            assert points(store, n) == everything[n]
        if i == 0:
            copy = tmp_path / "crashed-while-sealing"
            shutil.copytree(tmp_path / "tsdb", copy)
    assert frozen == [2, 1, 0, 0]
    assert store.stats()["raw_chunks"] == 3
    assert len(list((tmp_path / "tsdb").glob("head-*.wal"))) == 1  # the sealed one is gone
    store.close()
    again = SeriesStore(copy, SHORT)
    for n in names:
        assert points(again, n) == everything[n][:4]
    again.close()


# -- retention and rollups -----------------------------------------------------------------


def test_old_raw_samples_become_rollup_buckets(tmp_path: Path) -> None:
    store = SeriesStore(tmp_path / "tsdb", SHORT)
    for i in range(24):  # two minutes of samples every 5 s: 0, 1, … 23
        store.append([Sample("g", {}, float(i))], T0 + 5 * i)
    store.append([Sample("g", {}, 100.0)], T0 + 2 * HOUR)  # seals the first block
    store.compact(T0 + 2 * HOUR, complete=True)
    stats = store.stats()
    assert stats["rollup_buckets"] == 2 and stats["raw_samples"] == 1
    first, second = T0 + 55, T0 + 115  # a bucket stands at its last sample's time
    assert points(store, "g", end=T0 + HOUR) == [(first, 11.0), (second, 23.0)]
    expected = {
        "min": [(first, 0.0), (second, 12.0)],
        "max": [(first, 11.0), (second, 23.0)],
        "sum": [(first, float(sum(range(12)))), (second, float(sum(range(12, 24))))],
        "count": [(first, 12.0), (second, 12.0)],
    }
    for field, want in expected.items():
        got = store.select("g", [], T0, T0 + HOUR, field=field)  # type: ignore[arg-type]
        assert got[0].points == want, field
    # a range across the seam reads rollups, then raw samples
    assert points(store, "g") == [(first, 11.0), (second, 23.0), (T0 + 2 * HOUR, 100.0)]
    store.close()
    again = SeriesStore(tmp_path / "tsdb", SHORT)
    assert points(again, "g") == [(first, 11.0), (second, 23.0), (T0 + 2 * HOUR, 100.0)]
    again.close()


def test_a_second_new_block_before_sealing_ends_loses_nothing() -> None:
    store = SeriesStore(None, SHORT, batch=1)
    names = ["a", "b", "c"]
    expected: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for i, at in enumerate([T0, T0 + 1800, T0 + 3600, T0 + 3605]):  # blocks 1, 2, 3, 3
        store.append([Sample(n, {}, float(i)) for n in names], at)
        for n in names:
            expected[n].append((at, float(i)))
    assert {n: points(store, n) for n in names} == expected
    store.compact(T0 + 3605, complete=True)  # seals all, and rolls the first hour's chunks up
    stats = store.stats()
    assert (stats["frozen_series"], stats["raw_chunks"], stats["rollup_buckets"]) == (0, 3, 3)
    assert {n: points(store, n) for n in names} == expected


def test_old_chunks_are_rolled_up_a_batch_per_append() -> None:
    store = SeriesStore(None, SHORT, batch=2)  # one raw chunk rolled up per append
    for i in range(4):
        store.append([Sample(n, {}, float(i)) for n in ("a", "b", "c")], T0 + 5 * i)
    store.append([Sample("a", {}, 4.0)], T0 + 1800)
    store.append([Sample("a", {}, 5.0)], T0 + 1805)  # all three heads are sealed by now
    before = {n: points(store, n, end=T0 + 60) for n in ("a", "b", "c")}
    chunks = []
    for i in range(5):
        store.append([Sample("a", {}, 6.0 + i)], T0 + HOUR + 1810 + 5 * i)
        chunks.append(store.stats()["raw_chunks"])
    # the first append seals a's second head (a 4th chunk), then one chunk an append
    assert chunks == [4, 3, 2, 1, 0]
    after = {n: points(store, n, end=T0 + 60) for n in ("a", "b", "c")}
    assert after == {n: [before[n][-1]] for n in ("a", "b", "c")}  # one bucket: the last


def test_compact_does_one_batch_unless_asked_for_all() -> None:
    store = SeriesStore(None, SHORT, batch=2)
    for n in ("a", "b", "c"):
        store.append([Sample(n, {}, 1.0)], T0)
    store.append([Sample("a", {}, 2.0)], T0 + 1800)
    store.append([Sample("a", {}, 3.0)], T0 + 1805)  # the three first heads are sealed
    assert store.stats()["raw_chunks"] == 3
    store.compact(T0 + 2 * HOUR)
    assert store.stats()["raw_chunks"] == 3 - 1  # one chunk: half a batch of two
    store.compact(T0 + 2 * HOUR, complete=True)
    assert store.stats()["raw_chunks"] == 0 and store.stats()["rollup_buckets"] == 3


def test_rollups_expire_and_then_the_series_is_forgotten() -> None:
    store = SeriesStore(None, SHORT)
    store.append([Sample("gone", {}, 1.0)], T0)
    store.append([Sample("kept", {}, 1.0)], T0 + 1800)  # seals the block holding "gone"
    store.compact(T0 + 2 * HOUR, complete=True)
    assert points(store, "gone") == [(T0, 1.0)]
    assert store.stats()["rollup_buckets"] == 1
    store.compact(T0 + 2 * HOUR + SHORT.rollup, complete=True)
    assert points(store, "gone") == []
    assert store.stats()["rollup_buckets"] == 0
    store.compact(T0 + 2 * HOUR + SHORT.rollup + 7 * HOUR, complete=True)
    assert "gone" not in store.names() and "kept" in store.names()


def test_rollup_min_and_max_skip_nan_like_min_over_time() -> None:
    store = SeriesStore(None, SHORT)
    for i, value in enumerate([3.0, math.nan, 1.0, math.nan]):
        store.append([Sample("n", {}, value)], T0 + 5 * i)
    store.append([Sample("n", {}, 0.0)], T0 + 1800)
    store.compact(T0 + 2 * HOUR, complete=True)
    assert store.select("n", [], T0, T0 + 60, field="min")[0].points == [(T0 + 15, 1.0)]
    assert store.select("n", [], T0, T0 + 60, field="max")[0].points == [(T0 + 15, 3.0)]
    assert math.isnan(store.select("n", [], T0, T0 + 60, field="sum")[0].points[0][1])
    assert math.isnan(store.select("n", [], T0, T0 + 60)[0].points[0][1])  # last was NaN


def test_a_bucket_that_ends_stale_keeps_its_values_and_the_marker() -> None:
    store = SeriesStore(None, SHORT)
    store.append(scrape("a"), T0)
    store.append(scrape("a"), T0 + 5)
    store.append(scrape(), T0 + 10)  # "a" vanished: marker at T0 + 10
    store.append(scrape(), T0 + 1800)
    store.compact(T0 + 2 * HOUR, complete=True)
    lines = store.select("a", [], T0, T0 + 60, keep_stale=True)
    assert lines[0].points[0] == (T0 + 5, 1.0)
    assert lines[0].points[1][0] == T0 + 10 and is_stale(lines[0].points[1][1])
    assert store.select("a", [], T0, T0 + 60, field="count")[0].points == [(T0 + 5, 2.0)]


def test_a_late_sample_joins_the_bucket_it_belongs_to() -> None:
    store = SeriesStore(None, SHORT)
    store.append([Sample("late", {}, 1.0)], T0 + 1790)
    store.append([Sample("other", {}, 1.0)], T0 + 1800)  # seals block one
    store.append([Sample("late", {}, 2.0)], T0 + 1795)  # a slow scrape of the old block
    store.append([Sample("other", {}, 1.0)], T0 + 3600)  # seals block two
    store.compact(T0 + 3 * HOUR, complete=True)
    assert store.select("late", [], T0, T0 + HOUR, field="count")[0].points == [(T0 + 1795, 2.0)]
    assert store.select("late", [], T0, T0 + HOUR, field="sum")[0].points == [(T0 + 1795, 3.0)]


def test_stats_report_size_on_disk_and_memory(tmp_path: Path) -> None:
    store = counter_store(tmp_path / "tsdb", 600)
    stats = store.stats()
    assert stats["series"] == 2 and stats["head_samples"] == 240
    assert stats["disk_bytes"] > 0 and stats["memory_bytes"] >= 240 * 16
    store.close()


@settings(max_examples=40, deadline=None)
@given(
    increments=st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=80),
    jitter=st.lists(st.integers(min_value=0, max_value=999), min_size=80, max_size=80),
)
def test_rollups_agree_with_the_raw_samples_they_replace(
    increments: list[int], jitter: list[int]
) -> None:
    raw = SeriesStore(None, SHORT)
    rolled = SeriesStore(None, SHORT)
    value = 0.0
    for i, step in enumerate(increments):
        value += step
        at = T0 + 7 * i + jitter[i] / 1000.0
        for store in (raw, rolled):
            store.append([Sample("c_total", {}, value)], at)
    rolled.append([Sample("flush", {}, 0.0)], T0 + 1800)
    rolled.compact(T0 + 1800 + HOUR, complete=True)
    assert rolled.stats()["raw_chunks"] == 0
    samples = raw.select("c_total", [], T0, T0 + HOUR)[0].points
    buckets: dict[int, list[tuple[float, float]]] = {}
    for t, v in samples:
        buckets.setdefault(int((t - T0) // 60), []).append((t, v))
    for field, of in {
        "last": lambda b: b[-1][1],
        "min": lambda b: min(v for _, v in b),
        "max": lambda b: max(v for _, v in b),
        "sum": lambda b: sum(v for _, v in b),
        "count": lambda b: float(len(b)),
    }.items():
        got = rolled.select("c_total", [], T0, T0 + HOUR, field=field)[0].points  # type: ignore[arg-type]
        assert got == [(b[-1][0], of(b)) for _, b in sorted(buckets.items())], field
