"""Case C08: a backend that lost its session is re-initialized; unknown ids get 404.

When the backend answers 404 for its session, the gateway initializes a new
backend session with the original parameters, sends
``notifications/initialized`` and replays the request once. A second 404 or
a failed re-initialization becomes a JSON-RPC error for the request, with
HTTP 200, and the gateway session survives. Toward the client, an unknown
session gets 404, a missing one 400, and a wrong path a different 404.

Covered elsewhere and not repeated here:

- ``test_transport_sdk.py::test_transport_sdk_backend_restart_reinitialized``:
  the SDK client keeps its session across a backend restart.
- ``test_transport_http.py::test_transport_http_session_errors_400_and_404``:
  missing session 400, unknown or deleted session 404.
- ``tests/e2e/test_gateway_errors.py::test_unknown_session_gets_404``.

The backend here is scripted, because the official SDK server cannot be
told to forget its sessions while it keeps running.
"""

from __future__ import annotations

from typing import Any

import pytest
from _case_support import (
    HandshakeOnlyBackend,
    Reply,
    ScriptedRequest,
    answer_of,
    initialize_reply,
    json_reply,
    modern_request,
    open_session,
    scripted_stack,
    session_headers,
    tools_call,
)
from _transport_harness import MCP_HEADERS

pytestmark = pytest.mark.anyio


class ForgetfulBackend:
    """A backend whose sessions a test can drop, and whose replies can fail.

    Attributes:
        sessions: The session ids it currently accepts.
        always_lose: Reply 404 to every request but initialize.
        initialize_fails: Reply 500 to initialize.
    """

    def __init__(self) -> None:
        self.sessions: set[str] = set()
        self.issued = 0
        self.always_lose = False
        self.initialize_fails = False

    async def __call__(self, request: ScriptedRequest) -> Reply:
        message = request.message
        if message.get("method") == "initialize":
            if self.initialize_fails:
                return Reply(500, {"content-type": "text/plain"}, [b"down"])
            self.issued += 1
            session_id = f"backend-session-{self.issued}"
            self.sessions.add(session_id)
            return initialize_reply(message, session_id)
        session_id = request.headers.get("mcp-session-id")
        if self.always_lose or session_id not in self.sessions:
            error = {"code": -32000, "message": "unknown session"}
            return json_reply(
                {"jsonrpc": "2.0", "id": message.get("id"), "error": error}, 404
            )
        if "id" not in message:
            return Reply(202)
        result: dict[str, Any] = {}
        if message.get("method") == "tools/call":
            text = message["params"]["arguments"].get("t", "")
            result = {"content": [{"type": "text", "text": text}], "isError": False}
        return json_reply({"jsonrpc": "2.0", "id": message["id"], "result": result})


async def test_backend_404_reinitialized_with_same_params() -> None:
    """A lost backend session is re-opened alike and the call replayed (C08)."""
    backend = ForgetfulBackend()
    async with scripted_stack(backend) as (gateway, client, scripted):
        headers = await open_session(client, gateway.mcp_url, "2025-06-18")
        backend.sessions.clear()
        response = await client.post(
            gateway.mcp_url, json=tools_call(21, "echo", t="x"), headers=headers
        )
    initializes = scripted.posts("initialize")
    initialized = scripted.posts("notifications/initialized")
    calls = scripted.posts("tools/call")
    assert response.status_code == 200
    answer = answer_of(response)
    assert answer["id"] == 21
    assert answer["result"]["content"][0]["text"] == "x"
    assert len(initializes) == 2
    first, again = (request.message["params"] for request in initializes)
    assert again == first
    assert "mcp-session-id" not in initializes[1].headers
    assert initialized[-1].headers["mcp-session-id"] == "backend-session-2"
    assert [c.headers["mcp-session-id"] for c in calls] == [
        "backend-session-1",
        "backend-session-2",
    ]
    assert [c.message["id"] for c in calls] == [21, 21]


async def test_backend_404_again_error_without_loop() -> None:
    """A replay that gets 404 again ends in a JSON-RPC error, no loop (C08)."""
    backend = ForgetfulBackend()
    async with scripted_stack(backend) as (gateway, client, scripted):
        headers = await open_session(client, gateway.mcp_url)
        backend.always_lose = True
        called = await client.post(
            gateway.mcp_url, json=tools_call(21, "echo", t="x"), headers=headers
        )
        listed = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 22, "method": "tools/list"},
            headers=headers,
        )
        calls = len(scripted.posts("tools/call"))
        backend.always_lose = False
        recovered = await client.post(
            gateway.mcp_url, json=tools_call(23, "echo", t="back"), headers=headers
        )
    assert called.status_code == 200
    assert answer_of(called)["id"] == 21
    assert answer_of(called)["result"]["isError"] is True
    assert listed.status_code == 200
    assert answer_of(listed)["id"] == 22
    assert answer_of(listed)["error"]["code"] == -32603
    assert calls == 2
    assert recovered.status_code == 200
    assert answer_of(recovered)["result"]["content"][0]["text"] == "back"


async def test_failed_reinitialize_error_session_survives() -> None:
    """A refused re-initialization gives an error; the session lives on (C08)."""
    backend = ForgetfulBackend()
    async with scripted_stack(backend) as (gateway, client, _scripted):
        headers = await open_session(client, gateway.mcp_url)
        backend.sessions.clear()
        backend.initialize_fails = True
        listed = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 21, "method": "tools/list"},
            headers=headers,
        )
        backend.initialize_fails = False
        recovered = await client.post(
            gateway.mcp_url, json=tools_call(24, "echo", t="ok"), headers=headers
        )
    assert listed.status_code == 200
    assert answer_of(listed)["id"] == 21
    assert "error" in answer_of(listed)
    assert recovered.status_code == 200
    assert answer_of(recovered)["result"]["content"][0]["text"] == "ok"


async def test_wrong_path_404_differs_from_session_404() -> None:
    """A wrong path's 404 is distinguishable from an unknown session's (C08)."""
    backend = ForgetfulBackend()
    listing = {"jsonrpc": "2.0", "id": 22, "method": "tools/list"}
    async with scripted_stack(backend) as (gateway, client, _scripted):
        wrong_path = await client.post(
            gateway.base_url + "/nowhere/mcp", json=listing, headers=MCP_HEADERS
        )
        unknown = await client.post(
            gateway.mcp_url, json=listing, headers=session_headers("gw-expired")
        )
    assert wrong_path.status_code == 404
    assert unknown.status_code == 404
    wrong_error = wrong_path.json()["error"]
    unknown_error = unknown.json()["error"]
    assert wrong_error["data"]["reason"] != unknown_error["data"]["reason"]
    assert wrong_error["message"] != unknown_error["message"]
    assert unknown.json()["id"] == 22


async def test_unknown_session_404_for_every_method() -> None:
    """Notifications, GET and DELETE on an unknown session get 404 too (C08)."""
    backend = ForgetfulBackend()
    headers = session_headers("gw-expired")
    async with scripted_stack(backend) as (gateway, client, scripted):
        notified = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "method": "notifications/initialized"},
            headers=headers,
        )
        streamed = await client.get(
            gateway.mcp_url, headers={**headers, "accept": "text/event-stream"}
        )
        deleted = await client.delete(gateway.mcp_url, headers=headers)
    assert notified.status_code == 404
    assert streamed.status_code == 404
    assert deleted.status_code == 404
    assert scripted.requests == []


async def test_modern_bridge_recovers_lost_backend_session() -> None:
    """A 2026-07-28 client never sees the bridged backend session expire (C08)."""
    backend = HandshakeOnlyBackend()
    async with scripted_stack(backend) as (gateway, client, _scripted):
        first_body, headers = modern_request(
            1, "tools/call", {"name": "echo", "arguments": {"text": "one"}}
        )
        first = await client.post(gateway.mcp_url, json=first_body, headers=headers)
        backend.sessions.clear()
        second_body, headers = modern_request(
            2, "tools/call", {"name": "echo", "arguments": {"text": "two"}}
        )
        second = await client.post(gateway.mcp_url, json=second_body, headers=headers)
    assert first.status_code == 200
    assert second.status_code == 200
    assert answer_of(second)["result"]["content"][0]["text"] == "two"
    assert len(backend.sessions) == 1
