"""When a failed upstream attempt may be tried again: one pure function.

The rules, in the words of an operator:

- A request that never reached a backend (the connect failed) may be tried again, whatever
  its method: nothing can have happened twice. It goes to a backend it has not tried yet,
  as long as the route has one (a backend with a weight above zero; for a pinned request,
  of its track or the route's), at most :data:`MAX_CONNECT_RETRIES` times; a request with
  no backend left to try gets one more connect all the same (to the only backend of a
  route, say) unless it had one already. So when two instances die at once, a request
  that meets the first, then the second, still reaches a third.
- An idempotent request (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) may also be tried once
  more when the upstream connection closed or reset before the first response byte. That
  one retry is counted apart from the connect retries: either kind of failure can follow
  the other.
- When that connection was an idle pooled one (a *stale* keep-alive connection the
  backend closed just as we reused it), the idempotent request is tried again on a fresh
  connection without spending its one retry.
- POST and PATCH are never replayed once bytes may have reached a backend: a bank's
  payment must not run twice because a keep-alive connection raced with its close.
- Nothing is retried after a response byte arrived, nor after a timeout (the backend may
  still be working on it), nor when the body sent so far was too large to keep.
"""

from __future__ import annotations

import enum

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

# A request body is kept for a replay up to this size; beyond it the request runs once.
REPLAY_LIMIT = 64 * 1024

MAX_RETRIES = 1
MAX_STALE_RETRIES = 2
MAX_CONNECT_RETRIES = 3


class Failure(enum.Enum):
    """How one attempt to get a response from a backend ended badly."""

    CONNECT_FAILED = "connect failed"
    STALE_CONNECTION = "pooled connection closed before the response"
    CLOSED_BEFORE_RESPONSE = "connection closed before the response"
    BROKEN_RESPONSE = "connection failed during the response"
    INVALID_RESPONSE = "invalid response"
    TIMEOUT = "upstream timed out"


class Retry(enum.Enum):
    NO = "no"
    ANOTHER_BACKEND = "another backend"  # spends the request's one retry
    CONNECT_ELSEWHERE = "connect to another backend"  # spends one of the connect retries
    FRESH_CONNECTION = "fresh connection"  # free: the stale connection was our doing


def decide_retry(
    method: bytes,
    failure: Failure,
    *,
    retries_used: int,
    stale_retries_used: int,
    body_replayable: bool,
    connect_retries_used: int = 0,
    backends_left: int = 0,
) -> Retry:
    """Whether and how to try again; ``body_replayable`` is False once body bytes were
    sent and not kept (more than :data:`REPLAY_LIMIT`); ``backends_left`` is how many
    backends of the route the request has not tried yet (the failed one counts as tried).
    """
    if failure is Failure.CONNECT_FAILED:
        # Nothing was sent on a connection that never opened, so the body is all still
        # buffered whatever its size.
        if connect_retries_used < MAX_CONNECT_RETRIES and (
            backends_left > 0 or connect_retries_used == 0
        ):
            return Retry.CONNECT_ELSEWHERE
        return Retry.NO
    if method not in IDEMPOTENT_METHODS or not body_replayable:
        return Retry.NO
    if failure is Failure.STALE_CONNECTION:
        if stale_retries_used < MAX_STALE_RETRIES:
            return Retry.FRESH_CONNECTION
        return Retry.ANOTHER_BACKEND if retries_used < MAX_RETRIES else Retry.NO
    if failure is Failure.CLOSED_BEFORE_RESPONSE:
        return Retry.ANOTHER_BACKEND if retries_used < MAX_RETRIES else Retry.NO
    return Retry.NO
