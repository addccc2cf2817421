"""Restart backoff after crashes: exponential, capped, reset after a stable run."""

from __future__ import annotations

from dataclasses import dataclass

BASE_DELAY = 0.5
MAX_DELAY = 30.0
STABLE_AFTER = 10.0


def backoff_delay(failures: int, base: float = BASE_DELAY, cap: float = MAX_DELAY) -> float:
    """Delay before restart number ``failures`` (1 = first crash → ``base``)."""
    if failures <= 0:
        return 0.0
    # The exponent is bounded first: 2**1024 does not fit a float.
    return float(min(cap, base * 2 ** min(failures - 1, 32)))


@dataclass
class CrashRecord:
    failures: int = 0
    next_start_at: float = 0.0
    last_reason: str = ""
    last_exit_code: int | None = None
    total_restarts: int = 0
    delay: float = 0.0

    def crashed(self, now: float, reason: str, exit_code: int | None, ran_for: float) -> float:
        """Record a crash at ``now``; returns the delay before the next start."""
        if ran_for >= STABLE_AFTER:
            self.failures = 0
        self.failures += 1
        self.total_restarts += 1
        self.last_reason = reason
        self.last_exit_code = exit_code
        self.delay = backoff_delay(self.failures)
        self.next_start_at = now + self.delay
        return self.delay
