"""Validation of JSON bodies and query strings: every problem reported at once, as a 400.

fields = Fields(request.json_object())
name = fields.text("name", max_len=100)
amount = fields.integer("amount", minimum=1)
fields.done()  # raises HTTPError(400, "invalid request", fields={...}) if anything failed
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from bank.web import HTTPError, Request

EMAIL = re.compile(r"^[A-Za-z0-9._%+'-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}$")
MAX_AMOUNT = 10**15


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


class Fields:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.errors: dict[str, str] = {}

    def fail(self, name: str, message: str) -> None:
        self.errors.setdefault(name, message)

    def done(self) -> None:
        if self.errors:
            raise HTTPError(400, "invalid request", fields=self.errors)

    def _get(self, name: str, default: Any) -> tuple[bool, Any]:
        """(given, value): the body's value, else the default (a 'required' error if none)."""
        if self.body.get(name) is not None:
            return True, self.body[name]
        if default is REQUIRED:
            self.fail(name, "is required")
        return False, default

    def text(
        self, name: str, *, min_len: int = 1, max_len: int = 200, default: Any = REQUIRED
    ) -> str:
        given, value = self._get(name, default)
        if not given:
            return "" if value is REQUIRED else str(value)
        if not isinstance(value, str):
            self.fail(name, "must be a string")
            return ""
        value = value.strip()
        if not min_len <= len(value) <= max_len:
            self.fail(name, f"must be {min_len} to {max_len} characters long")
        return value

    def integer(
        self,
        name: str,
        *,
        minimum: int = 0,
        maximum: int = MAX_AMOUNT,
        default: Any = REQUIRED,
    ) -> int:
        given, value = self._get(name, default)
        if not given:
            return 0 if value is REQUIRED else int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                self.fail(name, "must be a whole number")
                return 0
        if not minimum <= value <= maximum:
            self.fail(name, f"must be between {minimum} and {maximum}")
        return int(value)

    def choice(self, name: str, options: Collection[str], *, default: Any = REQUIRED) -> str:
        given, value = self._get(name, default)
        if not given:
            return "" if value is REQUIRED else str(value)
        if not isinstance(value, str) or value not in options:
            self.fail(name, f"must be one of: {', '.join(sorted(options))}")
            return ""
        return value

    def email(self, name: str, *, default: Any = REQUIRED) -> str:
        given = self.body.get(name) is not None
        value = self.text(name, max_len=254, default=default)
        if given and value and not EMAIL.match(value):
            self.fail(name, "must be an email address like name@example.com")
        return value.lower()

    def mapping(self, name: str, *, default: Any = REQUIRED) -> dict[str, Any]:
        given, value = self._get(name, default)
        if not given:
            return {} if value is REQUIRED else dict(value)
        if not isinstance(value, dict):
            self.fail(name, "must be a JSON object")
            return {}
        return value

    def items(self, name: str, *, min_items: int = 1, max_items: int = 100) -> list[Any]:
        given, value = self._get(name, REQUIRED)
        if not isinstance(value, list):
            if given:
                self.fail(name, "must be a JSON array")
            return []
        if not min_items <= len(value) <= max_items:
            self.fail(name, f"must have {min_items} to {max_items} items")
        return value


def query_int(request: Request, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.lstrip("-").isdigit() or not minimum <= int(raw) <= maximum:
        raise HTTPError(
            400, "invalid request", fields={name: f"must be a number from {minimum} to {maximum}"}
        )
    return int(raw)
