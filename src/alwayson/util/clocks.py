"""Injected time. Code that waits or measures takes a ``Clock`` so tests can fast-forward.

Logic in ``control/`` and ``data/`` never reads ``time`` or sleeps with ``asyncio.sleep``
directly: it asks its clock, so a test on a ``ManualClock`` runs a five-minute window in
milliseconds and decides exactly what "now" is.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time (a real wait only on the system clock)."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to; for tests.

    ``sleep`` parks the caller until ``advance`` (or ``advance_to``) moves the clock past
    its deadline. With ``autojump=True`` the clock also moves by itself, like trio's
    autojump clock: whenever every task is waiting (nothing else can run), it jumps to the
    earliest sleeper's deadline and wakes it. Code that waits minutes runs straight
    through, time only goes forward, sleepers wake in deadline order, and nothing that
    could still happen "now" is skipped over.
    """

    IDLE_ROUNDS = 8  # loop passes with nothing runnable before time may jump

    def __init__(
        self,
        start: float = 1000.0,
        wall_start: float = 1_800_000_000.0,
        *,
        autojump: bool = False,
    ) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self.autojump = autojump
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._jumper: asyncio.Task[None] | None = None

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._move_to(self._now + seconds)

    def advance_to(self, when: float) -> None:
        self.advance(max(0.0, when - self._now))

    def _move_to(self, when: float) -> None:
        self._now = when
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    @property
    def sleeping(self) -> int:
        """How many sleeps are waiting for the clock to move."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + max(0.0, seconds)
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), future))
        if self.autojump and (self._jumper is None or self._jumper.done()):
            self._jumper = loop.create_task(self._jump_when_idle())
        await future

    async def _jump_when_idle(self) -> None:
        """While anyone sleeps: once the loop has had nothing to run for a few passes,
        move to the earliest deadline."""
        loop = asyncio.get_running_loop()
        quiet = 0
        while any(not f.done() for _, _, f in self._sleepers):
            await asyncio.sleep(0)
            # Only this task is runnable: the loop is idle (asyncio keeps its ready queue
            # in ``_ready``; without it, a few passes are taken as idle).
            busy = len(getattr(loop, "_ready", ()))
            quiet = quiet + 1 if busy == 0 else 0
            if quiet < self.IDLE_ROUNDS:
                continue
            quiet = 0
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)  # cancelled sleeps
            if self._sleepers:
                self._move_to(max(self._now, self._sleepers[0][0]))
