"""``python -m alwayson.entrypoints.drill RUN_DIR``: run the drill RUN_DIR/context.json
describes, its load sent by ``alwayson.loadgen``.

The controller starts this in its own session (``control.drilling``); the drill writes
``progress.json``, ``result.json`` and ``report.html`` to RUN_DIR and exits 0 when it
passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

from alwayson.drills.running import run_drill
from alwayson.entrypoints.drill_load import LoadgenForDrills


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alwayson.entrypoints.drill")
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    logging.Formatter.converter = time.gmtime
    result = asyncio.run(run_drill(args.run_dir.resolve(), LoadgenForDrills()))
    return 0 if result["status"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
