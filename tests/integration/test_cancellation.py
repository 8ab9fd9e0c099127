"""Cancellation reaches the backend that owns the request, at once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from _transport_harness import (
    MCP_HEADERS,
    BackendControls,
    GatewayHarness,
    initialize_body,
    running_backend,
    running_gateway,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def handshake() -> AsyncIterator[tuple[GatewayHarness, BackendControls]]:
    controls = BackendControls()
    async with running_backend(controls) as url, running_gateway(url) as gateway:
        yield gateway, controls


async def test_posted_cancel_reaches_backend_while_tool_runs(
    handshake: tuple[GatewayHarness, BackendControls],
) -> None:
    """notifications/cancelled goes to the session's backend and stops the tool."""
    gateway, controls = handshake
    call = {
        "jsonrpc": "2.0",
        "id": 41,
        "method": "tools/call",
        "params": {
            "name": "gated_count",
            "arguments": {"n": 3},
            "_meta": {"progressToken": "t-41"},
        },
    }
    cancel = {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": 41, "reason": "user pressed stop"},
    }
    async with httpx.AsyncClient(timeout=10) as http:
        opened = await http.post(
            gateway.mcp_url, json=initialize_body(), headers=MCP_HEADERS
        )
        headers = {
            **MCP_HEADERS,
            "mcp-session-id": opened.headers["mcp-session-id"],
            "mcp-protocol-version": "2025-06-18",
        }
        async with http.stream(
            "POST", gateway.mcp_url, json=call, headers=headers
        ) as response:
            async for line in response.aiter_lines():
                if "notifications/progress" in line:
                    break
            posted = await http.post(gateway.mcp_url, json=cancel, headers=headers)
            with anyio.fail_after(3):
                await controls.cancelled.wait()

    assert posted.status_code == 202
    assert posted.content == b""
    forwarded = [
        r
        for r in controls.requests
        if (r.json() or {}).get("method") == "notifications/cancelled"
    ]
    assert len(forwarded) == 1
    assert forwarded[0].json()["params"]["requestId"] == 41
    backend_session = controls.issued_session_ids[0]
    assert forwarded[0].headers["mcp-session-id"] == backend_session
    assert not controls.release.is_set()
