"""Where a stopped primary's WAL ends on disk (its newest timeline, then pg_waldump)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from alwayson.data.engines import Engine, EngineError
from alwayson.data.lsns import lsn_int
from alwayson.util.clocks import Clock

log = logging.getLogger("alwayson.agent")


def newest_timeline(pg_wal: Path, timeline: int, redo: str) -> tuple[int, str]:
    """The newest timeline a data directory's WAL reaches and where to start reading it:
    ``redo`` when the last checkpoint is on it, else where it branched off (the last line
    of its ``.history`` file: ``<parent>\t<switch LSN>\t<reason>``)."""
    newest, start = timeline, redo
    for history in pg_wal.glob("*.history"):
        number = int(history.name[:8], 16)
        if number <= newest:
            continue
        lines = [
            line.split()
            for line in history.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        if lines and len(lines[-1]) >= 2:
            newest, start = number, max(redo, lines[-1][1], key=lsn_int)
    return newest, start


async def end_of_wal(engine: Engine, data: Path, epoch: int, clock: Clock) -> dict[str, Any] | None:
    """Where this stopped primary's WAL ends on disk: every commit it acknowledged is
    before it (a commit is acknowledged only once flushed). pg_waldump reads the
    newest timeline from the last checkpoint's redo point (or from where that timeline
    began, when the checkpoint is older) until the first invalid record."""
    try:
        control = await engine.controldata(data)
        redo = control.get("Latest checkpoint's REDO location", "")
        timeline = int(control.get("Latest checkpoint's TimeLineID", "1") or 1)
        timeline, start = newest_timeline(data / "pg_wal", timeline, redo)
        await engine.run(
            "pg_waldump",
            "--quiet",
            "--path",
            str(data / "pg_wal"),
            "--start",
            start,
            "--timeline",
            str(timeline),
            timeout=30,
        )
    except OSError as exc:
        log.warning("%s: end of WAL not found: %s", data, exc)
    except EngineError as exc:
        # "error in WAL record at 0/1480368: invalid record length at 0/14803E0: ..."
        text = str(exc)
        found = re.findall(r"(?:at|LSN) ([0-9A-F]+/[0-9A-F]+)", text)
        if "error in WAL record" in text and found:
            return {"epoch": epoch, "lsn": found[-1], "at": clock.wall()}
        log.warning("%s: end of WAL not found: %s", data, text[-300:])
    return None
