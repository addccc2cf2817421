"""Nested settings overrides (``alwayson.util.merging``)."""

from __future__ import annotations

from alwayson.util.merging import deep_merge


def test_nested_mappings_merge_and_other_values_replace() -> None:
    base = {"canary": {"steps": [5, 100], "pause": 10}, "strategy": "rolling"}
    extra = {"canary": {"steps": [50, 100]}, "strategy": "canary"}
    assert deep_merge(base, extra) == {
        "canary": {"steps": [50, 100], "pause": 10},
        "strategy": "canary",
    }
    assert base["canary"] == {"steps": [5, 100], "pause": 10}  # the inputs are left alone
