"""Names that the database agents and their readers (the API, the CLI) must agree on."""

from __future__ import annotations


def slot_name(site: str) -> str:
    """The replication slot (and ``application_name``) of ``site``'s standby: PostgreSQL
    identifiers take no ``-``. ``pg_stat_replication`` rows name their standby by it."""
    return site.replace("-", "_")
