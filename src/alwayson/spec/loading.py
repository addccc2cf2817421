"""Loading ``alwayson.yaml`` with errors that name the file, line, column and field.

A bad spec is rejected whole: every problem is reported at once and nothing is returned.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from alwayson.spec.bounds import check_bounds
from alwayson.spec.commands import CommandNotFound, check_run, service_variables
from alwayson.spec.models import Location, PlatformSpec, consistency_problems
from alwayson.util.errors import SpecError, SpecProblem


@dataclass(frozen=True)
class LoadedSpec:
    spec: PlatformSpec
    path: Path
    text: str

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def state_dir(self) -> Path:
        return (self.folder / self.spec.controller.state_dir).resolve()

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.spec.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def load_spec_file(path: str | Path, *, check_commands: bool = True) -> LoadedSpec:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            [SpecProblem(str(path), 1, 1, "", "no such file; pass the spec with -f FILE")]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([SpecProblem(str(path), 1, 1, "", f"cannot read: {exc}")]) from None
    return load_spec_text(text, file.resolve(), display=str(path), check_commands=check_commands)


def load_spec_text(
    text: str, path: Path, *, display: str | None = None, check_commands: bool = True
) -> LoadedSpec:
    name = display or str(path)
    yaml = YAML(typ="rt")
    try:
        check_bounds(text, name)
        document = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise SpecError([SpecProblem(name, line, col, "", f"YAML: {exc.problem}")]) from None
    if not isinstance(document, dict):
        raise SpecError(
            [SpecProblem(name, 1, 1, "", "the spec must be a mapping with 'platform:'")]
        )
    try:
        spec = PlatformSpec.model_validate(_plain(document))
    except ValidationError as exc:
        problems = [
            _problem(name, document, tuple(err["loc"]), _message(err)) for err in exc.errors()
        ]
        raise SpecError(_dedupe(problems)) from None
    located = [_problem(name, document, loc, msg) for loc, msg in consistency_problems(spec)]
    if check_commands:
        for index, svc in enumerate(spec.services):
            try:
                check_run(svc.run, path.parent, service_variables(spec, svc))
            except CommandNotFound as exc:
                located.append(_problem(name, document, ("services", index, "run"), str(exc)))
    if located:
        raise SpecError(located)
    return LoadedSpec(spec=spec, path=path, text=text)


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _message(err: Any) -> str:
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling; `alwayson schema` lists every field)"
    return msg


def _dedupe(problems: list[SpecProblem]) -> list[SpecProblem]:
    seen: set[str] = set()
    out = []
    for p in problems:
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return out


def _problem(file: str, document: Any, loc: Location, message: str) -> SpecProblem:
    """Find the line and column of ``loc`` in the document, naming list items by name."""
    node = document
    line, col = 1, 1
    parts: list[str] = []
    for key in loc:
        if isinstance(node, CommentedMap) and key in node:
            pos = node.lc.key(key)
            line, col = pos[0] + 1, pos[1] + 1
            parts.append(str(key) if not parts else f".{key}")
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(key, int) and key < len(node):
            pos = node.lc.item(key)
            line, col = pos[0] + 1, pos[1] + 1
            item = node[key]
            label = item.get("name") if isinstance(item, dict) else None
            parts.append(f"[{key}]" if label is None else f"[{key}:{label}]")
            node = item
        else:
            # pydantic names union members (e.g. 'int', 'dict[str,int]'); those are not keys.
            if isinstance(key, str) and ("[" in key or key in {"int", "str", "float", "bool"}):
                continue
            parts.append(str(key) if not parts else f".{key}")
    return SpecProblem(file, line, col, "".join(parts), message)
