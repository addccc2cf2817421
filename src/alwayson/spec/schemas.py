"""The JSON Schema of ``alwayson.yaml``, generated from the models and shipped in the package."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from alwayson.spec.models import PlatformSpec

SCHEMA_FILE = "alwayson.schema.json"


def generate_schema() -> dict[str, Any]:
    schema = PlatformSpec.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "alwayson platform spec (alwayson.yaml)"
    return schema


def render_schema() -> str:
    return json.dumps(generate_schema(), indent=2, sort_keys=True) + "\n"


def shipped_schema() -> str:
    return resources.files("alwayson.spec").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
