"""Handshake-era clients of a 2026-07-28 backend: the gateway keeps the session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from _era_support import FORCED_HANDSHAKE, answer_of, gated_call, text_of
from _transport_harness import (
    MCP_HEADERS,
    BackendControls,
    GatewayHarness,
    RecordedRequest,
    initialize_body,
    running_backend,
    running_gateway,
)
from mcp.client import Client

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["stateless", "auto"])
async def terminated(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[GatewayHarness, BackendControls]]:
    """A 2026-07-28-only backend, configured as such or detected (``auto``)."""
    controls = BackendControls()
    async with (
        running_backend(controls, era="stateless") as url,
        running_gateway(url, backend_protocol=request.param) as gateway,
    ):
        yield gateway, controls


def after_detection(controls: BackendControls) -> list[RecordedRequest]:
    """Return the backend's requests after a refused ``initialize``, if any.

    With ``protocol: auto`` the gateway first passes the client's
    ``initialize`` on; the backend refuses it with -32022, and from then on
    the gateway holds the session.
    """
    requests = list(controls.requests)
    # The refused initialize carries no version header; the backend refuses
    # it before reading its body.
    if requests and "mcp-protocol-version" not in requests[0].headers:
        return requests[1:]
    return requests


async def open_session(http: httpx.AsyncClient, url: str) -> str:
    response = await http.post(
        url, json=initialize_body(version="2025-06-18"), headers=MCP_HEADERS
    )
    assert response.status_code == 200
    assert answer_of(response)["result"]["protocolVersion"] == "2025-06-18"
    session_id: str = response.headers["mcp-session-id"]
    return session_id


def session_headers(session_id: str) -> dict[str, str]:
    return {
        **MCP_HEADERS,
        "mcp-session-id": session_id,
        "mcp-protocol-version": "2025-06-18",
    }


async def test_handshake_client_served_by_stateless_backend(
    terminated: tuple[GatewayHarness, BackendControls],
) -> None:
    """The official 2025-11-25 client lists and calls tools of a 2026-07-28 backend."""
    gateway, controls = terminated
    async with Client(gateway.mcp_url, mode=FORCED_HANDSHAKE) as client:
        assert client.protocol_version == "2025-11-25"
        tools = await client.list_tools()
        echoed = await client.call_tool("echo", {"text": "held"})
        failed = await client.call_tool("fail", {"reason": "boom"})
    assert "echo" in {tool.name for tool in tools.tools}
    assert text_of(echoed) == "held"
    assert failed.is_error
    # The backend never serves the handshake: the gateway answers it.
    for request in after_detection(controls):
        if request.method != "POST":
            continue
        body = request.json()
        assert request.headers["mcp-protocol-version"] == "2026-07-28"
        assert request.headers["mcp-method"] == body["method"]
        assert "mcp-session-id" not in request.headers
        meta = body["params"]["_meta"]
        assert meta["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
        assert "io.modelcontextprotocol/clientCapabilities" in meta


async def test_handshake_client_progress_arrives_from_stateless_backend(
    terminated: tuple[GatewayHarness, BackendControls],
) -> None:
    """A 2026-07-28 backend's progress reaches a handshake client at once."""
    gateway, controls = terminated
    async with Client(gateway.mcp_url, mode=FORCED_HANDSHAKE) as client:
        text, progress = await gated_call(client, controls)
    assert text == "counted to 3 (released)"
    assert progress == [1.0, 2.0, 3.0]


async def test_gateway_held_session_answers_ping_get_and_delete(
    terminated: tuple[GatewayHarness, BackendControls],
) -> None:
    """ping is answered locally, GET gets 405, DELETE 204 and then the id is unknown."""
    gateway, controls = terminated
    async with httpx.AsyncClient(timeout=10) as http:
        session_id = await open_session(http, gateway.mcp_url)
        headers = session_headers(session_id)
        initialized = await http.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "method": "notifications/initialized"},
            headers=headers,
        )
        ping = await http.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 5, "method": "ping"},
            headers=headers,
        )
        get = await http.get(
            gateway.mcp_url, headers={**headers, "accept": "text/event-stream"}
        )
        deleted = await http.delete(gateway.mcp_url, headers=headers)
        after = await http.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 6, "method": "tools/list"},
            headers=headers,
        )
    assert initialized.status_code == 202
    assert initialized.content == b""
    assert ping.json() == {"jsonrpc": "2.0", "id": 5, "result": {}}
    assert get.status_code == 405
    assert get.headers["allow"] == "POST, DELETE"
    assert deleted.status_code == 204
    assert after.status_code == 404
    assert after.json()["id"] == 6
    [discover] = after_detection(controls)
    assert discover.json()["method"] == "server/discover"


async def test_handshake_cancel_closes_stateless_backend_request(
    terminated: tuple[GatewayHarness, BackendControls],
) -> None:
    """notifications/cancelled closes the backend stream, which cancels the tool."""
    gateway, controls = terminated
    call = {
        "jsonrpc": "2.0",
        "id": "call-1",
        "method": "tools/call",
        "params": {
            "name": "gated_count",
            "arguments": {"n": 3},
            "_meta": {"progressToken": "p"},
        },
    }
    async with httpx.AsyncClient(timeout=10) as http:
        session_id = await open_session(http, gateway.mcp_url)
        headers = session_headers(session_id)
        async with http.stream(
            "POST", gateway.mcp_url, json=call, headers=headers
        ) as response:
            lines = response.aiter_lines()
            async for line in lines:
                if "notifications/progress" in line:
                    break
            cancelled = await http.post(
                gateway.mcp_url,
                json={
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": "call-1", "reason": "user stop"},
                },
                headers=headers,
            )
            assert cancelled.status_code == 202
            with anyio.fail_after(5):
                await controls.cancelled.wait()
            # The client's stream ends cleanly, without a response.
            rest = "".join([line async for line in lines])
    assert '"result"' not in rest
    assert not controls.release.is_set()


async def test_held_session_advertises_no_pushed_notifications(
    terminated: tuple[GatewayHarness, BackendControls],
) -> None:
    """No listChanged or subscribe: nothing could deliver those notifications."""
    gateway, _ = terminated
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            gateway.mcp_url,
            json=initialize_body(version="2025-11-25"),
            headers=MCP_HEADERS,
        )
        listed = await http.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            headers=session_headers(response.headers["mcp-session-id"]),
        )
    capabilities = answer_of(response)["result"]["capabilities"]
    for name in ("tools", "prompts", "resources"):
        assert "listChanged" not in capabilities.get(name, {})
    assert "subscribe" not in capabilities.get("resources", {})
    result = answer_of(listed)["result"]
    assert "tools" in result
    for field in ("resultType", "ttlMs", "cacheScope"):
        assert field not in result
    assert "io.modelcontextprotocol/serverInfo" not in result.get("_meta", {})


async def test_held_session_json_only_client_gets_json(
    terminated: tuple[GatewayHarness, BackendControls],
) -> None:
    """A client accepting only JSON gets one JSON body, also for a streamed tool."""
    gateway, controls = terminated
    controls.release.set()
    call = {
        "jsonrpc": "2.0",
        "id": 9,
        "method": "tools/call",
        "params": {"name": "gated_count", "arguments": {"n": 2}},
    }
    async with httpx.AsyncClient(timeout=10) as http:
        session_id = await open_session(http, gateway.mcp_url)
        headers = {**session_headers(session_id), "accept": "application/json"}
        response = await http.post(gateway.mcp_url, json=call, headers=headers)
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["id"] == 9
    assert response.json()["result"]["content"][0]["text"].startswith("counted to 2")
