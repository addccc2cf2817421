"""Scraping without sockets: the exposition parser, scrapes through httpx's MockTransport,
the concurrency limit, and psutil's view of processes."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest

from alwayson.metrics.exposition import ExpositionError, parse_exposition
from alwayson.metrics.model import Sample
from alwayson.metrics.scraping import Scraper, Target, scrape
from alwayson.util.clocks import ManualClock

TEXT = """\
# HELP bank_requests_total Requests.
# TYPE bank_requests_total counter
bank_requests_total{code="200",route="/accounts"} 12
bank_requests_created{code="200",route="/accounts"} 1.7e9
# TYPE bank_latency_seconds histogram
bank_latency_seconds_bucket{le="0.1"} 3
bank_latency_seconds_bucket{le="+Inf"} 4
bank_latency_seconds_sum 0.75
bank_latency_seconds_count 4
# TYPE bank_rpc_seconds summary
bank_rpc_seconds{quantile="0.5"} 0.01
bank_rpc_seconds_sum 2
bank_rpc_seconds_count 7
# TYPE bank_in_flight gauge
bank_in_flight NaN
plain_untyped{job="theirs",empty=""} 5 1700000000000
"""
LABELS = {"job": "instances", "instance": "accounts@jakarta#1", "service": "accounts"}


def by_name(samples: list[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for s in samples:
        out.setdefault(s.name, []).append(s)
    return out


def test_parse_keeps_sample_names_and_adds_target_labels() -> None:
    samples = by_name(parse_exposition(TEXT, LABELS))
    assert sorted(samples) == [
        "bank_in_flight",
        "bank_latency_seconds_bucket",
        "bank_latency_seconds_count",
        "bank_latency_seconds_sum",
        "bank_requests_created",
        "bank_requests_total",
        "bank_rpc_seconds",
        "bank_rpc_seconds_count",
        "bank_rpc_seconds_sum",
        "plain_untyped",
    ]
    (total,) = samples["bank_requests_total"]
    assert total.labels == {**LABELS, "code": "200", "route": "/accounts"}
    assert total.value == 12.0 and isinstance(total.value, float)
    assert [(s.labels["le"], s.value) for s in samples["bank_latency_seconds_bucket"]] == [
        ("0.1", 3.0),
        ("+Inf", 4.0),
    ]
    assert samples["bank_rpc_seconds"][0].labels["quantile"] == "0.5"
    assert math.isnan(samples["bank_in_flight"][0].value)


def test_target_labels_win_and_clashing_ones_are_kept_as_exported() -> None:
    (sample,) = by_name(parse_exposition(TEXT, LABELS))["plain_untyped"]
    assert sample.labels == {**LABELS, "exported_job": "theirs"}  # empty values dropped
    text = 'm{job="a",exported_job="b"} 1\n'
    (twice,) = parse_exposition(text, {"job": "t"})
    assert twice.labels == {"job": "t", "exported_job": "b", "exported_exported_job": "a"}


def test_text_that_is_not_an_exposition_is_rejected() -> None:
    with pytest.raises(ExpositionError, match="Prometheus text format"):
        parse_exposition("this is { not metrics\n", {})


def status(samples: list[Sample]) -> dict[str, float]:
    return {s.name: s.value for s in samples if s.name.startswith(("up", "scrape_"))}


def client_for(handler: httpx.MockTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=handler)


async def test_a_good_scrape_adds_up_and_the_scrape_figures() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text=TEXT)

    async with client_for(httpx.MockTransport(handler)) as client:
        samples = await scrape(client, Target("http://i1/metrics", LABELS), 2.0, 1000.0)
    figures = status(samples)
    assert figures["up"] == 1.0
    assert figures["scrape_samples_scraped"] == 11.0  # the sample lines of TEXT
    assert figures["scrape_duration_seconds"] >= 0.0
    assert all(s.labels == LABELS for s in samples if s.name.startswith(("up", "scrape_")))
    assert "text/plain" in seen[0].headers["accept"]


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (lambda r: httpx.Response(503, text="busy"), "HTTP 503"),
        (lambda r: httpx.Response(200, text="{{{ nonsense"), "Prometheus text format"),
        (lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused")), "ConnectError"),
        (lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("slow")), "timed out after 2s"),
    ],
)
async def test_a_failed_scrape_is_up_zero_with_the_reason(handler, error: str) -> None:  # type: ignore[no-untyped-def]
    async with client_for(httpx.MockTransport(handler)) as client:
        scraper = Scraper(client, timeout=2.0, clock=ManualClock())
        samples = await scraper.scrape_all([Target("http://x/metrics", {"job": "j"})], 5.0)
    assert status(samples) == {
        "up": 0.0,
        "scrape_duration_seconds": 0.0,
        "scrape_samples_scraped": 0.0,
    }
    assert len(samples) == 3
    health = scraper.health["http://x/metrics"]
    assert not health.up and health.at == 5.0 and health.error is not None
    assert error in health.error


async def test_a_target_slower_than_the_timeout_is_cut_off() -> None:
    never = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        await never.wait()
        return httpx.Response(200, text=TEXT)

    async with client_for(httpx.MockTransport(handler)) as client:
        scraper = Scraper(client, timeout=0.05)
        samples = await scraper.scrape_all([Target("http://slow/metrics", {})], 1.0)
    assert status(samples)["up"] == 0.0
    assert scraper.health["http://slow/metrics"].error == "timed out after 0.05s"


async def test_scrape_all_runs_at_most_concurrency_scrapes_at_once() -> None:
    in_flight = 0
    most = 0
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await release.wait()
        in_flight -= 1
        return httpx.Response(200, text=f'm{{path="{request.url.path}"}} 1\n')

    targets = [Target(f"http://h/{i}", {"instance": str(i)}) for i in range(5)]
    async with client_for(httpx.MockTransport(handler)) as client:
        scraper = Scraper(client, concurrency=2, timeout=5.0)
        task = asyncio.create_task(scraper.scrape_all(targets, 7.0))
        for _ in range(200):  # let every scrape that may start, start
            await asyncio.sleep(0)
        assert in_flight == 2
        release.set()
        samples = await task
    assert most == 2
    got = {s.labels["instance"]: s.labels["path"] for s in samples if s.name == "m"}
    assert got == {str(i): f"/{i}" for i in range(5)}
    assert sorted(scraper.health) == sorted(t.url for t in targets)
    async with client_for(httpx.MockTransport(lambda r: httpx.Response(200, text=""))) as client:
        scraper.client = client
        await scraper.scrape_all(targets[:1], 8.0)
    assert list(scraper.health) == ["http://h/0"]  # targets gone are forgotten


async def test_the_scraper_owns_and_closes_its_client() -> None:
    async with Scraper() as scraper:
        client = scraper.client
    assert client.is_closed


async def test_an_unchanged_exposition_is_parsed_once_and_a_changed_one_again() -> None:
    bodies = iter(["m 1\n", "m 1\n", "m 2\n", "m 2\n"])
    async with client_for(
        httpx.MockTransport(lambda r: httpx.Response(200, text=next(bodies)))
    ) as client:
        scraper = Scraper(client)
        target = Target("http://h/metrics", {"instance": "a"})

        async def values() -> list[Sample]:
            return [s for s in await scraper.scrape_all([target], 1.0) if s.name == "m"]

        first, second = await values(), await values()
        assert first == second == [Sample("m", {"instance": "a"}, 1.0)]
        assert first[0] is second[0]  # the same text: the last parse, not a new one
        third = await values()
        assert third == [Sample("m", {"instance": "a"}, 2.0)]
        # The same text under new target labels is parsed again: labels are part of it.
        target = Target("http://h/metrics", {"instance": "b"})
        assert await values() == [Sample("m", {"instance": "b"}, 2.0)]
