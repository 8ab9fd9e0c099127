"""Case C04: ``Mcp-Session-Id`` belongs to one hop and never crosses the gateway.

The gateway mints its own session id for the client and maps it to the
backend's. The client's id is never sent upstream, the backend's id is never
shown to the client, and a backend cannot set ``Set-Cookie``, CORS, HSTS,
``Location`` or ``Server`` on the gateway's origin.

Covered elsewhere and not repeated here:

- ``test_transport_sdk.py::test_transport_sdk_session_ids_stay_on_their_side``:
  with the SDK client and an event-stream backend, the two ids differ, the
  backend's id and its hostile headers never reach the client, the first
  ``initialize`` upstream carries no session id, and later requests carry
  the backend's id.
- ``test_transport_sdk.py::test_transport_sdk_stateless_backend_served``: a
  backend that issues no id gets none.
"""

from __future__ import annotations

import httpx
import msgspec
import pytest
from _case_support import (
    SCRIPTED_SESSION,
    Reply,
    ScriptedRequest,
    case_stack,
    initialize_reply,
    modern_request,
    open_session,
    scripted_stack,
)
from _transport_harness import (
    HOSTILE_RESPONSE_HEADERS,
    MCP_HEADERS,
    BackendControls,
    initialize_body,
    running_backend,
    running_gateway,
)

pytestmark = pytest.mark.anyio

VISIBLE_ASCII = {chr(code) for code in range(0x21, 0x7F)}
RELAYED_BY_NO_BACKEND = (
    "set-cookie",
    "access-control-allow-origin",
    "strict-transport-security",
    "location",
)


def assert_no_backend_headers(response: httpx.Response) -> None:
    for name in RELAYED_BY_NO_BACKEND:
        assert name not in response.headers, name
    assert response.headers.get("server") != "backend-server"


async def test_reinitialize_holding_old_id_not_forwarded() -> None:
    """An initialize that carries an old gateway id starts afresh upstream (C04)."""
    async with case_stack() as (gateway, client, controls):
        first = await open_session(client, gateway.mcp_url)
        again = await client.post(
            gateway.mcp_url,
            json=initialize_body(request_id=1),
            headers=first,
        )
        initializes = controls.posts("initialize")
    old_id = first["mcp-session-id"]
    new_id = again.headers["mcp-session-id"]
    assert again.status_code == 200
    assert new_id != old_id
    assert len(initializes) == 2
    for request in initializes:
        assert "mcp-session-id" not in request.headers
    upstream_ids = {r.headers.get("mcp-session-id") for r in controls.requests}
    assert old_id not in upstream_ids
    assert new_id not in upstream_ids


async def test_gateway_session_ids_random_visible_ascii() -> None:
    """Gateway session ids are distinct, long and visible ASCII only (C04)."""
    async with case_stack() as (gateway, client, _controls):
        ids = [
            (
                await client.post(
                    gateway.mcp_url, json=initialize_body(), headers=MCP_HEADERS
                )
            ).headers["mcp-session-id"]
            for _ in range(5)
        ]
    assert len(set(ids)) == 5
    for session_id in ids:
        assert set(session_id) <= VISIBLE_ASCII
        assert len(session_id) >= 22  # at least 128 bits in base64url


async def test_json_backend_session_id_and_headers_stay_behind() -> None:
    """A JSON-answering backend's session id and hostile headers stay behind (C04)."""
    controls = BackendControls()
    async with (
        running_backend(controls, json_response=True) as backend_url,
        running_gateway(backend_url) as gateway,
        httpx.AsyncClient(timeout=5.0) as client,
    ):
        opened = await client.post(
            gateway.mcp_url, json=initialize_body(), headers=MCP_HEADERS
        )
        headers = await open_session(client, gateway.mcp_url)
        listed = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            headers=headers,
        )
        deleted = await client.delete(gateway.mcp_url, headers=headers)
    backend_ids = set(controls.issued_session_ids)
    assert backend_ids
    for response in (opened, listed, deleted):
        assert_no_backend_headers(response)
        assert response.headers.get("mcp-session-id") not in backend_ids
        for backend_id in backend_ids:
            assert backend_id not in response.text
    assert opened.headers["content-type"] == "application/json"
    assert listed.status_code == 200
    assert deleted.status_code == 204
    assert len(HOSTILE_RESPONSE_HEADERS) == 5


async def test_backend_error_response_headers_not_relayed() -> None:
    """A backend's error reply cannot set cookies, CORS or Location either (C04)."""
    hostile = {
        "content-type": "application/json",
        "set-cookie": "stolen=1; Path=/",
        "access-control-allow-origin": "*",
        "strict-transport-security": "max-age=1",
        "location": "http://elsewhere.test/",
        "server": "backend-server",
        "mcp-session-id": SCRIPTED_SESSION,
    }

    async def script(request: ScriptedRequest) -> Reply:
        message = request.message
        if message.get("method") == "initialize":
            return initialize_reply(message, SCRIPTED_SESSION)
        if "id" not in message:
            return Reply(202)
        error = {"code": -32602, "message": "invalid params"}
        body = msgspec.json.encode(
            {"jsonrpc": "2.0", "id": message["id"], "error": error}
        )
        return Reply(400, hostile, [body])

    async with scripted_stack(script) as (gateway, client, _backend):
        headers = await open_session(client, gateway.mcp_url)
        listed = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
            headers=headers,
        )
    assert listed.status_code == 200
    assert listed.json()["error"]["code"] == -32602
    assert_no_backend_headers(listed)
    assert SCRIPTED_SESSION not in str(listed.headers)


async def test_modern_request_needs_and_gets_no_session_id() -> None:
    """A 2026-07-28 request needs no session id and is given none (C04)."""
    body, headers = modern_request(1, "tools/list")
    async with case_stack() as (gateway, client, controls):
        response = await client.post(gateway.mcp_url, json=body, headers=headers)
        backend_ids = {
            r.headers.get("mcp-session-id")
            for r in controls.requests
            if "mcp-session-id" in r.headers
        }
    assert response.status_code == 200
    assert "mcp-session-id" not in response.headers
    assert_no_backend_headers(response)
    for backend_id in backend_ids:
        assert backend_id not in response.text
