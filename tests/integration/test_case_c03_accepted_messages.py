"""Case C03: accepted notifications and responses get 202 with an empty body.

Whatever 2xx the backend used, the client sees 202 and no body. Input the
gateway cannot accept gets an HTTP error status, and a request (a message
with an ``id``) never gets 202.

Covered elsewhere and not repeated here:

- ``test_transport_http.py::test_transport_http_notification_and_response_202``:
  ``notifications/cancelled`` and a client response (``id: "srv-9"``) get 202
  with no body.
- ``test_transport_faults.py``,
  ``test_transport_faults_notification_chain_exception_not_2xx``: a
  notification the chain failed on gets an HTTP error.
- ``test_case_c01_sse_streaming.py``,
  ``test_sse_elicitation_answered_mid_call_through_gateway``: the client's
  response to a server-to-client request reaches the backend and gets 202.

The scripted backend is used where the official SDK server cannot produce
the reply: it always answers a notification with 202, and a request never
with 202.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest
from _case_support import (
    SCRIPTED_SESSION,
    Reply,
    ScriptedRequest,
    case_stack,
    initialize_reply,
    json_reply,
    modern_request,
    open_session,
    scripted_stack,
    session_headers,
    tools_call,
)
from _transport_harness import MCP_HEADERS, initialize_body

pytestmark = pytest.mark.anyio

INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
PROGRESS = {
    "jsonrpc": "2.0",
    "method": "notifications/progress",
    "params": {"progressToken": "p", "progress": 1},
}


def acknowledging_backend(ack: Reply, request_reply: Reply | None = None) -> Any:
    """Script a backend: initialize works, notifications get ``ack``."""

    async def script(request: ScriptedRequest) -> Reply:
        message = request.message
        if message.get("method") == "initialize":
            return initialize_reply(message, SCRIPTED_SESSION)
        if "id" not in message:
            return ack
        if request_reply is not None:
            return request_reply
        return json_reply({"jsonrpc": "2.0", "id": message["id"], "result": {}})

    return script


def assert_accepted(response: httpx.Response) -> None:
    assert response.status_code == 202
    assert response.content == b""
    assert "content-type" not in response.headers


async def test_initialized_notification_gets_202_empty_body() -> None:
    """notifications/initialized gets 202 with no body and no type (C03)."""
    async with case_stack() as (gateway, client, controls):
        opened = await client.post(
            gateway.mcp_url, json=initialize_body(), headers=MCP_HEADERS
        )
        headers = session_headers(opened.headers["mcp-session-id"])
        response = await client.post(gateway.mcp_url, json=INITIALIZED, headers=headers)
        forwarded = controls.posts("notifications/initialized")
    assert_accepted(response)
    assert len(forwarded) == 1


@pytest.mark.parametrize(
    "ack",
    [
        Reply(200),
        Reply(200, {"content-type": "application/json"}, [b"{}"]),
        Reply(204),
        Reply(202, {"content-type": "application/json"}),
        Reply(200, {"content-type": "text/event-stream"}),
    ],
    ids=["200-empty", "200-json", "204", "202", "200-sse"],
)
async def test_backend_2xx_notification_ack_becomes_202(ack: Reply) -> None:
    """Any 2xx from the backend for a notification reaches the client as 202 (C03)."""
    async with scripted_stack(acknowledging_backend(ack)) as (gateway, client, backend):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.post(gateway.mcp_url, json=PROGRESS, headers=headers)
        still_works = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers=headers,
        )
    assert_accepted(response)
    assert len(backend.posts("notifications/progress")) == 1
    assert still_works.status_code == 200


@pytest.mark.parametrize("status", [400, 404, 500])
async def test_backend_rejected_notification_not_acknowledged(status: int) -> None:
    """A notification the backend refused gets an HTTP error, not 202 (C03)."""
    ack = Reply(status, {"content-type": "text/plain"}, [b"no"])
    async with scripted_stack(acknowledging_backend(ack)) as (gateway, client, _b):
        opened = await client.post(
            gateway.mcp_url, json=initialize_body(), headers=MCP_HEADERS
        )
        headers = session_headers(opened.headers["mcp-session-id"])
        response = await client.post(gateway.mcp_url, json=PROGRESS, headers=headers)
    assert response.status_code >= 400
    assert response.json()["id"] is None


async def test_unacceptable_notifications_get_4xx() -> None:
    """Notifications with no, an unknown or a malformed session get 4xx (C03)."""
    malformed = {"jsonrpc": "2.0", "method": "notifications/progress", "params": [1]}
    async with case_stack() as (gateway, client, _controls):
        headers = await open_session(client, gateway.mcp_url)
        no_session = await client.post(
            gateway.mcp_url, json=PROGRESS, headers=MCP_HEADERS
        )
        unknown = await client.post(
            gateway.mcp_url, json=PROGRESS, headers=session_headers("gw-unknown")
        )
        bad_shape = await client.post(gateway.mcp_url, json=malformed, headers=headers)
        bad_response = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": "srv-1"},
            headers=headers,
        )
    assert no_session.status_code == 400
    assert unknown.status_code == 404
    assert bad_shape.status_code == 400
    assert bad_response.status_code == 400
    for response in (no_session, unknown, bad_shape, bad_response):
        assert response.json()["error"]["code"] == -32600


async def test_request_answered_with_202_stream_gets_200() -> None:
    """A request the backend answered with 202 and a stream is sent as 200 (C03)."""

    event = msgspec.json.encode(
        {"jsonrpc": "2.0", "id": 5, "result": {"content": [], "isError": False}}
    )
    stream_reply = Reply(
        202, {"content-type": "text/event-stream"}, [b"data: " + event + b"\n\n"]
    )
    script = acknowledging_backend(Reply(202), stream_reply)
    async with scripted_stack(script) as (gateway, client, _backend):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.post(
            gateway.mcp_url, json=tools_call(5, "any"), headers=headers
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert event in response.content


async def test_request_answered_with_empty_202_gets_jsonrpc_error() -> None:
    """A request the backend answered with an empty 202 gets 200 and an error (C03)."""
    script = acknowledging_backend(Reply(202), Reply(202))
    async with scripted_stack(script) as (gateway, client, _backend):
        headers = await open_session(client, gateway.mcp_url)
        listed = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": "L1", "method": "tools/list"},
            headers=headers,
        )
    assert listed.status_code == 200
    assert listed.headers["content-type"] == "application/json"
    assert listed.json()["id"] == "L1"
    assert listed.json()["error"]["code"] == -32603


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
async def test_requests_get_200_json_or_event_stream(json_response: bool) -> None:
    """Requests are answered 200 with JSON or an event stream, never 202 (C03)."""
    async with case_stack(json_response=json_response) as (gateway, client, _c):
        headers = await open_session(client, gateway.mcp_url)
        responses = [
            await client.post(gateway.mcp_url, json=message, headers=headers)
            for message in (
                {"jsonrpc": "2.0", "id": 1, "method": "ping"},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                tools_call(3, "echo", text="x"),
            )
        ]
    for response in responses:
        assert response.status_code == 200
        media_type = response.headers["content-type"].split(";")[0]
        assert media_type in ("application/json", "text/event-stream")
        assert response.content


async def test_modern_notification_gets_202_empty_body() -> None:
    """A 2026-07-28 notification needs no session and gets 202 (C03)."""
    body, headers = modern_request(None, "notifications/progress", PROGRESS["params"])
    del body["id"]
    async with case_stack() as (gateway, client, _controls):
        response = await client.post(gateway.mcp_url, json=body, headers=headers)
    assert_accepted(response)
