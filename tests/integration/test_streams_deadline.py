"""The backend ``deadline``: a request not answered in time is cancelled upstream."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import pytest
from _streams_support import events_of, open_session, sdk_stack, tool_call
from _transport_harness import BackendControls

from gateway.events import BackendFailed

pytestmark = pytest.mark.anyio

DEADLINE = 0.5


def cancellations(controls: BackendControls) -> list[dict[str, Any]]:
    return [
        message
        for message in controls.messages()
        if message.get("method") == "notifications/cancelled"
    ]


async def wait_for_cancellation(controls: BackendControls) -> None:
    with anyio.fail_after(5):
        await controls.cancelled.wait()


async def test_streams_deadline_stream_ends_with_error_event() -> None:
    """A stream past its deadline ends with a JSON-RPC error event for the id."""
    controls = BackendControls()
    async with sdk_stack(controls, backend_options={"deadline": DEADLINE}) as (
        gateway,
        client,
    ):
        headers = await open_session(client, gateway.mcp_url)
        started = time.perf_counter()
        response = await client.post(
            gateway.mcp_url, json=tool_call(7, "gated"), headers=headers
        )
        elapsed = time.perf_counter() - started
        await wait_for_cancellation(controls)
        await gateway.settle()
        failed = gateway.events_of(BackendFailed)
    messages = [e.data for e in events_of(response.content) if e.data]
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert "notifications/progress" in messages[0]
    last = json.loads(messages[-1])
    assert last["id"] == 7
    assert last["error"]["data"]["reason"] == "backend_deadline"
    assert DEADLINE <= elapsed < DEADLINE + 2
    assert [event.reason for event in failed] == ["backend_deadline"]
    [cancelled] = cancellations(controls)
    assert cancelled["params"]["requestId"] == 7


async def test_streams_deadline_json_answer_error_in_200() -> None:
    """A JSON answer past its deadline becomes HTTP 200 with a JSON-RPC error."""
    controls = BackendControls()
    async with sdk_stack(
        controls, json_response=True, backend_options={"deadline": DEADLINE}
    ) as (gateway, client):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.post(
            gateway.mcp_url, json=tool_call("call-8", "gated"), headers=headers
        )
        await wait_for_cancellation(controls)
        await gateway.settle()
        failed = gateway.events_of(BackendFailed)
    body = response.json()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert body["id"] == "call-8"
    assert body["error"]["code"] == -32603
    assert body["error"]["data"]["reason"] == "backend_deadline"
    assert body["error"]["data"]["backend"] == "employees"
    assert [event.reason for event in failed] == ["backend_deadline"]
    assert [c["params"]["requestId"] for c in cancellations(controls)] == ["call-8"]


async def test_streams_deadline_met_answer_relayed() -> None:
    """Requests answered within the deadline are relayed untouched."""
    controls = BackendControls()
    async with sdk_stack(controls, backend_options={"deadline": 5.0}) as (
        gateway,
        client,
    ):
        headers = await open_session(client, gateway.mcp_url)
        called = await client.post(
            gateway.mcp_url,
            json=tool_call(9, "slow_steps", steps=2, pause=0.05),
            headers=headers,
        )
        await gateway.settle()
        failed = gateway.events_of(BackendFailed)
    messages = [e.data for e in events_of(called.content) if e.data]
    assert len(messages) == 3
    assert "done after 2 steps" in messages[-1]
    assert failed == []
    assert cancellations(controls) == []
