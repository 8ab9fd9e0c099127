"""The published JSON Schema of the audit events, generated from the Structs.

Run ``python -m gateway.audit.schema`` to print it; the file in
``observability/`` is this output, and a test fails when it is stale.

msgspec generates the shape of each event. This module adds what the
Structs do not state: every field is present in a record, the formats of
the ids, hashes and time, and the rule that a ``denied`` or ``error``
outcome carries a ``reason``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Union, get_args

import msgspec

from gateway.events import SCHEMA_VERSION, GatewayEvent, audit_event_union

SCHEMA_PATH = "observability/audit-events.schema.json"

DESCRIPTION = (
    "One audit record, as the audit sinks write it: a JSON object per line "
    "in the jsonl and stdout sinks, an element of the events array in a "
    "webhook body, and the body of an OpenTelemetry log record. The type "
    "field names the event. Every record carries schema_version 1; fields may "
    "be added within a version, never removed or changed. The id is unique "
    "per event and stays the same when a sink delivers the event again, so "
    "receivers de-duplicate by it. prev_hash is the SHA-256 (hex) of the "
    "previous record of the same sink's stream in canonical form (keys "
    "sorted, no whitespace, UTF-8), null for a stream's first record."
)

_FIELD_FORMATS: dict[str, dict[str, Any]] = {
    "id": {
        "pattern": "^[0-9a-f]{32}$",
        "description": "Unique, time-ordered event id (32 hex digits); the "
        "de-duplication key.",
    },
    "time": {
        "format": "date-time",
        "description": "When the event happened, RFC 3339 in UTC.",
    },
    "schema_version": {"description": "The audit schema version."},
}
_NULLABLE_FORMATS: dict[str, dict[str, Any]] = {
    "trace_id": {"pattern": "^[0-9a-f]{32}$"},
    "span_id": {"pattern": "^[0-9a-f]{16}$"},
    "prev_hash": {"pattern": "^[0-9a-f]{64}$"},
}
_REASON_RULE = {
    "if": {
        "properties": {"outcome": {"enum": ["denied", "error"]}},
        "required": ["outcome"],
    },
    "then": {"properties": {"reason": {"type": "string"}}},
}


def audit_schema(extra: Sequence[type[GatewayEvent]] = ()) -> dict[str, Any]:
    """Return the JSON Schema (2020-12) of one audit event line.

    Args:
        extra: Event classes of custom stages to add to the gateway's own,
            as ``agent-proxy check --audit-schema`` does for the stages a
            config uses. The published file has none.
    """
    # Only the gateway's own events: plug-in stages may define more, and
    # whether they are imported must not change the published file.
    own = [
        cls
        for cls in get_args(audit_event_union())
        if cls.__module__.startswith("gateway.")
    ]
    own.extend(cls for cls in extra if cls not in own)
    schema = msgspec.json.schema(Union[tuple(own)])  # noqa: UP007
    for name in schema["discriminator"]["mapping"]:
        _complete_event(schema["$defs"][name])
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:okta-agent-proxy:audit-events:v{SCHEMA_VERSION}",
        "title": f"Okta Agent Proxy audit event, schema version {SCHEMA_VERSION}",
        "description": DESCRIPTION,
        **schema,
    }


def _complete_event(definition: dict[str, Any]) -> None:
    properties: dict[str, Any] = definition["properties"]
    # msgspec writes every field, defaults included, so each one is present.
    definition["required"] = list(properties)
    for field, extra in _FIELD_FORMATS.items():
        properties[field].update(extra)
    for field, extra in _NULLABLE_FORMATS.items():
        for branch in properties[field]["anyOf"]:
            if branch.get("type") == "string":
                branch.update(extra)
    definition.update(_REASON_RULE)


def render(extra: Sequence[type[GatewayEvent]] = ()) -> str:
    """Return the schema as the text stored in ``observability/``.

    Args:
        extra: Event classes of custom stages to include (see
            :func:`audit_schema`).
    """
    encoded = msgspec.json.encode(audit_schema(extra))
    return msgspec.json.format(encoded, indent=2).decode() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
