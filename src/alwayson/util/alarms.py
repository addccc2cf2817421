"""A thread's sleep that ends at its timeout, when another thread pokes it, or the moment
a watched process exits (Linux pidfd), whichever comes first.

The database agent's watchdog sleeps on one: it used to poll every 20 ms (50 wake-ups a
second in every agent, all day) to see a primary's postmaster exit and its tenure run
out; now it wakes when one of those happens, or when its tenure changes.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading


class Alarm:
    """Not thread-safe but for :meth:`poke`, which any thread may call."""

    def __init__(self) -> None:
        self._poke = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._closing = threading.Lock()
        self._closed = False
        self._pid: int | None = None
        self._pidfd: int | None = None
        self._exited: int | None = None
        """The pid whose exit was seen: its pidfd stays readable, so it is not watched again."""

    def poke(self) -> None:
        with self._closing:  # never a write to a closed fd (its number may be reused)
            if not self._closed:
                os.eventfd_write(self._poke, 1)

    def wait(self, pid: int | None, timeout: float) -> bool:
        """Sleep up to ``timeout`` s; True when woken by ``pid``'s exit."""
        self._follow(pid)
        fds = [self._poke] if self._pidfd is None else [self._poke, self._pidfd]
        ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        if self._poke in ready:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._poke)
        if self._pidfd is not None and self._pidfd in ready:
            self._exited = self._pid
            self._follow(None)
            return True
        return False

    def _follow(self, pid: int | None) -> None:
        if pid == self._pid:
            return
        if self._pidfd is not None:
            os.close(self._pidfd)
        self._pid, self._pidfd = pid, None
        if pid is None or pid == self._exited:
            return
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # gone already: the caller sees it on its next look
            self._exited = pid
        except OSError:  # no pidfd (old kernel): the timeout bounds the sleep
            self._pidfd = None

    def close(self) -> None:
        self._follow(None)
        with self._closing:
            if not self._closed:
                self._closed = True
                os.close(self._poke)


__all__ = ["Alarm"]
