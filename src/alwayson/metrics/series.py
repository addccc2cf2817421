"""The embedded time-series store: raw samples for hours, rollups for weeks, on one disk.

``path`` is a directory (``None`` keeps everything in memory) holding ``series.db`` (SQLite:
the series catalogue and compressed *chunks*) and the head log; :mod:`alwayson.metrics.chunks`
describes both. Samples of the open block (the *head*) live in memory and in the log.

When a sample arrives in a newer block the head is *frozen* and a new segment begins.
Frozen heads are sealed into chunks a batch at a time by the following appends (so no
single append stalls for the whole store: ``batch`` series each), and a segment is deleted
once everything it holds is committed. In the same way, raw chunks older than
``retention.raw`` are rolled up into ``retention.rollup_step`` buckets that keep ``min,
max, sum, count, last`` (and the time of the last sample, so a rollup is exactly a 1-in-N
subsample of the raw series for ``last``), and rollups older than ``retention.rollup``
are deleted. ``compact(now, complete=True)`` does all pending work at once.

Reads stitch rollups (older) and raw samples (newer) per series; ``field`` says which part
of a bucket stands for it: ``last`` for counters and gauges read as values,
``min``/``max``/``sum``/``count`` for the ``*_over_time`` functions.

Staleness follows Prometheus: a batch that carries an ``up`` sample for a target
(``job`` and ``instance`` labels) is that target's complete scrape, so every series the
target exposed last time and not now gets a stale marker (``STALE``, a NaN with
Prometheus's bit pattern) and disappears from instant queries at once; a series nobody
marks (controller-made gauges) disappears after the query engine's lookback (5 minutes).
Append a target's whole scrape in one call.

Thread safety: every public method takes one lock, so appends may run in a worker thread
(``asyncio.to_thread``) while queries come from elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alwayson.metrics.chunks import (
    SCHEMA,
    SEGMENT,
    Buckets,
    HeadSeries,
    bucket_points,
    concat_buckets,
    disk_bytes,
    log_record,
    ms_of,
    pack_buckets,
    pack_raw,
    read_log,
    roll_up,
    unpack_buckets,
    unpack_raw,
)
from alwayson.metrics.model import (
    STALE,
    Field,
    Floats,
    Ints,
    Line,
    Matcher,
    Sample,
    SeriesData,
    is_stale,
    label_key,
    stale_mask,
)
from alwayson.spec.observing import Retention
from alwayson.util.errors import PermanentError, TemporaryError

_BLOCK_TARGET = 1800.0  # seconds of samples per chunk
_WINDOW_BUCKETS = 360  # rollup buckets per rollup chunk (6 h at the default 60 s step)


class SeriesStore:
    """Embedded TSDB. See the module docstring for layout, retention and staleness."""

    def __init__(
        self,
        path: Path | None,
        retention: Retention,
        *,
        sync_interval: float = 2.0,
        batch: int = 256,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.retention = retention
        self.step = float(retention.rollup_step)
        self.block = self.step * max(1, math.ceil(_BLOCK_TARGET / self.step))
        # A rollup chunk spans up to 6 h (and at most 1/28 of the rollup retention, since
        # rollups expire a whole chunk at a time).
        blocks = min(self.step * _WINDOW_BUCKETS, retention.rollup / 28) / self.block
        self.window = self.block * max(1, math.floor(blocks))
        self.sync_interval = sync_interval
        self.batch = batch
        self.path = path
        self._lock = threading.RLock()
        self._series: dict[int, HeadSeries] = {}
        self._by_key: dict[tuple[str, tuple[tuple[str, str], ...]], HeadSeries] = {}
        self._by_name: dict[str, dict[int, HeadSeries]] = {}
        self._targets: dict[tuple[str, str], set[int]] = {}
        self._frozen: dict[int, tuple[array[float], array[float]]] = {}
        self._next_id = 1
        self._open_block: float | None = None
        self._compact_at: float | None = None  # compaction owed, as of this time
        self._dropped = 0
        self._segments: list[Path] = []  # log segments of the head (the last one is written)
        self._sealing: list[Path] = []  # log segments of the frozen heads
        self._wal_fd: int | None = None
        self._synced_at = time.monotonic()
        try:
            if path is None:
                self._db = sqlite3.connect(":memory:", check_same_thread=False)
            else:
                path.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(path / "series.db", check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("PRAGMA journal_size_limit=8388608")
            self._db.executescript(SCHEMA)
            self._load()
            if path is not None:
                self._replay(sorted(path.glob("head-*.wal")))
        except sqlite3.DatabaseError as exc:
            raise PermanentError(f"cannot open the time-series store at {path}: {exc}") from exc

    # -- writing ---------------------------------------------------------------------------

    def append(self, samples: Iterable[Sample], at: float) -> None:
        """Add one scrape's samples, all at wall time ``at`` (seconds, kept to the ms).

        A sample not newer than its series' newest is dropped (counted in ``stats``).
        Then does one batch of owed sealing or compaction.
        """
        t = round(at * 1000.0) / 1000.0
        with self._lock:
            block = math.floor(t / self.block) * self.block
            if self._open_block is None:
                self._open_block = block
            elif block > self._open_block:
                self._rotate(block, t)
            ids = array("I")
            values = array("d")
            created: list[HeadSeries] = []
            seen: dict[tuple[str, str], set[int]] = {}
            complete: set[tuple[str, str]] = set()
            for sample in samples:
                series = self._find_or_make(sample, created)
                if t <= series.last_t:
                    self._dropped += 1
                    continue
                value = float(sample.value)
                series.add(t, value)
                series.scraped_stale = is_stale(value)
                ids.append(series.id)
                values.append(value)
                job = series.labels.get("job")
                instance = series.labels.get("instance")
                if job and instance:
                    seen.setdefault((job, instance), set()).add(series.id)
                    if series.name == "up":
                        complete.add((job, instance))
            for target in complete:
                now_seen = seen[target]
                for ident in self._targets.get(target, set()) - now_seen:
                    gone = self._series.get(ident)
                    if gone is not None and not gone.scraped_stale and gone.last_t < t:
                        gone.add(t, STALE)
                        gone.scraped_stale = True
                        ids.append(ident)
                        values.append(STALE)
                self._targets[target] = now_seen
            if created:
                self._db.executemany(
                    "INSERT INTO series (id, name, labels) VALUES (?, ?, ?)",
                    [(s.id, s.name, json.dumps(sorted(s.labels.items()))) for s in created],
                )
                self._db.commit()
            if ids:
                self._log(t, ids, values)
            self._work_some(t)

    def flush(self) -> None:
        """Make everything appended so far survive a machine crash (fsync the head log)."""
        with self._lock:
            if self._wal_fd is not None:
                os.fsync(self._wal_fd)
            self._synced_at = time.monotonic()

    def close(self) -> None:
        """Flush and release files. The head stays in the log for the next open."""
        with self._lock:
            if self._wal_fd is not None:
                self.flush()
                os.close(self._wal_fd)
                self._wal_fd = None
            self._db.close()

    def __enter__(self) -> SeriesStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def compact(self, now: float, *, complete: bool = False) -> None:
        """Apply retention as of ``now``: seal frozen heads, roll raw chunks older than
        ``retention.raw`` up, drop rollups older than ``retention.rollup``, forget series
        with no data left.

        By default this does one batch and leaves the rest to the following appends, so
        calling it from an event loop never stalls it; ``complete`` does everything now
        (tests, tools, before a backup).
        """
        with self._lock:
            if self._compact_at is None or now > self._compact_at:
                self._compact_at = now
            if not complete:
                self._work_some(now)
                return
            while self._frozen:
                self._seal_some(len(self._frozen))
            while self._compact_some(self._compact_at, 1024):
                pass
            self._expire(self._compact_at)
            self._compact_at = None

    # -- reading ---------------------------------------------------------------------------

    def select(
        self,
        name: str | None,
        matchers: Sequence[Matcher],
        start: float,
        end: float,
        *,
        field: Field = "last",
        keep_stale: bool = False,
    ) -> list[Line]:
        """Every matching series' samples in ``[start, end]``, stale markers left out
        unless ``keep_stale``. See ``fetch`` for ``field``."""
        lines = []
        for data in self.fetch(name, matchers, start, end, field=field):
            values = data.values
            times = data.times
            if not keep_stale:
                fresh = ~stale_mask(values)
                times, values = times[fresh], values[fresh]
            if len(times):
                labels = {"__name__": data.name, **data.labels}
                lines.append(Line(labels, list(zip(times.tolist(), values.tolist(), strict=True))))
        return lines

    def fetch(
        self,
        name: str | None,
        matchers: Sequence[Matcher],
        start: float,
        end: float,
        *,
        field: Field = "last",
    ) -> list[SeriesData]:
        """Like ``select`` but as arrays, stale markers included, for the query engine.

        Raw samples stand for every field (``count`` is 1 each). A rollup bucket stands
        for its ``field`` at the time of its last sample; ``count`` is the samples it
        rolled up, so a window's ``sum`` of ``count`` equals ``count_over_time`` on raw.
        """
        lo = round(start * 1000.0)
        hi = round(end * 1000.0)
        out = []
        with self._lock:
            for series in self._matching(name, matchers):
                times, values = self._read(series, lo, hi, field)
                if len(times):
                    out.append(SeriesData(series.name, dict(series.labels), times / 1000.0, values))
        return out

    def names(self) -> list[str]:
        """Every metric name held."""
        with self._lock:
            return sorted(n for n, members in self._by_name.items() if members)

    def stats(self) -> dict[str, Any]:
        """Series, samples (in memory, in raw chunks), rollup buckets, bytes on disk and
        an estimate of the memory the head and the index hold."""
        with self._lock:
            heads = [(s.times, s.values) for s in self._series.values()]
            heads += list(self._frozen.values())
            head = sum(len(times) for times, _ in heads)
            raw = self._db.execute("SELECT COUNT(*), COALESCE(SUM(n), 0) FROM raw_chunks")
            raw_chunks, raw_samples = raw.fetchone()
            roll = self._db.execute("SELECT COUNT(*), COALESCE(SUM(n), 0) FROM rollup_chunks")
            rollup_chunks, buckets = roll.fetchone()
            head_bytes = sum(
                (times.buffer_info()[1] + values.buffer_info()[1]) * 8 for times, values in heads
            )
            # A series' index entry (its object, labels, keys, empty arrays): 1.2 KB, as
            # tracemalloc measured for the sample bank's series.
            index_bytes = 1200 * len(self._series)
            disk = disk_bytes(self.path) if self.path is not None else 0
            return {
                "series": len(self._series),
                "samples": int(raw_samples) + head,
                "head_samples": head,
                "frozen_series": len(self._frozen),
                "raw_chunks": int(raw_chunks),
                "raw_samples": int(raw_samples) + head,
                "rollup_chunks": int(rollup_chunks),
                "rollup_buckets": int(buckets),
                "dropped_samples": self._dropped,
                "disk_bytes": disk,
                "memory_bytes": head_bytes + index_bytes,
                "block_seconds": self.block,
            }

    # -- internals: series --------------------------------------------------------------

    def _find_or_make(self, sample: Sample, created: list[HeadSeries]) -> HeadSeries:
        key = (sample.name, label_key(sample.labels))
        series = self._by_key.get(key)
        if series is None:
            labels = {k: v for k, v in key[1] if k != "__name__"}
            key = (sample.name, tuple(labels.items()))
            series = self._by_key.get(key)
            if series is None:
                series = HeadSeries(self._next_id, sample.name, labels)
                self._next_id += 1
                self._index(series, key)
                created.append(series)
        return series

    def _index(self, series: HeadSeries, key: tuple[str, tuple[tuple[str, str], ...]]) -> None:
        self._series[series.id] = series
        self._by_key[key] = series
        self._by_name.setdefault(series.name, {})[series.id] = series

    def _forget(self, series: HeadSeries) -> None:
        self._series.pop(series.id, None)
        self._by_key.pop((series.name, tuple(series.labels.items())), None)
        members = self._by_name.get(series.name)
        if members is not None:
            members.pop(series.id, None)
            if not members:
                del self._by_name[series.name]
        for seen in self._targets.values():
            seen.discard(series.id)

    def _matching(self, name: str | None, matchers: Sequence[Matcher]) -> Iterator[HeadSeries]:
        if name is not None:
            candidates: Iterable[HeadSeries] = list(self._by_name.get(name, {}).values())
        else:
            candidates = list(self._series.values())
        for series in candidates:
            if all(
                m.matches(series.name if m.label == "__name__" else series.labels.get(m.label, ""))
                for m in matchers
            ):
                yield series

    def _load(self) -> None:
        for ident, name, labels_json in self._db.execute("SELECT id, name, labels FROM series"):
            labels = {str(k): str(v) for k, v in json.loads(labels_json)}
            series = HeadSeries(int(ident), str(name), labels)
            self._index(series, (series.name, tuple(labels.items())))
            self._next_id = max(self._next_id, series.id + 1)
        for table in ("raw_chunks", "rollup_chunks"):
            rows = self._db.execute(f"SELECT series_id, MAX(last) FROM {table} GROUP BY series_id")
            for ident, last in rows:
                known = self._series.get(int(ident))
                if known is not None:
                    known.last_t = max(known.last_t, float(last))
        newest = max((s.last_t for s in self._series.values()), default=-math.inf)
        if newest > -math.inf:
            self._open_block = math.floor(newest / self.block) * self.block

    # -- internals: the head log ------------------------------------------------------------

    def _log(self, t: float, ids: array[int], values: array[float]) -> None:
        if self.path is None:
            return
        if self._wal_fd is None:
            assert self._open_block is not None
            segment = self.path / SEGMENT.format(round(self._open_block * 1000.0))
            self._wal_fd = os.open(segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if segment not in self._segments:
                self._segments.append(segment)
        try:
            os.write(self._wal_fd, log_record(t, ids, values))
        except OSError as exc:
            raise TemporaryError(f"cannot write the metrics head log: {exc}", 5.0) from exc
        if time.monotonic() - self._synced_at >= self.sync_interval:
            self.flush()

    def _replay(self, segments: list[Path]) -> None:
        for segment in segments:
            data = segment.read_bytes()
            records, good = read_log(data)
            for t, ids, values in records:
                for ident, value in zip(ids, values, strict=True):
                    series = self._series.get(ident)
                    if series is not None and t > series.last_t:  # not yet in a chunk
                        series.add(t, value)
                        series.scraped_stale = is_stale(value)
                block = math.floor(t / self.block) * self.block
                if self._open_block is None or block > self._open_block:
                    self._open_block = block
            if good < len(data):
                with open(segment, "r+b") as handle:
                    handle.truncate(good)
        self._segments = list(segments)

    # -- internals: sealing and compaction -----------------------------------------------

    def _rotate(self, block: float, now: float) -> None:
        """A sample of a newer block: freeze the head, start a new log segment."""
        if self._frozen:  # the last rotation's sealing is not done: finish it first
            self._seal_some(len(self._frozen))
        for series in self._series.values():
            if series.times:
                self._frozen[series.id] = (series.times, series.values)
                series.times = array("d")
                series.values = array("d")
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        self._sealing += self._segments
        self._segments = []
        self._open_block = block
        self._compact_at = now
        if not self._frozen:
            self._drop_sealed_segments()

    def _work_some(self, now: float) -> None:
        """One batch of owed work, so that no append stalls for the whole store."""
        if self._frozen:
            self._seal_some(self.batch)
        elif self._compact_at is not None and not self._compact_some(
            self._compact_at, max(1, self.batch // 2)
        ):
            self._expire(self._compact_at)
            self._compact_at = None

    def _seal_some(self, count: int) -> None:
        rows = []
        for ident in list(self._frozen)[:count]:
            times, values = self._frozen.pop(ident)
            ms = np.round(np.frombuffer(times, dtype=np.float64) * 1000.0).astype(np.int64)
            floats = np.frombuffer(values, dtype=np.float64)
            blob = pack_raw(ms, floats)
            rows.append((ident, times[0], times[-1], len(ms), blob))
        # A series' sample times only grow, so (series, first) never repeats.
        self._db.executemany(
            "INSERT INTO raw_chunks (series_id, first, last, n, data) VALUES (?, ?, ?, ?, ?)",
            rows,
        )
        self._db.commit()
        if not self._frozen:
            self._drop_sealed_segments()

    def _drop_sealed_segments(self) -> None:
        for segment in self._sealing:
            with contextlib.suppress(FileNotFoundError):
                segment.unlink()
        self._sealing = []

    def _compact_some(self, now: float, count: int) -> bool:
        """Roll up to ``count`` raw chunks older than ``retention.raw`` up; False when
        none was left."""
        aged = self._db.execute(
            "SELECT rowid, series_id, n, data FROM raw_chunks WHERE last < ? ORDER BY last LIMIT ?",
            (now - self.retention.raw, count),
        ).fetchall()
        if not aged:
            return False
        step_ms = round(self.step * 1000.0)
        window_ms = round(self.window * 1000.0)
        for rowid, ident, n, blob in sorted(aged, key=lambda row: (row[1], row[0])):
            ms, values = unpack_raw(blob, int(n))
            buckets = roll_up(ms, values, step_ms)
            windows = (buckets.ends() // step_ms * step_ms) // window_ms * window_ms
            for window in np.unique(windows):
                part = buckets.take(windows == window)
                self._merge_rollup(int(ident), int(window) / 1000.0, part, step_ms)
            self._db.execute("DELETE FROM raw_chunks WHERE rowid = ?", (rowid,))
        self._db.commit()
        return len(aged) == count

    def _expire(self, now: float) -> None:
        self._db.execute(
            "DELETE FROM rollup_chunks WHERE window + ? <= ?",
            (self.window, now - self.retention.rollup),
        )
        # A series silent for longer than every retention has nothing left to read.
        expired = now - self.retention.rollup - self.window - self.step
        gone = [
            s
            for s in self._series.values()
            if not s.times and s.id not in self._frozen and s.last_t < expired
        ]
        if gone:
            self._db.executemany("DELETE FROM series WHERE id = ?", [(s.id,) for s in gone])
            for series in gone:
                self._forget(series)
        self._db.commit()

    def _merge_rollup(self, ident: int, window: float, new: Buckets, step_ms: int) -> None:
        row = self._db.execute(
            "SELECT n, data FROM rollup_chunks WHERE series_id = ? AND window = ?",
            (ident, window),
        ).fetchone()
        if row is not None:
            old = unpack_buckets(row[1], int(row[0]))
            new = concat_buckets(old, new, step_ms)
        ends = new.ends()
        starts = np.where(new.cnt > 0, new.t, new.stale)
        self._db.execute(
            "INSERT OR REPLACE INTO rollup_chunks (series_id, window, first, last, n, data) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                ident,
                window,
                int(starts.min()) / 1000.0,
                int(ends.max()) / 1000.0,
                len(new),
                pack_buckets(new),
            ),
        )

    # -- internals: reading ----------------------------------------------------------------

    def _read(self, series: HeadSeries, lo: int, hi: int, field: Field) -> tuple[Ints, Floats]:
        memory = [self._frozen[series.id]] if series.id in self._frozen else []
        memory.append((series.times, series.values))
        mem_t = [ms_of(times) for times, _ in memory]
        mem_v = [np.frombuffer(values, dtype=np.float64).copy() for _, values in memory]
        parts_t: list[Ints] = []
        parts_v: list[Floats] = []
        earliest = next((int(t[0]) for t in mem_t if len(t)), None)
        covered = earliest is not None and earliest <= lo  # memory alone holds the range
        if not covered:
            for count, blob in self._db.execute(
                "SELECT n, data FROM raw_chunks WHERE series_id = ? AND last >= ? AND first <= ? "
                "ORDER BY first",
                (series.id, lo / 1000.0, hi / 1000.0),
            ):
                ms, values = unpack_raw(blob, int(count))
                parts_t.append(ms)
                parts_v.append(values)
        parts_t += mem_t
        parts_v += mem_v
        raw_t = np.concatenate(parts_t)
        raw_v = np.concatenate(parts_v)
        covered = covered or (len(raw_t) > 0 and raw_t[0] <= lo)
        keep = (raw_t >= lo) & (raw_t <= hi)
        raw_t, raw_v = raw_t[keep], raw_v[keep]
        if field == "count":
            raw_v = np.where(stale_mask(raw_v), raw_v, 1.0)
        if covered:  # rollups only hold what is older than every raw sample
            return raw_t, raw_v
        roll_t, roll_v = self._read_rollups(series, lo, hi, field)
        if len(roll_t) and len(raw_t):
            older = roll_t < raw_t[0]
            roll_t, roll_v = roll_t[older], roll_v[older]
        if not len(roll_t):
            return raw_t, raw_v
        return np.concatenate([roll_t, raw_t]), np.concatenate([roll_v, raw_v])

    def _read_rollups(
        self, series: HeadSeries, lo: int, hi: int, field: Field
    ) -> tuple[Ints, Floats]:
        times: list[Ints] = []
        values: list[Floats] = []
        for count, blob in self._db.execute(
            "SELECT n, data FROM rollup_chunks WHERE series_id = ? AND last >= ? AND first <= ? "
            "ORDER BY window",
            (series.id, lo / 1000.0, hi / 1000.0),
        ):
            t, v = bucket_points(unpack_buckets(blob, int(count)), field)
            times.append(t)
            values.append(v)
        if not times:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        t = np.concatenate(times)
        v = np.concatenate(values)
        keep = (t >= lo) & (t <= hi)
        return t[keep], v[keep]
