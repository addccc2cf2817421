"""WAL positions (LSNs) as numbers and back: ``"16/B374D848"`` is ``0x16_B374D848``."""

from __future__ import annotations


def lsn_int(text: str | None) -> int:
    if not text:
        return 0
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
