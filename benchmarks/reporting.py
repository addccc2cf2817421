"""What every benchmark's ``main()`` ends with: run, then save, print JSON or a table.

Run as scripts (``python benchmarks/failover.py``), the benchmarks import this module
from their own folder.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def finish(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    print_report: Callable[[dict[str, Any]], None],
    interrupted: str = "interrupted; the platforms were stopped",
) -> int:
    """Run the benchmark (SIGTERM ends it like Ctrl-C, so its cleanup runs), then write
    ``--save FILE`` if given and print ``--json`` or the human report. Returns the exit
    status: 0, or 130 when interrupted."""

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    try:
        report = run(args)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    if getattr(args, "save", None):
        Path(args.save).write_text(json.dumps(report, indent=2))
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0
