"""Finding a platform's controller from its spec without validating the whole spec.

Commands that only ask the controller something (``status``, ``scale``, ``events``…)
need two fields of the spec: ``controller.api`` and ``controller.state_dir`` (where the
token is). Building the pydantic models costs more than the rest of such a command, so
this module reads those two fields from the YAML alone. It imports neither pydantic nor
the models; the models take their defaults and the address check from here, so both
readings of a spec agree (a unit test holds them to it).

When the two fields cannot be read plainly (no file, bad YAML, a value of the wrong
shape) ``locate_platform`` returns None and the caller loads the spec fully, which
reports the problem with its file, line and column. A spec that never mentions
``controller`` is not parsed at all: the defaults hold whatever the rest says, and the
rest is checked by the commands that use it (``validate``, ``plan``, ``apply``, ``up``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alwayson.util.addresses import split_hostport

DEFAULT_API = "127.0.0.1:7070"
DEFAULT_STATE_DIR = ".alwayson"
_BLOCK_SPEC = re.compile(r"^platform:", re.MULTILINE)


def normalize_listen(value: str) -> str:
    """``host:port`` with an IP host (``7070`` → ``127.0.0.1:7070``); ValueError if not."""
    host, port = split_hostport(value)
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"{value!r}: the host must be an IP address like 127.0.0.1") from exc
    return f"{host}:{port}"


@dataclass(frozen=True)
class PlatformAddress:
    """Where a platform's controller answers and where its state (and token) live."""

    api: str
    state_dir: Path


def locate_platform(path: Path) -> PlatformAddress | None:
    """The controller's address and state directory from the spec at ``path``, or None
    when they cannot be read without the full loader (which then explains why)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if "controller" not in text and "\\" not in text and _BLOCK_SPEC.search(text):
        # A block mapping with `platform:` where no key can spell `controller` (only an
        # escape in a quoted key could hide it): the defaults hold, and the YAML parser
        # (a sixth of a second) is not needed.
        return PlatformAddress(DEFAULT_API, (path.resolve().parent / DEFAULT_STATE_DIR).resolve())
    document = _parse(text)
    if not isinstance(document, dict):
        return None
    controller = document.get("controller", {})
    if not isinstance(controller, dict):
        return None
    api = controller.get("api", DEFAULT_API)
    state_dir = controller.get("state_dir", DEFAULT_STATE_DIR)
    if not isinstance(api, str | int) or isinstance(api, bool) or not isinstance(state_dir, str):
        return None
    try:
        address = normalize_listen(str(api))
    except ValueError:
        return None
    return PlatformAddress(address, (path.resolve().parent / state_dir).resolve())


def _parse(text: str) -> Any:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    from alwayson.spec.bounds import check_size
    from alwayson.util.errors import SpecError

    try:
        check_size(text, "spec")  # the safe loader shares aliased nodes: no bomb here
        return YAML(typ="safe").load(text)
    except (YAMLError, ValueError, SpecError, RecursionError):
        return None
