"""The printable description of resolved chains that ``agent-proxy check`` shows.

Settings are printed as JSON with secrets masked. Masked are the value of
every key whose name suggests a credential (see :data:`SECRET_KEY`), every
value of a ``headers`` mapping (such as an audit webhook's), and every value
that the file writes as a ``${VAR}`` reference, because a value kept out of
the file is usually kept out for a reason.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from gateway.chains import ANONYMOUS_FACTS, BackendChainPlan
from pipeline import StageDeclaration

MASK = "***"
"""The text that replaces a masked value."""

SECRET_KEY = re.compile(
    r"secret|token|passw|assertion|authorization|credential|cookie|key(?!s)",
    re.IGNORECASE,
)
"""Setting names whose values are masked: ``client_secret``, ``X-Api-Key``,
``bearer_token``, ``password``, ... (but not ``max_keys``)."""


def describe(
    plan: BackendChainPlan, *, raw_stages: dict[str, Any] | None = None
) -> list[str]:
    """Return printable lines describing one backend's chain.

    Args:
        plan: The backend's validated chain.
        raw_stages: The ``stages`` mapping as written in the file, before
            ``${VAR}`` interpolation; values written as references are
            masked. None masks by key name only.
    """
    source = (
        "pipeline, the default chain"
        if plan.source == "pipeline"
        else f"{plan.source}, its own chain"
    )
    lines = [f"backend {plan.backend} ({source}):"]
    if plan.anonymous:
        given = ", ".join(sorted(ANONYMOUS_FACTS))
        lines.append(f"  anonymous: the gateway provides {given} before the chain")
    raw_stages = raw_stages or {}
    for index, decl in enumerate(plan.plan.declarations):
        lines.extend(_describe_stage(index, decl, raw_stages.get(decl.ref)))
    return lines


def _describe_stage(index: int, decl: StageDeclaration, raw: Any) -> list[str]:
    cls = decl.cls
    terminal = " (terminal)" if cls.terminal else ""
    # A class path is its own type name, so it is not repeated.
    kind = "import path" if ":" in decl.type_name else f"type {decl.type_name}"
    if decl.instance is not None:
        kind += f", instance {decl.instance}"
    if decl.origin.kind == "entry point":
        kind += f", {decl.origin}"
    before: frozenset[str] = getattr(cls, "before", frozenset())
    after: frozenset[str] = getattr(cls, "after", frozenset())
    lines = [
        f"  {index + 1}. {decl.ref}{terminal}  [{kind}]",
        f"       requires: {_names(cls.requires)}  provides: {_names(cls.provides)}"
        f"  before: {_names(before)}  after: {_names(after)}",
    ]
    events = getattr(cls, "events", ())
    if events:
        lines.append(f"       events: {', '.join(e.__name__ for e in events)}")
    settings = masked_settings(decl.settings, raw)
    if settings:
        encoded = msgspec.json.encode(settings).decode()
        lines.append(f"       settings: {encoded}")
    return lines


def masked_settings(settings: msgspec.Struct, raw: Any) -> Any:
    """Return decoded settings as plain data, with secrets replaced by ``***``.

    Args:
        settings: The decoded settings Struct.
        raw: The same settings as written in the file, or None.
    """
    return _mask(msgspec.to_builtins(settings), raw)


def _mask(value: Any, raw: Any) -> Any:
    if isinstance(raw, str) and "${" in raw:
        return MASK
    if isinstance(value, dict):
        raw_map = raw if isinstance(raw, dict) else {}
        return {
            key: _mask_item(key, item, raw_map.get(key)) for key, item in value.items()
        }
    if isinstance(value, list):
        raw_list = raw if isinstance(raw, list) else []
        return [
            _mask(item, raw_list[i] if i < len(raw_list) else None)
            for i, item in enumerate(value)
        ]
    return value


def _mask_item(key: Any, item: Any, raw: Any) -> Any:
    if item in (None, "", [], {}):
        return item
    if SECRET_KEY.search(str(key)):
        return MASK
    if key == "headers" and isinstance(item, dict):
        # Headers exist to carry credentials, whatever their names.
        return dict.fromkeys(item, MASK)
    return _mask(item, raw)


def _names(names: Any) -> str:
    return ", ".join(sorted(names)) or "-"
