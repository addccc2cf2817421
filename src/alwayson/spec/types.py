"""Field types shared by the spec's models."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema

from alwayson.util.durations import DURATION_PATTERN, format_duration, parse_duration

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$|^[a-z]$"

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
                {"type": "number", "minimum": 0},
            ],
            "description": "A duration: '500ms', '2s', '1m30s', '1h', or a number of seconds.",
        }
    ),
]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
