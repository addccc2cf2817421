"""CPU and memory of the platform's processes, as samples for the store.

Read through psutil here, the one place of the metrics layer that looks at processes
(``Runtime.usage()`` is to take its place, so a runtime that is not local can answer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import psutil

from alwayson.metrics.model import Sample


def process_samples(procs: Sequence[tuple[int, dict[str, str]]]) -> list[Sample]:
    """CPU seconds (user + system) and resident memory of each pid, with its labels.

    A pid that is gone (or not ours to read) yields nothing.
    """
    out = []
    for pid, labels in procs:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                cpu = proc.cpu_times()
                rss = proc.memory_info().rss
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        seconds = cpu.user + cpu.system
        if not math.isfinite(seconds):
            continue
        out.append(Sample("alwayson_process_cpu_seconds_total", dict(labels), seconds))
        out.append(Sample("alwayson_process_resident_memory_bytes", dict(labels), float(rss)))
    return out
