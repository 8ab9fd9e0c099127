"""The published audit event schema matches the event Structs."""

from __future__ import annotations

from pathlib import Path

import msgspec

from gateway.audit.schema import SCHEMA_PATH, audit_schema, render


def test_audit_schema_file_is_current() -> None:
    """The stored file equals the generated schema (see gateway.audit.schema)."""
    assert Path(SCHEMA_PATH).read_text() == render()


def test_audit_schema_lists_every_event_type() -> None:
    """Each concrete event class is a member of the schema's union."""
    schema = audit_schema()
    names = set(schema["$defs"])
    for required in (
        "AccessDenied",
        "TokenExchanged",
        "ResponseCompleted",
        "UserSignedIn",
    ):
        assert required in names
    assert "GatewayEvent" not in names


def test_audit_schema_is_valid_json() -> None:
    """The stored file parses as JSON."""
    assert msgspec.json.decode(Path(SCHEMA_PATH).read_bytes())["title"]
