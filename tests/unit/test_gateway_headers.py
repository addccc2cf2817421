"""Header helpers, request ids, canned error responses and metrics rendering."""

from __future__ import annotations

import json

from alwayson.gateway.headers import (
    CONNECTION,
    DROP,
    HOST,
    KEEP,
    REQUEST_HEADER_ACTIONS,
    HeaderNames,
    HostNames,
    RequestIds,
    connection_tokens,
    drop_named,
    error_response,
    forwarded_for,
    is_chunked,
    status_class,
    status_line,
)
from alwayson.gateway.metrics import GatewayMetrics


def test_connection_tokens_name_headers_but_not_options() -> None:
    assert connection_tokens(b"keep-alive, X-Trace , close,upgrade") == {b"x-trace"}
    assert connection_tokens(b"close") == set()


def test_drop_named_removes_every_occurrence() -> None:
    parts = [
        b"X-A",
        b": ",
        b"1",
        b"\r\n",
        b"x-b",
        b": ",
        b"2",
        b"\r\n",
        b"x-a",
        b": ",
        b"3",
        b"\r\n",
    ]
    assert b"".join(drop_named(parts, {b"x-a"})) == b"x-b: 2\r\n"


def test_chunked_must_be_the_last_coding() -> None:
    assert is_chunked(b"chunked")
    assert is_chunked(b"gzip, Chunked")
    assert not is_chunked(b"chunked, gzip")
    assert not is_chunked(b"gzip")


def test_forwarded_for_appends_the_client() -> None:
    assert forwarded_for(None, b"10.0.0.1") == b"10.0.0.1"
    assert forwarded_for(b"1.1.1.1", b"10.0.0.1") == b"1.1.1.1, 10.0.0.1"


def test_request_ids_are_short_and_unique_across_instances() -> None:
    first, second = RequestIds(), RequestIds()
    ids = {first.next() for _ in range(1000)} | {second.next() for _ in range(1000)}
    assert len(ids) == 2000
    assert all(len(request_id) <= 20 for request_id in ids)


def test_error_response_is_complete_json() -> None:
    raw = error_response(503, "no usable backend", b"r-1", close=True)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"connection: close" in head
    assert b"content-length: %d" % len(body) in head
    assert json.loads(body) == {"error": "no usable backend", "request_id": "r-1"}
    assert error_response(404, "x", b"r", close=False, head_only=True).endswith(b"\r\n\r\n")


def test_status_helpers() -> None:
    assert status_line(200) == b"HTTP/1.1 200 OK\r\n"
    assert status_line(299) == b"HTTP/1.1 299 \r\n"
    assert status_class(404) == "4xx"


def test_metrics_render_every_family_with_its_labels() -> None:
    metrics = GatewayMetrics()
    stats = metrics.stats_for("accounts", "1.0.0", "jakarta")
    stats.observe(200, 0.003)
    stats.observe(503, 0.2)
    metrics.count_retry("accounts")
    metrics.count_connect_error("accounts", "accounts-jakarta-1")
    metrics.generation = 7
    metrics.active_connections = lambda: 3
    text = metrics.render().decode()
    labels = 'service="accounts",site="jakarta",version="1.0.0"'
    assert f'alwayson_gateway_requests_total{{code="2xx",{labels}}} 1.0' in text
    assert f'alwayson_gateway_requests_total{{code="5xx",{labels}}} 1.0' in text
    assert f'alwayson_gateway_request_duration_seconds_bucket{{le="0.005",{labels}}} 1.0' in text
    assert f"alwayson_gateway_request_duration_seconds_count{{{labels}}} 2.0" in text
    assert 'alwayson_gateway_retries_total{service="accounts"} 1.0' in text
    assert (
        'alwayson_gateway_upstream_connect_errors_total{backend="accounts-jakarta-1",'
        'service="accounts"} 1.0' in text
    )
    assert "alwayson_gateway_active_connections 3.0" in text
    assert "alwayson_gateway_routes_generation 7.0" in text


def test_host_names_are_checked_once_and_the_memory_is_bounded() -> None:
    names = HostNames(size=3)
    assert names.lookup(b"Bank.Local:8080") == b"bank.local"
    assert names.lookup(b"[::1]:80") == b"[::1]"
    assert names.lookup(b"") == b""
    assert names.lookup(b"a b") is None and names.lookup(b"x/y") is None
    for n in range(100):  # random hosts cost CPU, never memory
        assert names.lookup(b"h%d" % n) == b"h%d" % n
    assert len(names._known) == 3


def test_header_names_are_classified_in_any_case_and_the_memory_is_bounded() -> None:
    names = HeaderNames(REQUEST_HEADER_ACTIONS, size=4)
    assert names.classify(b"HOST") == names.classify(b"host") == HOST
    assert names.classify(b"Connection") == CONNECTION
    assert names.classify(b"Keep-Alive") == DROP
    assert names.classify(b"Proxy-Anything") == DROP  # Proxy-* never crosses a proxy
    assert names.classify(b"X-Custom") == KEEP
    assert names.known == {
        b"HOST": HOST,
        b"host": HOST,
        b"Connection": CONNECTION,
        b"Keep-Alive": DROP,
    }
    for n in range(100):  # random names cost CPU, never memory
        assert names.classify(b"X-%d" % n) == KEEP
    assert len(names.known) == 4
