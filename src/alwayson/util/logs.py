"""How every long-lived alwayson process logs: one line per record on stdout (the
runtime sends it to the process's log file), UTC timestamps, and httpx's per-request
INFO lines left out (a line per scrape target every scrape interval, all day)."""

from __future__ import annotations

import logging
import sys
import time


def setup() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    logging.Formatter.converter = time.gmtime
    logging.getLogger("httpx").setLevel(logging.WARNING)


__all__ = ["setup"]
