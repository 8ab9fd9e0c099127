"""The audit stream of a real demo run: schema, reasons, chain, front door events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import jsonschema
import pytest
from _audit_support import audit_demo, jsonl_events
from _case_support import sign_in

from gateway.audit.schema import SCHEMA_PATH
from gateway.audit.verify import verify_chain
from gateway.demo.check import check_demo
from gateway.demo.runner import DemoStack, run_demo

pytestmark = pytest.mark.anyio

FRONT_DOOR_EVENTS = {
    "ClientRegistered",
    "AuthorizationRequested",
    "ConsentGranted",
    "UserSignedIn",
    "TokenIssued",
    "RefreshTokenReused",
    "TokenRequestFailed",
}


def schema_validator() -> jsonschema.Draft202012Validator:
    """Return a validator of the published schema file, formats checked."""
    schema = json.loads(Path(SCHEMA_PATH).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def schema_errors(events: list[dict[str, Any]]) -> list[str]:
    validator = schema_validator()
    return [
        f"{event['type']}: {error.message}"
        for event in events
        for error in validator.iter_errors(event)
    ]


async def wait_for_delivery(stack: DemoStack) -> None:
    bus = stack.gateway.runtime.bus
    with anyio.fail_after(10):
        while any(bus.pending().values()):
            await anyio.sleep(0.02)


async def test_demo_run_events_match_schema(tmp_path: Path) -> None:
    """Every event of the demo self-check validates against the published schema."""
    async with run_demo(ephemeral=True, var_dir=tmp_path) as stack:
        assert await check_demo(stack, echo=lambda _line: None)
        await wait_for_delivery(stack)
        events = jsonl_events(stack.audit_path)

    assert len(events) > 50
    assert schema_errors(events) == []
    types = {event["type"] for event in events}
    assert {"AccessDenied", "AuthorizationRejected", "ResponseCompleted"} <= types
    for event in events:
        assert event["schema_version"] == 1
        assert event["time"].endswith("Z")
        assert datetime.fromisoformat(event["time"]).tzinfo == UTC
        if event["outcome"] != "success":
            assert event["reason"], event
    report = verify_chain([stack.audit_path])
    assert report.problem is None
    assert report.records == len(events)


async def test_front_door_events_reach_audit_sinks(tmp_path: Path) -> None:
    """Registration, consent, sign-in, token and refresh-reuse events reach the file."""
    audit = {"sinks": [{"kind": "jsonl"}]}
    async with audit_demo(tmp_path / "var", audit) as stack:
        storage = await sign_in(stack, "partners")
        assert storage.tokens is not None
        assert storage.client_info is not None
        form = {
            "grant_type": "refresh_token",
            "refresh_token": storage.tokens.refresh_token or "",
            "client_id": storage.client_info.client_id or "",
        }
        token_url = stack.urls["gateway"] + "/oauth2/token"
        async with httpx.AsyncClient(timeout=10.0) as client:
            first = await client.post(token_url, data=form)
            replayed = await client.post(token_url, data=form)
        assert first.status_code == 200, first.text
        assert replayed.status_code == 400, replayed.text
        await wait_for_delivery(stack)
        events = jsonl_events(stack.audit_path)

    types = [event["type"] for event in events]
    assert set(types) >= FRONT_DOOR_EVENTS
    assert types.count("TokenIssued") == 2
    reused = next(e for e in events if e["type"] == "RefreshTokenReused")
    assert reused["outcome"] == "denied"
    assert reused["reason"] == "refresh_token_reused"
    assert reused["user"]["sub"] == "00u_alice"
    assert reused["client_id"] == storage.client_info.client_id
    signed_in = next(e for e in events if e["type"] == "UserSignedIn")
    assert signed_in["agent"]["id"] == "cursor"
    assert signed_in["request_id"]
    assert schema_errors(events) == []
    assert verify_chain([stack.audit_path]).problem is None
