"""Durations written the way operators write them: ``500ms``, ``1s``, ``2m``, ``1h30m``."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
DURATION_PATTERN = r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"


def parse_duration(value: str | float | int) -> float:
    """Return seconds. Numbers are taken as seconds; strings need a unit."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '500ms', '2s'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    text = value.strip().replace(" ", "")
    if not text or not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(
            f"{value!r} is not a duration; write it like '500ms', '2s', '1m30s' or '1h'"
        )
    return sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: ``500ms``, ``1.5s``, ``2m``, ``1m30s``."""
    millis = seconds * 1000
    if seconds < 1 and millis == int(millis):
        return f"{int(millis)}ms"
    if seconds >= 60 and seconds == int(seconds):
        minutes, secs = divmod(int(seconds), 60)
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    return f"{seconds:.6f}".rstrip("0").rstrip(".") + "s"
