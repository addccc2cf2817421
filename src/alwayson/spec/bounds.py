"""Limits on a spec's size, checked before the YAML is built into objects.

A spec arrives from the operator's disk or, through the API, from anyone holding a token,
and YAML can make a tiny text expensive: an alias bomb (``b: [*a, *a, ...]`` nine levels
deep) is 300 bytes that expand to millions of nodes, and deeply nested flow collections
(``[[[[...]]]]``) make ruamel's scanner quadratic and its composer overflow Python's
stack. Three bounds, each with the position where it was crossed:

- the text is at most :data:`MAX_SPEC_BYTES`;
- collections nest at most :data:`MAX_DEPTH` deep (flow collections by a bracket count
  over the raw text, so the scanner never sees a deep one; block collections from the
  event stream);
- the document has at most :data:`MAX_NODES` nodes *after* expanding aliases, counted
  from ruamel's event stream (an alias adds the size of the node it names), so the check
  stops at the first event past the bound without building anything.

A real spec is far inside all three: the sample bank (15 services, a database, alerts) is
4 KB, 7 levels and 556 nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ruamel.yaml import YAML
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    ScalarEvent,
)

from alwayson.util.errors import SpecError, SpecProblem

MAX_SPEC_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_NODES = 20_000
"""Nodes after alias expansion: about 500 services' worth."""

__all__ = ["MAX_DEPTH", "MAX_NODES", "MAX_SPEC_BYTES", "check_bounds", "check_size"]


@dataclass
class _Open:
    nodes: int
    anchor: str | None


def check_bounds(text: str, name: str) -> None:
    """Raise :class:`SpecError` when ``text`` is too large, too deep or expands too far.

    YAML syntax errors are left to the loader (they raise ruamel's own errors here)."""
    check_size(text, name)
    _count_nodes(text, name)


def check_size(text: str, name: str) -> None:
    """The cheap half of :func:`check_bounds`: the text's size and its flow nesting, with
    no YAML parsing (for readers that do not expand aliases)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_SPEC_BYTES:
        raise SpecError(
            [
                SpecProblem(
                    name,
                    1,
                    1,
                    "",
                    f"the spec is {size:,} bytes; the limit is {MAX_SPEC_BYTES:,} "
                    "(split a large platform's alerts or dashboards out of it)",
                )
            ]
        )
    deep = _too_deep(text)
    if deep is not None:
        raise _deep(name, *deep)


def _deep(name: str, line: int, column: int) -> SpecError:
    message = f"collections nest more than {MAX_DEPTH} deep here; no spec field needs that"
    return SpecError([SpecProblem(name, line, column, "", message)])


def _count_nodes(text: str, name: str) -> None:
    sizes: dict[str, int] = {}
    stack: list[_Open] = []
    for event in YAML(typ="rt").parse(text):
        if isinstance(event, CollectionStartEvent):
            stack.append(_Open(1, event.anchor))
            if len(stack) > MAX_DEPTH:
                raise _deep(name, event.start_mark.line + 1, event.start_mark.column + 1)
            continue
        if isinstance(event, ScalarEvent):
            nodes = 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, AliasEvent):
            nodes = sizes.get(str(event.anchor), 1)
        elif isinstance(event, CollectionEndEvent) and stack:
            done = stack.pop()
            nodes = done.nodes
            if done.anchor:
                sizes[done.anchor] = nodes
        else:
            continue
        if not stack:
            continue
        stack[-1].nodes += nodes
        if stack[-1].nodes > MAX_NODES:
            mark = event.start_mark
            raise SpecError(
                [
                    SpecProblem(
                        name,
                        mark.line + 1,
                        mark.column + 1,
                        "",
                        f"the spec holds more than {MAX_NODES:,} values by here, counting "
                        "each use of a YAML alias as a copy of what it names; no platform "
                        "needs that many (an alias bomb does)",
                    )
                ]
            )


def _too_deep(text: str) -> tuple[int, int] | None:
    """The line and column where flow collections (``[``, ``{``) first nest past
    :data:`MAX_DEPTH`, skipping quoted strings and comments (block collections are
    counted from the event stream: their scanning is linear)."""
    depth = 0
    line, col = 1, 0
    quote = ""
    comment = False
    previous = "\n"
    for char in text:
        col += 1
        if char == "\n":
            line, col = line + 1, 0
            comment = False  # a quoted scalar goes on over the line's end
        elif comment:
            pass
        elif quote:
            if char == quote and previous != "\\":
                quote = ""
        elif char in "'\"" and previous in " \t\n,[{:":
            quote = char
        elif char == "#" and previous in " \t\n":
            comment = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line, col
        elif char in "]}":
            depth = max(0, depth - 1)
        previous = char
    return None
