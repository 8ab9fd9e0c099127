"""The MCP data path driven by the official SDK client, with an SDK backend.

The chain is a stand-in security stage, then ``session`` and ``forward``
(see :mod:`_transport_harness`); the real security stages have their own
tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
import pytest
from _transport_harness import (
    BACKEND_API_KEY,
    HOSTILE_RESPONSE_HEADERS,
    BackendControls,
    GatewayHarness,
    running_backend,
    running_gateway,
)
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent

from gateway.events import SessionCreated, SessionEnded


@contextlib.asynccontextmanager
async def sdk_session(
    url: str, seen: list[httpx2.Response], headers: dict[str, str] | None = None
) -> AsyncIterator[ClientSession]:
    """Open an initialized SDK client session, recording every response."""

    async def record(response: httpx2.Response) -> None:
        seen.append(response)

    async with (
        httpx2.AsyncClient(headers=headers, event_hooks={"response": [record]}) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def text_of(result: Any) -> str:
    content = result.content[0]
    assert isinstance(content, TextContent)
    return content.text


@contextlib.asynccontextmanager
async def stack(
    controls: BackendControls, **backend_options: Any
) -> AsyncIterator[GatewayHarness]:
    async with (
        running_backend(controls, **backend_options) as backend_url,
        running_gateway(backend_url) as gateway,
    ):
        yield gateway


@pytest.mark.anyio
@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
async def test_transport_sdk_client_lists_and_calls_tools(json_response: bool) -> None:
    """initialize, tools/list and tools/call work through the gateway."""
    controls = BackendControls()
    seen: list[httpx2.Response] = []
    async with (
        stack(controls, json_response=json_response) as gateway,
        sdk_session(gateway.mcp_url, seen) as session,
    ):
        tools = await session.list_tools()
        echoed = await session.call_tool("echo", {"text": "héllo 🙂"})
    assert sorted(tool.name for tool in tools.tools) == ["echo", "fail", "gated_count"]
    assert text_of(echoed) == "héllo 🙂"
    assert echoed.is_error is False


@pytest.mark.anyio
async def test_transport_sdk_progress_arrives_before_result() -> None:
    """Progress reaches the client while the tool still runs (no buffering).

    The tool waits after its first progress notification until the test
    releases it, which the test does from the progress callback. A buffering
    hop would hold that notification back until the tool timed out.
    """
    controls = BackendControls()
    progress: list[float] = []

    async def on_progress(
        value: float, total: float | None, message: str | None
    ) -> None:
        progress.append(value)
        controls.release.set()

    async with stack(controls) as gateway, sdk_session(gateway.mcp_url, []) as session:
        with anyio.fail_after(4):
            result = await session.call_tool(
                "gated_count", {"n": 3}, progress_callback=on_progress
            )
    assert text_of(result) == "counted to 3 (released)"
    assert progress == [1.0, 2.0, 3.0]


@pytest.mark.anyio
async def test_transport_sdk_tool_error_passes_as_is_error() -> None:
    """A tool failure arrives as the backend's isError result."""
    controls = BackendControls()
    async with stack(controls) as gateway, sdk_session(gateway.mcp_url, []) as session:
        result = await session.call_tool("fail", {"reason": "record locked"})
    assert result.is_error is True
    assert "record locked" in text_of(result)


@pytest.mark.anyio
async def test_transport_sdk_session_ids_stay_on_their_side() -> None:
    """Neither session id crosses the gateway, and backend headers stay behind."""
    controls = BackendControls()
    seen: list[httpx2.Response] = []
    async with stack(controls) as gateway:
        async with sdk_session(
            gateway.mcp_url, seen, headers={"authorization": "Bearer user-token"}
        ) as session:
            await session.list_tools()
        await gateway.settle()
        created = gateway.events_of(SessionCreated)
        ended = gateway.events_of(SessionEnded)

    gateway_ids = {
        r.headers["mcp-session-id"] for r in seen if "mcp-session-id" in r.headers
    }
    backend_ids = set(controls.issued_session_ids)
    assert len(gateway_ids) == 1
    assert len(backend_ids) == 1
    assert gateway_ids.isdisjoint(backend_ids)

    client_saw = " ".join(f"{k}: {v}" for r in seen for k, v in r.headers.items())
    for backend_id in backend_ids:
        assert backend_id not in client_saw
    for name, _value in HOSTILE_RESPONSE_HEADERS:
        if name != b"server":
            assert all(name.decode() not in r.headers for r in seen)
    assert all(r.headers.get("server") != "backend-server" for r in seen)

    for request in controls.requests:
        assert request.headers.get("mcp-session-id") not in gateway_ids
        assert "authorization" not in request.headers
        assert "cookie" not in request.headers
        assert request.headers["x-api-key"] == BACKEND_API_KEY
    initialize_request = controls.requests[0]
    assert "mcp-session-id" not in initialize_request.headers
    assert len(created) == 1
    assert len(ended) == 1


@pytest.mark.anyio
async def test_transport_sdk_get_stream_and_delete_reach_backend() -> None:
    """The client's GET stream and its closing DELETE reach the backend session."""
    controls = BackendControls()
    async with stack(controls) as gateway:
        async with sdk_session(gateway.mcp_url, []) as session:
            await session.list_tools()
            with anyio.fail_after(2):
                while not any(r.method == "GET" for r in controls.requests):
                    await anyio.sleep(0.01)
        remaining = await gateway.runtime.store.count("session")
    backend_id = controls.issued_session_ids[0]
    get = next(r for r in controls.requests if r.method == "GET")
    delete = next(r for r in controls.requests if r.method == "DELETE")
    assert get.headers["accept"] == "text/event-stream"
    assert get.headers["mcp-session-id"] == backend_id
    assert delete.headers["mcp-session-id"] == backend_id
    assert remaining == 0


@pytest.mark.anyio
async def test_transport_sdk_stateless_backend_served() -> None:
    """A backend that issues no session id still works behind a gateway session."""
    controls = BackendControls()
    seen: list[httpx2.Response] = []
    async with (
        stack(controls, stateless=True, json_response=True) as gateway,
        sdk_session(gateway.mcp_url, seen) as session,
    ):
        result = await session.call_tool("echo", {"text": "x"})
    assert text_of(result) == "x"
    assert controls.issued_session_ids == []
    assert any("mcp-session-id" in r.headers for r in seen)
    assert all("mcp-session-id" not in r.headers for r in controls.requests)


@pytest.mark.anyio
async def test_transport_sdk_backend_restart_reinitialized() -> None:
    """After a backend restart drops its sessions, the same session works.

    The gateway initializes a new backend session and replays the call; the
    client keeps its gateway session and never initializes again.
    """
    first = BackendControls()
    restarted = BackendControls()
    seen: list[httpx2.Response] = []
    stop_first = anyio.Event()
    first_stopped = anyio.Event()

    async def serve_first(*, task_status: Any) -> None:
        # Its own task, so that it can stop while the gateway keeps running.
        async with running_backend(first, shutdown_timeout=0.5) as url:
            task_status.started(url)
            await stop_first.wait()
        first_stopped.set()

    async with anyio.create_task_group() as task_group:
        backend_url = await task_group.start(serve_first)
        port = int(backend_url.rsplit(":", 1)[1].split("/", 1)[0])
        async with (
            running_gateway(backend_url) as gateway,
            sdk_session(gateway.mcp_url, seen) as session,
        ):
            await session.list_tools()
            stop_first.set()
            await first_stopped.wait()
            async with running_backend(restarted, port=port):
                with anyio.fail_after(5):
                    result = await session.call_tool("echo", {"text": "still here"})
    posts = [r for r in restarted.requests if r.method == "POST"]
    assert text_of(result) == "still here"
    assert len(set(first.issued_session_ids)) == 1
    assert len(set(restarted.issued_session_ids)) == 1
    assert "mcp-session-id" not in posts[1].headers
    assert posts[2].headers["mcp-session-id"] == restarted.issued_session_ids[0]
    gateway_ids = {
        r.headers["mcp-session-id"] for r in seen if "mcp-session-id" in r.headers
    }
    assert len(gateway_ids) == 1
