"""The manual clock: sleeps wake in deadline order when time is advanced, or at once."""

from __future__ import annotations

import asyncio

import pytest

from alwayson.util.clocks import ManualClock


async def test_sleepers_wake_in_order_when_advanced() -> None:
    clock = ManualClock(start=0.0)
    woke: list[tuple[str, float]] = []

    async def nap(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    tasks = [asyncio.create_task(nap("late", 300)), asyncio.create_task(nap("early", 5))]
    await asyncio.sleep(0)
    assert clock.sleeping == 2
    clock.advance(4)
    await asyncio.sleep(0)
    assert woke == []
    clock.advance(296)
    await asyncio.gather(*tasks)
    assert [name for name, _ in woke] == ["early", "late"]
    assert clock.sleeping == 0


async def test_autojump_runs_a_long_wait_at_once() -> None:
    clock = ManualClock(start=0.0, autojump=True)
    for _ in range(10):
        await clock.sleep(60)
    assert clock.monotonic() == 600
    assert clock.wall() - clock.monotonic() == 1_800_000_000.0


def test_time_does_not_go_backwards() -> None:
    with pytest.raises(ValueError):
        ManualClock().advance(-1)
