"""``python -m alwayson.drills RUN_DIR``: run the drill described by RUN_DIR/context.json."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

from alwayson.drills.running import run_drill


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alwayson.drills")
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    logging.Formatter.converter = time.gmtime
    result = asyncio.run(run_drill(args.run_dir.resolve()))
    return 0 if result["status"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
