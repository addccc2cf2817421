"""The retry decision."""

from __future__ import annotations

import pytest

from alwayson.gateway.retrying import Failure, Retry, decide_retry


def decide(
    method: bytes,
    failure: Failure,
    *,
    retries: int = 0,
    stale: int = 0,
    replayable: bool = True,
    connects: int = 0,
    left: int = 1,
) -> Retry:
    return decide_retry(
        method,
        failure,
        retries_used=retries,
        stale_retries_used=stale,
        body_replayable=replayable,
        connect_retries_used=connects,
        backends_left=left,
    )


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"])
def test_idempotent_requests_retry_once_when_closed_before_the_response(method: bytes) -> None:
    assert decide(method, Failure.CLOSED_BEFORE_RESPONSE) is Retry.ANOTHER_BACKEND
    assert decide(method, Failure.CLOSED_BEFORE_RESPONSE, retries=1) is Retry.NO


@pytest.mark.parametrize("method", [b"POST", b"PATCH"])
def test_non_idempotent_requests_retry_only_when_the_connect_failed(method: bytes) -> None:
    assert decide(method, Failure.CONNECT_FAILED) is Retry.CONNECT_ELSEWHERE
    assert decide(method, Failure.CLOSED_BEFORE_RESPONSE) is Retry.NO
    assert decide(method, Failure.STALE_CONNECTION) is Retry.NO


def test_connect_failure_retries_whatever_the_body() -> None:
    assert decide(b"POST", Failure.CONNECT_FAILED, replayable=False) is Retry.CONNECT_ELSEWHERE
    assert decide(b"POST", Failure.CONNECT_FAILED, connects=1, left=0) is Retry.NO


@pytest.mark.parametrize("method", [b"GET", b"POST", b"PATCH"])
def test_connect_failures_retry_on_every_backend_left_up_to_three_times(method: bytes) -> None:
    # three backends, all refusing: the request tries each once, then gives up
    assert decide(method, Failure.CONNECT_FAILED, connects=0, left=2) is Retry.CONNECT_ELSEWHERE
    assert decide(method, Failure.CONNECT_FAILED, connects=1, left=1) is Retry.CONNECT_ELSEWHERE
    assert decide(method, Failure.CONNECT_FAILED, connects=2, left=0) is Retry.NO
    # many backends: three connect retries at most
    assert decide(method, Failure.CONNECT_FAILED, connects=2, left=7) is Retry.CONNECT_ELSEWHERE
    assert decide(method, Failure.CONNECT_FAILED, connects=3, left=6) is Retry.NO


def test_a_request_with_no_backend_left_still_gets_one_connect_retry() -> None:
    assert decide(b"POST", Failure.CONNECT_FAILED, left=0) is Retry.CONNECT_ELSEWHERE
    assert decide(b"POST", Failure.CONNECT_FAILED, connects=1, left=0) is Retry.NO


def test_connect_retries_and_the_one_retry_are_counted_apart() -> None:
    # a GET reset by a dying backend, then refused by a second dead one, reaches a third
    assert decide(b"GET", Failure.CLOSED_BEFORE_RESPONSE, left=2) is Retry.ANOTHER_BACKEND
    assert decide(b"GET", Failure.CONNECT_FAILED, retries=1, left=1) is Retry.CONNECT_ELSEWHERE
    # and the other way round: connects spent, the one retry is still there
    assert decide(b"GET", Failure.CLOSED_BEFORE_RESPONSE, connects=3) is Retry.ANOTHER_BACKEND
    assert decide(b"GET", Failure.CLOSED_BEFORE_RESPONSE, retries=1) is Retry.NO
    # a POST that may have reached a backend is never tried again, whatever is left
    assert decide(b"POST", Failure.CLOSED_BEFORE_RESPONSE, left=3) is Retry.NO
