"""2026-07-28 clients: envelope and header checks, and pass-through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from _era_support import FORCED_STATELESS, gated_call, text_of
from _transport_harness import (
    MCP_HEADERS,
    BackendControls,
    GatewayHarness,
    running_backend,
    running_gateway,
)
from mcp.client import Client

pytestmark = pytest.mark.anyio

VERSION = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": VERSION,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def dual_era() -> AsyncIterator[tuple[GatewayHarness, BackendControls]]:
    controls = BackendControls()
    async with running_backend(controls) as url, running_gateway(url) as gateway:
        yield gateway, controls


def call_body(
    name: str, arguments: dict[str, Any], request_id: Any = 1
) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments, "_meta": dict(ENVELOPE)},
    }


def stateless_headers(method: str, name: str | None = None) -> dict[str, str]:
    headers = {**MCP_HEADERS, "mcp-protocol-version": VERSION, "mcp-method": method}
    if name is not None:
        headers["mcp-name"] = name
    return headers


async def test_stateless_client_passes_through_to_dual_era_backend(
    dual_era: tuple[GatewayHarness, BackendControls],
) -> None:
    """A forced 2026-07-28 official client lists and calls tools with no session."""
    gateway, controls = dual_era
    async with Client(gateway.mcp_url, mode=FORCED_STATELESS) as client:
        assert client.protocol_version == VERSION
        tools = await client.list_tools()
        echoed = await client.call_tool("echo", {"text": "héllo"})
    assert {tool.name for tool in tools.tools} >= {"echo", "gated_count", "fail"}
    assert text_of(echoed) == "héllo"
    posts = [r for r in controls.requests if r.method == "POST"]
    assert all(r.headers["mcp-protocol-version"] == VERSION for r in posts)
    assert all("mcp-session-id" not in r.headers for r in posts)
    # The gateway's own probe comes first; the backend's era is then known.
    methods = [r.headers["mcp-method"] for r in posts]
    assert methods == ["server/discover", "tools/list", "tools/call"]
    assert posts[-1].headers["mcp-name"] == "echo"
    assert not any(m.get("method") == "initialize" for m in controls.messages())


async def test_stateless_client_progress_arrives_while_tool_runs(
    dual_era: tuple[GatewayHarness, BackendControls],
) -> None:
    """The first progress event reaches a 2026-07-28 client before the tool ends."""
    gateway, controls = dual_era
    async with Client(gateway.mcp_url, mode=FORCED_STATELESS) as client:
        text, progress = await gated_call(client, controls)
    assert text == "counted to 3 (released)"
    assert progress == [1.0, 2.0, 3.0]


async def test_stateless_request_with_mismatched_method_header_gets_400(
    dual_era: tuple[GatewayHarness, BackendControls],
) -> None:
    """Mcp-Method that disagrees with the body gets 400 with -32020."""
    gateway, controls = dual_era
    async with httpx.AsyncClient() as http:
        response = await http.post(
            gateway.mcp_url,
            json=call_body("echo", {"text": "x"}, request_id="a"),
            headers=stateless_headers("tools/list", "echo"),
        )
    assert response.status_code == 400
    body = response.json()
    assert body["id"] == "a"
    assert body["error"]["code"] == -32020
    assert body["error"]["data"]["reason"] == "header_mismatch"
    assert controls.requests == []


async def test_stateless_request_with_mismatched_name_header_gets_400(
    dual_era: tuple[GatewayHarness, BackendControls],
) -> None:
    """Mcp-Name that names another tool than the body gets 400 with -32020."""
    gateway, controls = dual_era
    async with httpx.AsyncClient() as http:
        response = await http.post(
            gateway.mcp_url,
            json=call_body("fail", {"reason": "x"}),
            headers=stateless_headers("tools/call", "echo"),
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32020
    assert "Mcp-Name" in response.json()["error"]["message"]
    assert controls.requests == []


async def test_stateless_request_with_missing_name_header_gets_400(
    dual_era: tuple[GatewayHarness, BackendControls],
) -> None:
    """A tools/call without Mcp-Name gets 400 with -32020."""
    gateway, _ = dual_era
    async with httpx.AsyncClient() as http:
        response = await http.post(
            gateway.mcp_url,
            json=call_body("echo", {"text": "x"}),
            headers=stateless_headers("tools/call"),
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32020


async def test_stateless_request_with_base64_name_header_is_served(
    dual_era: tuple[GatewayHarness, BackendControls],
) -> None:
    """A non-ASCII name sent base64-wrapped in Mcp-Name matches the body."""
    gateway, _ = dual_era
    body = call_body("échó", {})
    async with httpx.AsyncClient() as http:
        response = await http.post(
            gateway.mcp_url,
            json=body,
            headers=stateless_headers("tools/call", "=?base64?w6ljaMOz?="),
        )
    # The names agree, so the backend answers: it has no such tool.
    assert response.status_code != 400 or response.json()["error"]["code"] != -32020


async def test_stateless_request_with_version_mismatch_gets_400(
    dual_era: tuple[GatewayHarness, BackendControls],
) -> None:
    """An envelope version other than the header's gets 400 with -32020."""
    gateway, _ = dual_era
    body = call_body("echo", {"text": "x"})
    body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2099-01-01"
    async with httpx.AsyncClient() as http:
        response = await http.post(
            gateway.mcp_url, json=body, headers=stateless_headers("tools/call", "echo")
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32020


async def test_stateless_request_without_envelope_gets_400(
    dual_era: tuple[GatewayHarness, BackendControls],
) -> None:
    """A 2026-07-28 request without params._meta gets 400 with -32602."""
    gateway, _ = dual_era
    body = call_body("echo", {"text": "x"}, request_id=7)
    del body["params"]["_meta"]
    async with httpx.AsyncClient() as http:
        response = await http.post(
            gateway.mcp_url, json=body, headers=stateless_headers("tools/call", "echo")
        )
    assert response.status_code == 400
    assert response.json()["id"] == 7
    assert response.json()["error"]["code"] == -32602


async def test_stateless_request_with_repeated_routing_header_gets_400(
    dual_era: tuple[GatewayHarness, BackendControls],
) -> None:
    """Mcp-Method sent twice gets 400 with -32020, whatever the copies say."""
    gateway, _ = dual_era
    headers = [
        *stateless_headers("tools/call", "echo").items(),
        ("mcp-method", "tools/call"),
    ]
    async with httpx.AsyncClient() as http:
        response = await http.post(
            gateway.mcp_url,
            json=call_body("echo", {"text": "x"}),
            headers=httpx.Headers(headers),
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32020


async def test_unknown_protocol_version_gets_400_listing_supported(
    dual_era: tuple[GatewayHarness, BackendControls],
) -> None:
    """An MCP-Protocol-Version the gateway does not serve gets 400 with -32022."""
    gateway, _ = dual_era
    async with httpx.AsyncClient() as http:
        response = await http.post(
            gateway.mcp_url,
            json=call_body("echo", {"text": "x"}),
            headers={**MCP_HEADERS, "mcp-protocol-version": "2099-01-01"},
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == -32022
    assert "2026-07-28" in error["data"]["supported"]
    assert "2025-11-25" in error["data"]["supported"]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_stateless_get_and_delete_get_405_allowing_post(
    dual_era: tuple[GatewayHarness, BackendControls], method: str
) -> None:
    """2026-07-28 has no GET stream and no session to delete: 405, Allow: POST."""
    gateway, _ = dual_era
    async with httpx.AsyncClient() as http:
        response = await http.request(
            method,
            gateway.mcp_url,
            headers={"accept": "text/event-stream", "mcp-protocol-version": VERSION},
        )
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


async def test_stateless_notification_gets_202_with_empty_body(
    dual_era: tuple[GatewayHarness, BackendControls],
) -> None:
    """A 2026-07-28 notification is acknowledged with 202 and no body."""
    gateway, _ = dual_era
    notification = {
        "jsonrpc": "2.0",
        "method": "notifications/roots/list_changed",
        "params": {"_meta": dict(ENVELOPE)},
    }
    async with httpx.AsyncClient() as http:
        response = await http.post(
            gateway.mcp_url,
            json=notification,
            headers=stateless_headers("notifications/roots/list_changed"),
        )
    assert response.status_code == 202
    assert response.content == b""


async def test_stateless_unknown_method_relays_backend_error(
    dual_era: tuple[GatewayHarness, BackendControls],
) -> None:
    """The backend's 404 with -32601 reaches the client as that error, in a 200."""
    gateway, _ = dual_era
    body = {
        "jsonrpc": "2.0",
        "id": "m",
        "method": "no/such/method",
        "params": {"_meta": dict(ENVELOPE)},
    }
    async with httpx.AsyncClient() as http:
        response = await http.post(
            gateway.mcp_url, json=body, headers=stateless_headers("no/such/method")
        )
    assert response.status_code == 200
    assert response.json()["id"] == "m"
    assert response.json()["error"]["code"] == -32601


async def test_handshake_client_of_dual_era_backend_stays_pass_through(
    dual_era: tuple[GatewayHarness, BackendControls],
) -> None:
    """After a 2026-07-28 probe, handshake clients still get the backend's session."""
    gateway, controls = dual_era
    async with Client(gateway.mcp_url, mode=FORCED_STATELESS) as client:
        await client.list_tools()
    async with Client(gateway.mcp_url, mode="legacy") as client:
        assert client.protocol_version == "2025-11-25"
        await client.list_tools()
    assert any(m.get("method") == "initialize" for m in controls.messages())
    assert controls.issued_session_ids


async def test_stateless_posted_response_gets_400(
    dual_era: tuple[GatewayHarness, BackendControls],
) -> None:
    """A 2026-07-28 client posting a JSON-RPC response gets 400 with -32600."""
    gateway, controls = dual_era
    async with httpx.AsyncClient() as http:
        response = await http.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 1, "result": {}},
            headers={**MCP_HEADERS, "mcp-protocol-version": VERSION},
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32600
    assert controls.requests == []


async def test_stateless_envelope_with_non_object_capabilities_gets_400(
    dual_era: tuple[GatewayHarness, BackendControls],
) -> None:
    """clientCapabilities that is not an object gets 400 with -32602."""
    gateway, _ = dual_era
    body = call_body("echo", {"text": "x"})
    body["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"] = "x"
    async with httpx.AsyncClient() as http:
        response = await http.post(
            gateway.mcp_url, json=body, headers=stateless_headers("tools/call", "echo")
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32602


async def test_oversized_initialize_gets_400() -> None:
    """An initialize over 64 KiB is refused: its params live as long as the session."""
    controls = BackendControls()
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "x" * 70_000, "version": "0"},
        },
    }
    async with (
        running_backend(controls) as url,
        running_gateway(url, max_body_bytes=1024 * 1024) as gateway,
        httpx.AsyncClient() as http,
    ):
        response = await http.post(gateway.mcp_url, json=body, headers=MCP_HEADERS)
    assert response.status_code == 400
    assert response.json()["id"] == 1
    assert response.json()["error"]["data"]["reason"] == "initialize_too_large"
    assert controls.requests == []
