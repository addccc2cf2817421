"""The API's reference at ``/docs``: one page rendered from the app's OpenAPI document.

Swagger UI and ReDoc load their script and style from a CDN: a third party the page would
trust with the token, and sources the dashboard's Content-Security-Policy forbids. This
page has no script at all and only the package's own style sheet, so it is served under
the same policy. The machine-readable document stays at ``/openapi.json``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from html import escape
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from alwayson.api.dashboard import PAGE_HEADERS

METHODS = ("get", "post", "put", "patch", "delete")
CONSTRAINTS = {
    "minimum": ">=",
    "exclusiveMinimum": ">",
    "maximum": "<=",
    "exclusiveMaximum": "<",
    "minLength": "length >=",
    "maxLength": "length <=",
    "minItems": "items >=",
    "maxItems": "items <=",
    "minProperties": "entries >=",
    "maxProperties": "entries <=",
    "pattern": "matches",
}


def mount_reference(app: FastAPI) -> None:
    """Serve the reference at ``/docs`` (no token, like ``/openapi.json``)."""

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(reference_page(app.openapi()), headers=PAGE_HEADERS)


def reference_page(openapi: Mapping[str, Any]) -> str:
    """The whole page, from an OpenAPI document (pure)."""
    info = openapi.get("info", {})
    schemas = openapi.get("components", {}).get("schemas", {})
    title = escape(f"{info.get('title', 'API')} {info.get('version', '')}".strip())
    index: list[str] = []
    sections: list[str] = []
    for path, item in openapi.get("paths", {}).items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            anchor = re.sub(r"[^a-z0-9]+", "-", f"{method} {path}".lower()).strip("-")
            label = f"<b>{method.upper()}</b> <code>{escape(path)}</code>"
            index.append(f'<li><a href="#{anchor}">{label}</a></li>')
            sections.append(_operation(anchor, label, operation, schemas))
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{title} API reference</title>",
            '<link rel="stylesheet" href="/static/reference.css">',
            "</head><body><main>",
            f"<h1>{title} API reference</h1>",
            _text(str(info.get("description", ""))),
            '<p>The machine-readable document: <a href="/openapi.json">/openapi.json</a>.</p>',
            f"<nav><ul>{''.join(index)}</ul></nav>",
            *sections,
            "</main></body></html>",
        ]
    )


def _operation(
    anchor: str, label: str, operation: Mapping[str, Any], schemas: Mapping[str, Any]
) -> str:
    parts = [f'<section id="{anchor}"><h2>{label}</h2>']
    if operation.get("summary"):
        parts.append(f"<p><i>{escape(operation['summary'])}</i></p>")
    parts.append(_text(str(operation.get("description", ""))))
    rows = [
        (
            f"{p.get('name', '')} ({p.get('in', '')})",
            p.get("schema", {}),
            bool(p.get("required")),
            str(p.get("description", "")),
        )
        for p in operation.get("parameters", [])
    ]
    if rows:
        parts.append("<h3>Parameters</h3>" + _table(rows))
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body is not None:
        schema = body.get("schema", {})
        parts.append(f"<h3>Body: <code>{escape(_type(schema))}</code></h3>")
        fields = _resolve(schema, schemas)
        required = set(fields.get("required", []))
        rows = [
            (name, field, name in required, str(field.get("description", "")))
            for name, field in fields.get("properties", {}).items()
        ]
        if rows:
            parts.append(_table(rows))
    answers = [
        f"<li><b>{escape(str(code))}</b> {escape(str(answer.get('description', '')))}</li>"
        for code, answer in operation.get("responses", {}).items()
    ]
    parts.append(f"<h3>Answers</h3><ul>{''.join(answers)}</ul></section>")
    return "\n".join(parts)


def _table(rows: list[tuple[str, Mapping[str, Any], bool, str]]) -> str:
    head = "<tr><th>name</th><th>type</th><th>required</th><th>limits</th><th></th></tr>"
    body = "".join(
        f"<tr><td><code>{escape(name)}</code></td><td><code>{escape(_type(schema))}</code></td>"
        f"<td>{'yes' if required else 'no'}</td><td>{escape(_limits(schema))}</td>"
        f"<td>{escape(description)}</td></tr>"
        for name, schema, required, description in rows
    )
    return f"<table>{head}{body}</table>"


def _resolve(schema: Mapping[str, Any], schemas: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = str(schema.get("$ref", ""))
    found: Mapping[str, Any] = schemas.get(ref.rsplit("/", 1)[-1], {}) if ref else schema
    return found


def _type(schema: Mapping[str, Any]) -> str:
    """A schema as a short type: ``str``, ``list[str]``, ``dict[str, str]``, ``A | null``."""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(_type(s) for s in schema[key])
    kind = str(schema.get("type", "any"))
    if kind == "array":
        return f"list[{_type(schema.get('items', {}))}]"
    if kind == "object" and isinstance(schema.get("additionalProperties"), Mapping):
        return f"dict[str, {_type(schema['additionalProperties'])}]"
    if "enum" in schema:
        return " | ".join(repr(v) for v in schema["enum"])
    return kind


def _limits(schema: Mapping[str, Any]) -> str:
    found = [f"{word} {schema[key]}" for key, word in CONSTRAINTS.items() if key in schema]
    for alternative in schema.get("anyOf", []):
        found += [_limits(alternative)] if _limits(alternative) else []
    if "default" in schema:
        found.append(f"default {schema['default']!r}")
    return ", ".join(found)


def _text(text: str) -> str:
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    return "".join(f"<p>{escape(p)}</p>" for p in paragraphs)
