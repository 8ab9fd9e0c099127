"""The published JSON Schema of the audit events, generated from the Structs.

Run ``python -m gateway.audit.schema`` to print it; the file in
``observability/`` is this output, and a test fails when it is stale.
"""

from __future__ import annotations

import sys
from typing import Any, Union, get_args

import msgspec

from gateway.events import SCHEMA_VERSION, audit_event_union

SCHEMA_PATH = "observability/audit-events.schema.json"


def audit_schema() -> dict[str, Any]:
    """Return the JSON Schema (2020-12) of one audit event line."""
    # Only the gateway's own events: plug-in stages may define more, and
    # whether they are imported must not change the published file.
    own = [
        cls
        for cls in get_args(audit_event_union())
        if cls.__module__.startswith("gateway.")
    ]
    schema = msgspec.json.schema(Union[tuple(own)])  # noqa: UP007
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:okta-agent-proxy:audit-events:v{SCHEMA_VERSION}",
        "title": f"Okta Agent Proxy audit event, schema version {SCHEMA_VERSION}",
        **schema,
    }


def render() -> str:
    """Return the schema as the text stored in ``observability/``."""
    return (
        msgspec.json.format(msgspec.json.encode(audit_schema()), indent=2).decode()
        + "\n"
    )


if __name__ == "__main__":
    sys.stdout.write(render())
