"""A client whose ``Accept`` excludes event streams gets JSON answers only."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from _streams_support import (
    RawResponder,
    open_session,
    raw_stack,
    sdk_stack,
    tool_call,
)
from _transport_harness import BackendControls

from gateway.events import BackendFailed

pytestmark = pytest.mark.anyio

JSON_ONLY = [
    "application/json",
    "application/json, text/event-stream;q=0",
]


@pytest.mark.parametrize("accept", JSON_ONLY)
async def test_streams_json_only_client_gets_json_answer(accept: str) -> None:
    """The backend's event stream becomes a JSON body with just the response."""
    async with sdk_stack() as (gateway, client):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.post(
            gateway.mcp_url,
            json=tool_call(11, "slow_steps", steps=3, pause=0.02),
            headers={**headers, "accept": accept},
        )
        await gateway.settle()
        failed = gateway.events_of(BackendFailed)
    body = response.json()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert b"notifications/progress" not in response.content
    assert body["id"] == 11
    assert body["result"]["content"][0]["text"] == "done after 3 steps"
    assert failed == []


async def test_streams_json_only_client_stream_without_answer_error() -> None:
    """A stream that ends without the response gives a JSON-RPC error body."""

    async def reply(message: dict[str, Any], responder: RawResponder) -> None:
        await responder.start(200, {"content-type": "text/event-stream"})
        # A priming event with an id: a client that reads streams could
        # resume, but this one cannot.
        await responder.write(b"id: prime-1\ndata: \n\n")
        progress = {"jsonrpc": "2.0", "method": "notifications/progress"}
        await responder.write(f"data: {json.dumps(progress)}\n\n".encode())
        await responder.end()

    async with raw_stack(reply) as (gateway, client, _backend):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": "list-1", "method": "tools/list"},
            headers={**headers, "accept": "application/json"},
        )
        await gateway.settle()
        failed = gateway.events_of(BackendFailed)
    body = response.json()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert body["id"] == "list-1"
    assert body["error"]["data"]["reason"] == "backend_invalid_response"
    assert [event.reason for event in failed] == ["backend_invalid_response"]


async def test_streams_json_only_client_deadline_error() -> None:
    """Past the deadline, a JSON-only client gets the deadline error as JSON."""
    controls = BackendControls()
    async with sdk_stack(controls, backend_options={"deadline": 0.4}) as (
        gateway,
        client,
    ):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.post(
            gateway.mcp_url,
            json=tool_call(12, "gated"),
            headers={**headers, "accept": "application/json"},
        )
        with anyio.fail_after(5):
            await controls.cancelled.wait()
    body = response.json()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert body["id"] == 12
    assert body["error"]["data"]["reason"] == "backend_deadline"


async def test_streams_json_only_client_oversized_event_error() -> None:
    """An event over ``max_message_bytes`` gives a JSON error, not a hang."""
    async with sdk_stack(server_options={"max_message_bytes": 64 * 1024}) as (
        gateway,
        client,
    ):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.post(
            gateway.mcp_url,
            json=tool_call(13, "sized", size=100_000),
            headers={**headers, "accept": "application/json"},
        )
    body = response.json()
    assert response.status_code == 200
    assert body["id"] == 13
    assert body["error"]["data"]["reason"] == "backend_message_too_large"
