"""Rules the published schema adds to the Structs: present fields, formats, reasons."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from gateway.audit.chain import encode_record
from gateway.audit.schema import audit_schema
from gateway.events import AccessDenied, ResponseCompleted


def errors_of(record: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(audit_schema())
    return [error.message for error in validator.iter_errors(record)]


def denied_record(**changes: Any) -> dict[str, Any]:
    event = AccessDenied(
        detail="tool is denied", outcome="denied", reason="tool_denied"
    )
    record: dict[str, Any] = json.loads(encode_record(event, "ab" * 32))
    record.update(changes)
    return record


def test_schema_accepts_chained_record() -> None:
    """A record as the sinks write it is valid."""
    assert errors_of(denied_record()) == []


def test_schema_denial_without_reason_rejected() -> None:
    """A denied or error outcome must carry a reason."""
    assert errors_of(denied_record(reason=None))
    completed = json.loads(
        encode_record(
            ResponseCompleted(
                status=502,
                duration_ms=1.5,
                streamed=False,
                bytes_sent=0,
                outcome="error",
            ),
            None,
        )
    )
    assert errors_of(completed)
    assert errors_of({**completed, "reason": "backend_unreachable"}) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"schema_version": 2},
        {"id": "not-hex"},
        {"prev_hash": "abc"},
        {"trace_id": "0" * 31},
        {"span_id": "g" * 16},
        {"outcome": "maybe"},
    ],
)
def test_schema_malformed_field_rejected(changes: dict[str, Any]) -> None:
    """Wrong versions, ids, hashes and outcomes fail validation."""
    assert errors_of(denied_record(**changes))


def test_schema_missing_field_rejected() -> None:
    """Every field of an event is required, nulls included."""
    record = denied_record()
    del record["prev_hash"]
    assert errors_of(record)
