"""The load a drill runs, as a port: what the drill asks of a load generator.

A drill needs *a* load generator, not a particular one: it asks for open-model load of one
journey through the front door at a rate, until it says stop, and gets back every
journey's outcome (``measuring.Outcome``) and, for the bank's registration journey, the
writes it sent and the bank acknowledged (the lost-write check's input). The generator
that does it is handed in by the process's composition root (``alwayson.entrypoints.drill``
wires ``alwayson.loadgen`` in); ``drills`` itself imports no load generator.

The journey a drill's context names (``--journey``) is read here, so the meaning of its
three forms lives with the drill:

- ``bank-registration``: ``BankRegistrations``, the sample bank's registration through the
  front door, each id number sent and each acknowledged registration noted in ``Writes``;
- ``/path``: ``GetPath``, ``GET /path`` expecting 200;
- ``file.py:function`` or ``module:function``: ``UserJourney``, the user's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from alwayson.drills.measuring import Outcome

BANK_REGISTRATION = "bank-registration"


@dataclass
class Writes:
    """The registrations a load sent and the bank acknowledged (one event loop fills it)."""

    sent: set[str] = field(default_factory=set)  # the id number (NIK) of every one sent
    acknowledged: dict[str, str] = field(default_factory=dict)  # customer id -> id number


@dataclass(frozen=True)
class BankRegistrations:
    """The bank's registration journey, a new applicant each time, noted in ``writes``:
    an id number before its registration is sent, a customer once the bank confirmed it."""

    writes: Writes


@dataclass(frozen=True)
class GetPath:
    """``GET path`` through the front door, expecting 200."""

    path: str


@dataclass(frozen=True)
class UserJourney:
    """The user's journey, ``path/to/file.py:function`` or ``package.module:function``."""

    reference: str


JourneyChoice = BankRegistrations | GetPath | UserJourney


def journey_for(name: str, writes: Writes) -> JourneyChoice:
    """The journey a drill's context names (see the module); ``writes`` is filled by the
    bank's registration journey only."""
    if name == BANK_REGISTRATION:
        return BankRegistrations(writes)
    if name.startswith("/"):
        return GetPath(name)
    return UserJourney(name)


@dataclass(frozen=True)
class Load:
    """Open-model load: journeys arrive at ``rate`` per second whatever the platform does."""

    base_url: str  # the front door
    journey: JourneyChoice
    rate: float  # journeys per second
    duration: float  # the longest it runs, seconds; a drill stops it long before
    timeout: float = 10.0  # per request, seconds
    drain: float = 10.0  # after the stop, seconds the journeys in flight may still take
    max_lag: float = 5.0  # an arrival the generator cannot start this late is dropped


OnOutcome = Callable[[Outcome], None]


class LoadGenerator(Protocol):
    """What a drill needs from a load generator.

    ``run`` sends ``load`` until ``stop`` is set or its duration is over, then waits up to
    ``load.drain`` seconds for the journeys in flight and cancels the rest. Every journey it
    started is handed to ``on_outcome`` exactly once, when it ends (a cancelled one too,
    failed with an empty error), as wall-clock times:

    - ``start`` is when the journey was *meant* to start by the arrival schedule (never
      later than it really started), so a generator running late cannot hide a stall
      (no coordinated omission);
    - ``error`` names what failed: the failed step's kind (``http 503``, the HTTP client's
      error kind) or the name of the exception the journey raised.

    A journey that cannot be loaded (an unknown file or function) is an ``AlwaysonError``
    raised by ``run``; a drill then sees no outcome and stops before its fault.
    """

    async def run(self, load: Load, on_outcome: OnOutcome, stop: asyncio.Event) -> None: ...
