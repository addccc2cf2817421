"""Journeys: the built-in ones by name, and loading a user's from a Python file.

A journey is an async callable ``journey(session) -> None`` (see ``scenarios``). Built in:

- ``bank-registration``: the sample bank's registration journey through the front door,
  the call ``examples/digital-bank/register.py`` makes: ``POST /onboarding/register``
  (step ``register``) with a new customer every iteration, expecting ``201`` and a body
  naming the customer and account created. Onboarding then calls kyc, customers,
  accounts, notifications and audit through the gateway, so one iteration crosses five
  services.
- ``bank-registration-readback``: the same, then reads the customer and the account back
  (steps ``read customer`` and ``read account``), so a write that was acknowledged but
  cannot be read fails the iteration.

Customers are unique per process and per run: the NIK (and the email built from it) is a
counter from a random starting point, re-drawn in each forked worker, over about 10¹²
valid NIKs, so repeated runs against one database do not collide on "already registered".

``load_journey("path/to/file.py:function")`` (or ``package.module:function``) loads a
user's journey; ``resolve_journey`` takes either a built-in name or such a reference.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import random
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alwayson.loadgen.scenarios import Journey, Session
from alwayson.util.errors import PermanentError

REGISTER_PATH = "/onboarding/register"
FIRST_NAMES = ("Siti", "Budi", "Dewi", "Agus", "Rina", "Andi", "Putri", "Joko", "Ayu", "Made")
LAST_NAMES = ("Rahma", "Santoso", "Lestari", "Wijaya", "Hartono", "Pratama", "Kusuma", "Nasution")
CITIES = ("jakarta", "surabaya")
# NIK digits 3-6 (regency, district) take any value; birth dates are kept to days 1-28 so
# every month is valid, years 1960-1999 so every holder is an adult.
_REGIONS = 10_000
_BIRTH_DATES = 28 * 12 * 40
_SERIALS = 9_999  # 0001-9999; 0000 is never issued
NIK_SPACE = _REGIONS * _BIRTH_DATES * _SERIALS


class JourneyError(PermanentError):
    """An unknown journey name or a journey reference that does not load."""


class UnexpectedAnswer(Exception):
    """The target answered with a success status but not the body the journey needs."""


def nik_for(index: int) -> str:
    """The ``index``-th valid NIK (0 <= index < NIK_SPACE), province 31 (DKI Jakarta)."""
    index %= NIK_SPACE
    serial, index = index % _SERIALS + 1, index // _SERIALS
    birth, region = index % _BIRTH_DATES, index // _BIRTH_DATES
    day, rest = birth % 28 + 1, birth // 28
    month, year = rest % 12 + 1, 60 + rest // 12
    return f"31{region:04d}{day:02d}{month:02d}{year:02d}{serial:04d}"


@dataclass
class Applicants:
    """New, distinct applicants: a counter from a random start, re-drawn per process."""

    rng: random.Random = field(default_factory=random.SystemRandom)
    _pid: int = -1
    _next: int = 0

    def next(self) -> dict[str, str]:
        if self._pid != os.getpid():  # a forked worker must not repeat its parent's
            self._pid = os.getpid()
            self._next = self.rng.randrange(NIK_SPACE)
        index, self._next = self._next, self._next + 1
        nik = nik_for(index)
        first = FIRST_NAMES[index % len(FIRST_NAMES)]
        last = LAST_NAMES[index // len(FIRST_NAMES) % len(LAST_NAMES)]
        return {
            "name": f"{first} {last}",
            "email": f"{first.lower()}.{nik}@example.com",
            "id_number": nik,
            "city": CITIES[index % len(CITIES)],
        }


Acknowledged = Callable[[dict[str, Any]], None]


@dataclass
class BankRegistration:
    """Register one new customer through the front door (optionally read it back).

    ``on_acknowledged`` is called with the body of every registration the bank confirmed
    (a drill's lost-write check keeps these ids).
    """

    readback: bool = False
    applicants: Applicants = field(default_factory=Applicants)
    on_acknowledged: Acknowledged | None = None

    async def __call__(self, session: Session) -> None:
        applicant = self.applicants.next()
        session.vars["applicant"] = applicant
        response = await session.post(
            REGISTER_PATH,
            name="register",
            json=applicant,
            # A retry of this request (by the gateway or a client) registers once.
            headers={"Idempotency-Key": f"loadtest-{applicant['id_number']}"},
            expect=(201,),
        )
        body = _json_object(response.json())
        customer, account = body.get("customer_id"), body.get("account_id")
        if not customer or not account:
            raise UnexpectedAnswer(f"register: 201 without customer_id and account_id: {body}")
        session.vars["registration"] = body
        if self.on_acknowledged is not None:
            self.on_acknowledged(body)
        if self.readback:
            await session.get(f"/customers/{customer}", name="read customer")
            await session.get(f"/accounts/{account}", name="read account")


def _json_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UnexpectedAnswer(f"expected a JSON object, got {type(data).__name__}")
    return data


JOURNEYS: dict[str, Journey] = {
    "bank-registration": BankRegistration(),
    "bank-registration-readback": BankRegistration(readback=True),
}


def resolve_journey(name: str, known: Mapping[str, Journey] = JOURNEYS) -> Journey:
    """A built-in journey by name, or ``file.py:function`` / ``module:function``."""
    if name in known:
        return known[name]
    if ":" in name:
        return load_journey(name)
    raise JourneyError(
        f"unknown journey {name!r}; built in: {', '.join(sorted(known))}; "
        "or give your own as path/to/file.py:function"
    )


def load_journey(reference: str) -> Journey:
    """The async function ``function`` of ``path/to/file.py:function`` or ``module:function``."""
    where, _, attribute = reference.rpartition(":")
    if not where or not attribute:
        raise JourneyError(f"journey {reference!r}: write it as path/to/file.py:function")
    if where.endswith(".py") or os.sep in where:
        module = _load_file(reference, Path(where))
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise JourneyError(f"journey {reference!r}: cannot import {where}: {exc}") from exc
    found = getattr(module, attribute, None)
    if found is None:
        public = sorted(n for n, v in vars(module).items() if not n.startswith("_") and callable(v))
        raise JourneyError(
            f"journey {reference!r}: {where} has no {attribute!r}; "
            f"its functions: {', '.join(public) or 'none'}"
        )
    if not callable(found) or not _is_async(found):
        raise JourneyError(
            f"journey {reference!r}: {attribute} must be an async function taking a session: "
            "async def journey(session): await session.get('/')"
        )
    journey: Journey = found
    return journey


def _is_async(obj: Any) -> bool:
    call = getattr(obj, "__call__", None)  # noqa: B004 - an instance with async __call__
    return inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(call)


def _load_file(reference: str, path: Path) -> Any:
    if not path.is_file():
        raise JourneyError(f"journey {reference!r}: no such file {path}")
    name = f"alwayson_user_journey_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise JourneyError(f"journey {reference!r}: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise JourneyError(
            f"journey {reference!r}: {path} failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    return module
