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
) -> Retry:
    return decide_retry(
        method,
        failure,
        retries_used=retries,
        stale_retries_used=stale,
        body_replayable=replayable,
    )


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"])
def test_idempotent_requests_retry_once_when_closed_before_the_response(method: bytes) -> None:
    assert decide(method, Failure.CLOSED_BEFORE_RESPONSE) is Retry.ANOTHER_BACKEND
    assert decide(method, Failure.CLOSED_BEFORE_RESPONSE, retries=1) is Retry.NO


@pytest.mark.parametrize("method", [b"POST", b"PATCH"])
def test_non_idempotent_requests_retry_only_when_the_connect_failed(method: bytes) -> None:
    assert decide(method, Failure.CONNECT_FAILED) is Retry.ANOTHER_BACKEND
    assert decide(method, Failure.CLOSED_BEFORE_RESPONSE) is Retry.NO
    assert decide(method, Failure.STALE_CONNECTION) is Retry.NO


def test_connect_failure_retries_once_whatever_the_body() -> None:
    assert decide(b"POST", Failure.CONNECT_FAILED, replayable=False) is Retry.ANOTHER_BACKEND
    assert decide(b"GET", Failure.CONNECT_FAILED, retries=1) is Retry.NO


def test_stale_pooled_connection_retries_on_a_fresh_one_for_free() -> None:
    assert decide(b"GET", Failure.STALE_CONNECTION) is Retry.FRESH_CONNECTION
    assert decide(b"GET", Failure.STALE_CONNECTION, retries=1) is Retry.FRESH_CONNECTION
    # bounded: after two fresh attempts it spends the ordinary retry, then gives up
    assert decide(b"GET", Failure.STALE_CONNECTION, stale=2) is Retry.ANOTHER_BACKEND
    assert decide(b"GET", Failure.STALE_CONNECTION, stale=2, retries=1) is Retry.NO


def test_a_body_too_large_to_keep_is_not_replayed() -> None:
    assert decide(b"PUT", Failure.CLOSED_BEFORE_RESPONSE, replayable=False) is Retry.NO
    assert decide(b"PUT", Failure.STALE_CONNECTION, replayable=False) is Retry.NO


@pytest.mark.parametrize(
    "failure", [Failure.TIMEOUT, Failure.BROKEN_RESPONSE, Failure.INVALID_RESPONSE]
)
def test_no_retry_once_the_backend_may_have_acted(failure: Failure) -> None:
    assert decide(b"GET", failure) is Retry.NO
