"""2026-07-28 clients of a handshake-era backend, through a shared backend session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from _era_support import FORCED_STATELESS, answer_of, gated_call, text_of
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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def bridged() -> AsyncIterator[tuple[GatewayHarness, BackendControls, str]]:
    controls = BackendControls()
    async with (
        running_backend(controls, era="handshake") as url,
        running_gateway(url) as gateway,
    ):
        yield gateway, controls, url


def envelope() -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": VERSION,
        "io.modelcontextprotocol/clientCapabilities": {"sampling": {}},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
    }


def call(name: str, arguments: dict[str, Any], request_id: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments, "_meta": envelope()},
    }


def headers(name: str, user: str = "alice") -> dict[str, str]:
    return {
        **MCP_HEADERS,
        "mcp-protocol-version": VERSION,
        "mcp-method": "tools/call",
        "mcp-name": name,
        "x-test-user": user,
    }


async def test_stateless_client_reaches_handshake_backend_through_bridge(
    bridged: tuple[GatewayHarness, BackendControls, str],
) -> None:
    """The official 2026-07-28 client discovers, lists and calls a handshake backend."""
    gateway, controls, _ = bridged
    async with Client(gateway.mcp_url, mode="auto") as client:
        assert client.protocol_version == VERSION
        tools = await client.list_tools()
        echoed = await client.call_tool("echo", {"text": "bridged"})
        failed = await client.call_tool("fail", {"reason": "boom"})
    assert "echo" in {tool.name for tool in tools.tools}
    assert text_of(echoed) == "bridged"
    assert failed.is_error and "boom" in text_of(failed)

    messages = controls.messages()
    initializes = [m for m in messages if m.get("method") == "initialize"]
    assert len(initializes) == 1
    # No client capabilities: 2026-07-28 has no server-to-client requests.
    assert initializes[0]["params"]["capabilities"] == {}
    calls = [
        r for r in controls.requests if (r.json() or {}).get("method") == "tools/call"
    ]
    session_id = controls.issued_session_ids[0]
    for request in calls:
        # Each hop gets the version agreed on it, and the backend's session.
        assert request.headers["mcp-protocol-version"] == "2025-11-25"
        assert request.headers["mcp-session-id"] == session_id
        body = request.json()
        assert str(body["id"]).startswith("gateway-")
        assert "io.modelcontextprotocol/protocolVersion" not in body["params"].get(
            "_meta", {}
        )


async def test_bridge_progress_arrives_while_tool_runs(
    bridged: tuple[GatewayHarness, BackendControls, str],
) -> None:
    """Progress from a handshake backend reaches a 2026-07-28 client at once."""
    gateway, controls, _ = bridged
    async with Client(gateway.mcp_url, mode=FORCED_STATELESS) as client:
        text, progress = await gated_call(client, controls)
    assert text == "counted to 3 (released)"
    assert progress == [1.0, 2.0, 3.0]


async def test_bridge_same_client_ids_from_two_clients_do_not_collide(
    bridged: tuple[GatewayHarness, BackendControls, str],
) -> None:
    """Two clients of one user using id 1 at once each get their own answer."""
    gateway, controls, _ = bridged
    results: dict[str, Any] = {}

    async def gated() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(
                gateway.mcp_url,
                json=call("gated_count", {"n": 2}, 1),
                headers=headers("gated_count"),
            )
            results["gated"] = response

    async with anyio.create_task_group() as group:
        group.start_soon(gated)
        # Wait until the gated call is in flight at the backend.
        with anyio.fail_after(5):
            while not any(
                (r.json() or {}).get("params", {}).get("name") == "gated_count"
                for r in controls.requests
            ):
                await anyio.sleep(0.01)
        async with httpx.AsyncClient(timeout=10) as http:
            echoed = await http.post(
                gateway.mcp_url,
                json=call("echo", {"text": "second"}, 1),
                headers=headers("echo"),
            )
        controls.release.set()

    assert echoed.status_code == 200
    assert answer_of(echoed)["id"] == 1
    assert answer_of(echoed)["result"]["content"][0]["text"] == "second"
    gated = answer_of(results["gated"])
    assert gated["id"] == 1
    assert gated["result"]["content"][0]["text"] == "counted to 2 (released)"


async def test_bridge_response_keeps_client_id_value_and_type(
    bridged: tuple[GatewayHarness, BackendControls, str],
) -> None:
    """String, integer and float-looking ids come back exactly as sent."""
    gateway, _, _ = bridged
    async with httpx.AsyncClient(timeout=10) as http:
        for request_id in ["7", 7, "x-1", 0]:
            response = await http.post(
                gateway.mcp_url,
                json=call("echo", {"text": "id"}, request_id),
                headers=headers("echo"),
            )
            assert answer_of(response)["id"] == request_id
            assert type(answer_of(response)["id"]) is type(request_id)


async def test_bridge_keeps_one_backend_session_per_user(
    bridged: tuple[GatewayHarness, BackendControls, str],
) -> None:
    """Alice's requests share a backend session; Bob gets his own."""
    gateway, controls, _ = bridged
    async with httpx.AsyncClient(timeout=10) as http:
        for user in ["alice", "alice", "bob"]:
            response = await http.post(
                gateway.mcp_url,
                json=call("echo", {"text": user}, 1),
                headers=headers("echo", user),
            )
            assert answer_of(response)["result"]["content"][0]["text"] == user
    initializes = [m for m in controls.messages() if m.get("method") == "initialize"]
    assert len(initializes) == 2
    assert len(set(controls.issued_session_ids)) == 2


async def test_bridge_reinitializes_backend_session_after_backend_drops_it(
    bridged: tuple[GatewayHarness, BackendControls, str],
) -> None:
    """A backend 404 for the shared session leads to a new session and one retry."""
    gateway, controls, backend_url = bridged
    async with Client(gateway.mcp_url, mode=FORCED_STATELESS) as client:
        first = await client.call_tool("echo", {"text": "before"})
        dropped = controls.issued_session_ids[-1]
        async with httpx.AsyncClient() as http:
            ended = await http.delete(
                backend_url,
                headers={
                    "mcp-session-id": dropped,
                    "mcp-protocol-version": "2025-11-25",
                },
            )
        assert ended.status_code in (200, 204)
        second = await client.call_tool("echo", {"text": "after"})
    assert text_of(first) == "before"
    assert text_of(second) == "after"
    initializes = [m for m in controls.messages() if m.get("method") == "initialize"]
    assert len(initializes) == 2
    assert controls.issued_session_ids[-1] != dropped


async def test_bridge_closed_stream_cancels_backend_request_with_backend_id(
    bridged: tuple[GatewayHarness, BackendControls, str],
) -> None:
    """Closing the response stream sends notifications/cancelled with the backend id."""
    gateway, controls, _ = bridged
    body = call("gated_count", {"n": 3}, "cancel-me")
    body["params"]["_meta"]["progressToken"] = "p1"
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream(
            "POST",
            gateway.mcp_url,
            json=body,
            headers=headers("gated_count"),
        ) as response,
    ):
        async for line in response.aiter_lines():
            if "notifications/progress" in line:
                break
    with anyio.fail_after(5):
        await controls.cancelled.wait()
    calls = [m for m in controls.messages() if m.get("method") == "tools/call"]
    cancels = [
        m for m in controls.messages() if m.get("method") == "notifications/cancelled"
    ]
    assert len(cancels) == 1
    assert cancels[0]["params"]["requestId"] == calls[0]["id"]
    assert calls[0]["id"] != "cancel-me"


async def test_bridge_discover_reports_backend_capabilities(
    bridged: tuple[GatewayHarness, BackendControls, str],
) -> None:
    """server/discover is answered from the backend's initialize result."""
    gateway, _, _ = bridged
    body = {
        "jsonrpc": "2.0",
        "id": "d",
        "method": "server/discover",
        "params": {"_meta": envelope()},
    }
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            gateway.mcp_url,
            json=body,
            headers={
                **MCP_HEADERS,
                "mcp-protocol-version": VERSION,
                "mcp-method": "server/discover",
            },
        )
    result = response.json()["result"]
    assert response.json()["id"] == "d"
    assert result["supportedVersions"] == [VERSION]
    assert "tools" in result["capabilities"]
    assert result["resultType"] == "complete"
    assert result["cacheScope"] == "private"
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"]


async def test_bridge_rejects_initialize_from_stateless_client(
    bridged: tuple[GatewayHarness, BackendControls, str],
) -> None:
    """initialize at 2026-07-28 gets -32601 and never reaches the shared session."""
    gateway, controls, _ = bridged
    body = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
            "_meta": envelope(),
        },
    }
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            gateway.mcp_url,
            json=body,
            headers={
                **MCP_HEADERS,
                "mcp-protocol-version": VERSION,
                "mcp-method": "initialize",
            },
        )
    assert response.json()["id"] == 3
    assert response.json()["error"]["code"] == -32601
    assert not any(m.get("method") == "initialize" for m in controls.messages())


async def test_bridge_json_only_client_gets_json(
    bridged: tuple[GatewayHarness, BackendControls, str],
) -> None:
    """A 2026-07-28 client accepting only JSON gets JSON from an SSE backend."""
    gateway, controls, _ = bridged
    controls.release.set()
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            gateway.mcp_url,
            json=call("gated_count", {"n": 2}, "j"),
            headers={**headers("gated_count"), "accept": "application/json"},
        )
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["id"] == "j"
    assert response.json()["result"]["content"][0]["text"].startswith("counted to 2")


async def test_bridge_cancel_keeps_integer_and_string_ids_apart(
    bridged: tuple[GatewayHarness, BackendControls, str],
) -> None:
    """Cancelling id 7 stops the call with id 7, not the one with id "7"."""
    gateway, controls, _ = bridged
    answers: dict[str, Any] = {}

    async def run(request_id: Any, n: int) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(
                gateway.mcp_url,
                json=call("gated_count", {"n": n}, request_id),
                headers=headers("gated_count"),
            )
            answers[repr(request_id)] = answer_of(response)

    def backend_id_of(n: int) -> Any:
        for message in controls.messages():
            params = message.get("params", {})
            if params.get("arguments") == {"n": n}:
                return message["id"]
        return None

    async with anyio.create_task_group() as group:
        group.start_soon(run, 7, 2)
        group.start_soon(run, "7", 3)
        with anyio.fail_after(5):
            while backend_id_of(2) is None or backend_id_of(3) is None:
                await anyio.sleep(0.01)
        cancel = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": 7, "_meta": envelope()},
        }
        async with httpx.AsyncClient(timeout=10) as http:
            posted = await http.post(
                gateway.mcp_url,
                json=cancel,
                headers={
                    **MCP_HEADERS,
                    "mcp-protocol-version": VERSION,
                    "mcp-method": "notifications/cancelled",
                },
            )
        with anyio.fail_after(5):
            while not any(
                m.get("method") == "notifications/cancelled"
                for m in controls.messages()
            ):
                await anyio.sleep(0.01)
        controls.release.set()
    assert posted.status_code == 202
    [cancelled] = [
        m for m in controls.messages() if m.get("method") == "notifications/cancelled"
    ]
    assert cancelled["params"]["requestId"] == backend_id_of(2)
    assert answers["'7'"]["result"]["content"][0]["text"] == "counted to 3 (released)"
