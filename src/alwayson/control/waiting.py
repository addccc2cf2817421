"""Waiting, structured: owned background tasks, the next reason to act, bounded waits
on the injected clock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from alwayson.control.ports import EventSink
from alwayson.runtime.base import RuntimeEvent
from alwayson.util.clocks import Clock
from alwayson.util.errors import AlwaysonError

log = logging.getLogger("alwayson.controller")
T = TypeVar("T")


class TaskOwner:
    """Background actions owned here: errors are logged and recorded, and ``close`` waits
    for every one (nothing is fired and forgotten)."""

    def __init__(self, events: EventSink) -> None:
        self.events = events
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except AlwaysonError as exc:
                log.error("%s", exc)
                await self.events.record_event("action-failed", "controller", str(exc))

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def idle(self) -> None:
        """Wait until every task spawned so far (and what they spawned) has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def wait_for_work(
    wake: asyncio.Event, events: asyncio.Queue[RuntimeEvent], done: asyncio.Event
) -> RuntimeEvent | None:
    """Return at a wake-up, at shutdown, or with the next runtime event."""
    woken = asyncio.ensure_future(wake.wait())
    event = asyncio.ensure_future(events.get())
    finished = asyncio.ensure_future(done.wait())
    futures = (woken, event, finished)
    try:
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in futures:
            fut.cancel()
        await asyncio.gather(*futures, return_exceptions=True)
    if event.done() and not event.cancelled() and event.exception() is None:
        return event.result()
    return None


async def wait_event(event: asyncio.Event, clock: Clock, seconds: float) -> bool:
    """Wait for ``event`` at most ``seconds`` of ``clock``; whether it was set."""
    return await first_of(event.wait(), clock, seconds) is not None


async def first_of(awaitable: Awaitable[T], clock: Clock, seconds: float) -> T | None:
    """``awaitable``'s result, or None when ``seconds`` of ``clock`` pass first (it is
    then cancelled)."""
    task = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(timer, task, return_exceptions=True)
    return task.result() if task.done() and not task.cancelled() else None
