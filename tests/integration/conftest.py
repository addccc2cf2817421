"""Fixtures of the integration tests (the database cluster lives in dbcluster.py)."""

from tests.integration.dbcluster import cluster

__all__ = ["cluster"]
