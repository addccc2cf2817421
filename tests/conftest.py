"""Fixtures for every test directory; the helpers themselves live in tests/support.py."""

from tests.support import echo_folder, make_platform, running_small

__all__ = ["echo_folder", "make_platform", "running_small"]
