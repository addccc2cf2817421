"""Scraping: Prometheus text exposition over HTTP, parsed by :mod:`alwayson.metrics.exposition`.

Every scrape yields, besides the target's own samples, ``up`` (1, or 0 on any failure),
``scrape_duration_seconds`` and ``scrape_samples_scraped``, all with the target's labels,
as Prometheus does. A failure never raises: it is logged, kept in ``Scraper.health``, and
its ``up`` is 0. A target's labels win over clashing labels of its samples, which are kept
as ``exported_<name>`` (Prometheus's ``honor_labels: false``). Timestamps in the exposition
are ignored: every sample of a scrape is stored at the scrape's time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from alwayson.metrics.exposition import ExpositionError, parse_exposition
from alwayson.metrics.model import Sample
from alwayson.util.certs import web_context
from alwayson.util.clocks import Clock, SystemClock

log = logging.getLogger(__name__)

ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass
class Target:
    """One endpoint to scrape and the labels every one of its samples gets."""

    url: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class TargetHealth:
    """The outcome of a target's last scrape, like Prometheus's targets page."""

    url: str
    labels: dict[str, str]
    up: bool
    at: float
    duration: float
    samples: int
    error: str | None


def _status_samples(target: Target, up: bool, duration: float, scraped: int) -> list[Sample]:
    labels = dict(target.labels)
    return [
        Sample("up", labels, 1.0 if up else 0.0),
        Sample("scrape_duration_seconds", labels, duration),
        Sample("scrape_samples_scraped", labels, float(scraped)),
    ]


async def _fetch(client: httpx.AsyncClient, url: str, timeout: float) -> str:
    async with client.stream(
        "GET", url, headers={"Accept": ACCEPT}, timeout=timeout, follow_redirects=True
    ) as response:
        if response.status_code != 200:
            raise _Failure(f"HTTP {response.status_code}")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise _Failure(f"body larger than {MAX_BODY_BYTES} bytes")
        return body.decode(response.encoding or "utf-8", errors="replace")


class _Failure(Exception):
    pass


Parse = Callable[[str, Mapping[str, str]], list[Sample]]


async def scrape_target(
    client: httpx.AsyncClient,
    target: Target,
    timeout: float,
    at: float,
    clock: Clock | None = None,
    parse: Parse = parse_exposition,
) -> tuple[list[Sample], TargetHealth]:
    """Scrape one target: its samples plus ``up`` & co., and how the scrape went."""
    clock = clock or SystemClock()
    began = clock.monotonic()
    error: str | None = None
    samples: list[Sample] = []
    try:
        async with asyncio.timeout(timeout):
            text = await _fetch(client, target.url, timeout)
        samples = parse(text, target.labels)
    except (TimeoutError, httpx.TimeoutException):
        error = f"timed out after {timeout:g}s"
    except _Failure as exc:
        error = str(exc)
    except ExpositionError as exc:
        error = str(exc)
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    duration = max(0.0, clock.monotonic() - began)
    if error is not None:
        log.warning("scrape of %s failed: %s", target.url, error)
        samples = []
    health = TargetHealth(
        target.url, dict(target.labels), error is None, at, duration, len(samples), error
    )
    return samples + _status_samples(target, error is None, duration, len(samples)), health


async def scrape(
    client: httpx.AsyncClient, target: Target, timeout: float, at: float
) -> list[Sample]:
    """Scrape one target. Never raises: a failure gives ``up`` 0 and is logged."""
    samples, _ = await scrape_target(client, target, timeout, at)
    return samples


KEPT_ALIVE = 1024


class Scraper:
    """Scrapes many targets concurrently (at most ``concurrency`` at once) through one
    shared HTTP client, and remembers each target's last outcome in ``health``."""

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        timeout: float = 2.0,
        concurrency: int = 32,
        clock: Clock | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._owned = client is None
        # At most ``concurrency`` scrapes at once (the semaphore), but a kept-alive
        # connection for every target: a pool smaller than the targets reconnects to half
        # of them every round.
        self.client = client or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=KEPT_ALIVE),
            trust_env=False,
            verify=web_context(),
        )
        self.timeout = timeout
        self.concurrency = concurrency
        self.clock = clock or SystemClock()
        self.health: dict[str, TargetHealth] = {}
        self._parsed: dict[str, tuple[str, dict[str, str], list[Sample]]] = {}
        """Each target's last exposition and its samples: an idle target prints the same
        text scrape after scrape, and parsing is most of a scrape's CPU."""

    def _parse(self, url: str, text: str, labels: Mapping[str, str]) -> list[Sample]:
        last = self._parsed.get(url)
        if last is not None and last[0] == text and last[1] == labels:
            return last[2]
        samples = parse_exposition(text, labels)
        self._parsed[url] = (text, dict(labels), samples)
        return samples

    async def scrape_all(self, targets: Sequence[Target], at: float) -> list[Sample]:
        """Every target's samples (and ``up`` & co.), all stamped ``at``."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(target: Target) -> list[Sample]:
            async with gate:
                samples, health = await scrape_target(
                    self.client,
                    target,
                    self.timeout,
                    at,
                    self.clock,
                    lambda text, labels: self._parse(target.url, text, labels),
                )
            self.health[target.url] = health
            return samples

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(t)) for t in targets]
        wanted = {t.url for t in targets}
        for url in [u for u in self.health if u not in wanted]:
            del self.health[url]
        for url in [u for u in self._parsed if u not in wanted]:
            del self._parsed[url]
        return [sample for task in tasks for sample in task.result()]

    async def aclose(self) -> None:
        if self._owned:
            await self.client.aclose()

    async def __aenter__(self) -> Scraper:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
