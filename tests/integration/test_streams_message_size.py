"""Message sizes: multi-MiB messages pass intact, larger ones fail per request."""

from __future__ import annotations

import json

import pytest
from _streams_support import (
    events_of,
    open_session,
    patterned_text,
    sdk_stack,
    tool_call,
)
from _transport_harness import BackendControls

from gateway.events import BackendFailed

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024


def answer_of(content: bytes, content_type: str) -> dict[str, object]:
    if content_type.startswith("text/event-stream"):
        return dict(json.loads([e.data for e in events_of(content) if e.data][-1]))
    return dict(json.loads(content))


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
async def test_streams_multi_mib_result_intact(json_response: bool) -> None:
    """A tool result of several MiB (about 7 MiB as one message) arrives intact."""
    size = 2_500_000
    async with sdk_stack(json_response=json_response) as (gateway, client):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.post(
            gateway.mcp_url, json=tool_call(1, "sized", size=size), headers=headers
        )
        await gateway.settle()
        failed = gateway.events_of(BackendFailed)
    answer = answer_of(response.content, response.headers["content-type"])
    result = answer["result"]
    assert isinstance(result, dict)
    assert len(response.content) > 5 * MIB
    assert answer["id"] == 1
    assert result["content"][0]["text"] == patterned_text(size)
    assert failed == []


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
async def test_streams_message_over_cap_error_for_id(json_response: bool) -> None:
    """A message over ``max_message_bytes`` fails that request with a clear error."""
    async with sdk_stack(
        json_response=json_response, server_options={"max_message_bytes": MIB}
    ) as (gateway, client):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.post(
            gateway.mcp_url, json=tool_call(2, "sized", size=MIB), headers=headers
        )
        after = await client.post(
            gateway.mcp_url,
            json=tool_call(3, "echo", text="still fine"),
            headers=headers,
        )
        await gateway.settle()
        failed = gateway.events_of(BackendFailed)
    answer = answer_of(response.content, response.headers["content-type"])
    error = answer["error"]
    assert isinstance(error, dict)
    assert response.status_code == 200
    assert len(response.content) < 4096
    assert answer["id"] == 2
    assert error["code"] == -32603
    assert error["data"]["reason"] == "backend_message_too_large"
    assert [event.reason for event in failed] == ["backend_message_too_large"]
    assert b"still fine" in after.content


async def test_streams_multi_mib_request_reaches_backend_intact() -> None:
    """A request of several MiB under ``max_body_bytes`` reaches the backend intact."""
    text = patterned_text(3_500_000)
    controls = BackendControls()
    async with sdk_stack(controls, max_body_bytes=8 * MIB) as (gateway, client):
        headers = await open_session(client, gateway.mcp_url)
        body = tool_call(4, "echo", text=text)
        sent = len(json.dumps(body, ensure_ascii=False).encode())
        response = await client.post(gateway.mcp_url, json=body, headers=headers)
    [received] = [
        message
        for message in controls.messages()
        if message.get("method") == "tools/call"
    ]
    answer = answer_of(response.content, response.headers["content-type"])
    result = answer["result"]
    assert isinstance(result, dict)
    assert sent > 5 * MIB
    assert received["params"]["arguments"]["text"] == text
    assert result["content"][0]["text"] == text


async def test_streams_request_over_max_body_413() -> None:
    """A request over ``max_body_bytes`` gets 413 with a JSON-RPC error."""
    async with sdk_stack(max_body_bytes=MIB) as (gateway, client):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.post(
            gateway.mcp_url,
            json=tool_call(5, "echo", text="x" * (2 * MIB)),
            headers=headers,
        )
    body = response.json()
    assert response.status_code == 413
    assert body["error"]["data"]["reason"] == "body_too_large"
