"""The JSON Schema shipped in the package is the one the models generate."""

from __future__ import annotations

import json
from pathlib import Path

from alwayson.spec.schemas import generate_schema, render_schema, shipped_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "src" / "alwayson" / "spec" / "alwayson.schema.json"
REGENERATE = ".venv/bin/alwayson schema > src/alwayson/spec/alwayson.schema.json"


def test_shipped_schema_matches_the_models() -> None:
    assert render_schema() == SCHEMA_FILE.read_text(encoding="utf-8"), (
        f"{SCHEMA_FILE} is stale: the spec models changed. Regenerate it from {ROOT} with:\n"
        f"    {REGENERATE}"
    )


def test_the_package_resource_is_that_file() -> None:
    assert shipped_schema() == SCHEMA_FILE.read_text(encoding="utf-8")


def test_schema_describes_the_spec() -> None:
    schema = generate_schema()

    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["platform", "sites"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {
        "platform",
        "sites",
        "services",
        "controller",
        "front_door",
        "gateway",
        "runtime",
        "databases",
        "metrics",
        "alerts",
        "notifications",
        "drills",
        "secrets",
    }


def test_durations_accept_text_or_seconds() -> None:
    interval = generate_schema()["$defs"]["Probe"]["properties"]["interval"]

    assert [alt["type"] for alt in interval["anyOf"]] == ["string", "number"]


def test_rendering_is_stable_json() -> None:
    text = render_schema()

    assert text.endswith("}\n")
    assert json.loads(text) == generate_schema()
    assert render_schema() == text
