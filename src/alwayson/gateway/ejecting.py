"""Passive health of backends: outlier ejection with timed re-admission, and slow start.

The rules, in the words of an operator:

- A backend is *ejected* (left out of the choice) after ``consecutive_5xx`` answers in a
  row that were 5xx, reset, broken or timed out, or after ``consecutive_connect_failures``
  failed connects in a row (default 1: a refused connect means nothing listens, so the
  next request would fail the same way).
- The first ejection lasts ``base_seconds``; each ejection that follows soon after the
  previous one lasts twice as long as it, up to ``max_seconds``. A backend that stayed
  healthy for as long as its last ejection starts again from ``base_seconds``.
- When its ejection ends the backend is back in rotation, but *slow started*: its weight
  ramps from ``slow_start_floor`` of its weight to all of it over ``slow_start_seconds``.
  A backend new in the route table ramps the same way, so a cold instance (empty caches,
  JIT, connection pools) is not handed its full share at once.
- Any answer that is not a failure resets the consecutive count.

Everything takes ``now`` (the gateway's coarse monotonic clock) as an argument, so tests
drive it with a fake clock. The state lives on each :class:`~alwayson.gateway.upstreams.
Upstream` (it outlives route table swaps); this module holds only the policy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alwayson.gateway.upstreams import Upstream

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    consecutive_5xx: int = 5
    consecutive_connect_failures: int = 1
    base_seconds: float = 5.0
    max_seconds: float = 300.0
    slow_start_seconds: float = 10.0
    slow_start_floor: float = 0.1

    def __post_init__(self) -> None:
        if self.consecutive_5xx < 1 or self.consecutive_connect_failures < 1:
            raise ValueError("ejection thresholds must be at least 1")
        if self.base_seconds < 0 or self.max_seconds < self.base_seconds:
            raise ValueError("ejection times must satisfy 0 <= base_seconds <= max_seconds")
        if self.slow_start_seconds < 0 or not 0 < self.slow_start_floor <= 1:
            raise ValueError("slow start needs seconds >= 0 and a floor in (0, 1]")

    # -- outcomes ------------------------------------------------------------------------

    def failed(self, upstream: Upstream, now: float) -> bool:
        """A 5xx, reset, broken or timed-out answer; True when this ejects the backend."""
        upstream.consecutive_failures += 1
        upstream.needs_reset = True
        if upstream.consecutive_failures >= self.consecutive_5xx:
            return self._eject(upstream, now, "consecutive failed answers")
        return False

    def connect_failed(self, upstream: Upstream, now: float) -> bool:
        """A connect that failed or timed out; True when this ejects the backend."""
        upstream.consecutive_connect_failures += 1
        upstream.needs_reset = True
        if upstream.consecutive_connect_failures >= self.consecutive_connect_failures:
            return self._eject(upstream, now, "failed connects")
        return False

    def succeeded(self, upstream: Upstream, now: float) -> None:
        """A good answer (anything but 5xx). The hot path calls this only when there is
        something to reset (``upstream.needs_reset``)."""
        upstream.consecutive_failures = 0
        upstream.consecutive_connect_failures = 0
        if upstream.ejections and now >= upstream.ejected_until + upstream.last_ejection_seconds:
            upstream.ejections = 0
        upstream.needs_reset = upstream.ejections > 0

    def _eject(self, upstream: Upstream, now: float, why: str) -> bool:
        if upstream.ejected_until > now:
            return False  # already out: requests in flight when it was ejected report late
        if upstream.ejections and now >= upstream.ejected_until + upstream.last_ejection_seconds:
            upstream.ejections = 0  # healthy long enough since the last one: start over
        seconds = min(self.max_seconds, self.base_seconds * 2**upstream.ejections)
        upstream.ejections += 1
        upstream.last_ejection_seconds = seconds
        upstream.ejected_until = now + seconds
        self.start_ramp(upstream, upstream.ejected_until)
        upstream.consecutive_failures = 0
        upstream.consecutive_connect_failures = 0
        upstream.needs_reset = True
        upstream.ejected_count += 1
        log.warning(
            "ejected backend %s for %.1f s (ejection %d in a row): %s",
            upstream.address,
            seconds,
            upstream.ejections,
            why,
        )
        return True

    # -- slow start ----------------------------------------------------------------------

    def start_ramp(self, upstream: Upstream, at: float) -> None:
        """The backend enters (or re-enters) rotation at ``at``: ramp its weight from there."""
        upstream.ramp_start = at
        upstream.ramp_until = at + self.slow_start_seconds

    def weight_factor(self, upstream: Upstream, now: float) -> float:
        """The share of its weight a backend gets now: 1 once its ramp is over."""
        ramp = self.slow_start_seconds
        elapsed = now - upstream.ramp_start
        if ramp <= 0 or elapsed >= ramp:
            return 1.0
        if elapsed <= 0:
            return self.slow_start_floor
        floor = self.slow_start_floor
        return floor + (1.0 - floor) * elapsed / ramp
