"""Idle and long event streams through the gateway, with an SDK backend."""

from __future__ import annotations

import anyio
import httpx
import pytest
from _streams_support import events_of, open_session, sdk_stack, tool_call
from _transport_harness import BackendControls
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent

from gateway.events import BackendFailed

pytestmark = pytest.mark.anyio


async def read_raw_stream(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], body: object
) -> tuple[httpx.Response, bytes]:
    async with client.stream("POST", url, json=body, headers=headers) as response:
        raw = b"".join([chunk async for chunk in response.aiter_bytes()])
    return response, raw


async def test_streams_idle_stream_gets_keepalive_comments() -> None:
    """A stream silent for ``sse_keepalive`` seconds gets ``: keepalive`` comments."""
    controls = BackendControls()
    async with sdk_stack(controls, server_options={"sse_keepalive": 0.1}) as (
        gateway,
        client,
    ):
        headers = await open_session(client, gateway.mcp_url)
        chunks: list[bytes] = []
        async with client.stream(
            "POST", gateway.mcp_url, json=tool_call(1, "gated"), headers=headers
        ) as response:
            with anyio.fail_after(5):
                async for chunk in response.aiter_bytes():
                    chunks.append(chunk)
                    if b"".join(chunks).count(b": keepalive\n\n") >= 3:
                        controls.release.set()
    raw = b"".join(chunks)
    events = events_of(raw)
    keepalives = [e for e in events if e.comments == [" keepalive"]]
    assert response.headers["content-type"] == "text/event-stream"
    assert len(keepalives) >= 3
    assert keepalives[0].data is None
    assert events[-1].data is not None
    assert '"released"' in events[-1].data
    # The first progress event came before the keepalive comments.
    assert raw.index(b"notifications/progress") < raw.index(b": keepalive")


async def test_streams_busy_stream_gets_no_keepalive() -> None:
    """A stream with events more often than ``sse_keepalive`` gets no comments."""
    async with sdk_stack(server_options={"sse_keepalive": 5.0}) as (gateway, client):
        headers = await open_session(client, gateway.mcp_url)
        body = tool_call(2, "slow_steps", steps=3, pause=0.05)
        response, raw = await read_raw_stream(client, gateway.mcp_url, headers, body)
    assert response.status_code == 200
    assert b"keepalive" not in raw
    assert b"done after 3 steps" in raw


async def test_streams_longer_than_backend_timeout_complete() -> None:
    """Pauses between events and a whole stream longer than ``timeout`` work.

    The backend's ``timeout`` (0.3 s) bounds only the wait for headers and
    reads of JSON bodies; the stream runs 1.2 s with 0.4 s pauses.
    """
    async with sdk_stack(backend_timeout=0.3) as (gateway, client):
        headers = await open_session(client, gateway.mcp_url)
        body = tool_call(3, "slow_steps", steps=3, pause=0.4)
        with anyio.fail_after(10):
            response, raw = await read_raw_stream(
                client, gateway.mcp_url, headers, body
            )
        await gateway.settle()
    messages = [e.data for e in events_of(raw) if e.data]
    assert response.status_code == 200
    assert len(messages) == 4
    assert "done after 3 steps" in messages[-1]
    assert gateway.events_of(BackendFailed) == []


async def test_streams_sdk_client_reads_through_keepalives() -> None:
    """The official SDK client ignores keepalive comments between events."""
    progress: list[float] = []

    async def on_progress(
        value: float, total: float | None, message: str | None
    ) -> None:
        progress.append(value)

    async with (
        sdk_stack(server_options={"sse_keepalive": 0.05}) as (gateway, _),
        streamable_http_client(gateway.mcp_url) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        result = await session.call_tool(
            "slow_steps",
            {"steps": 2, "pause": 0.3},
            progress_callback=on_progress,
        )
    content = result.content[0]
    assert isinstance(content, TextContent)
    assert content.text == "done after 2 steps"
    assert progress == [1.0, 2.0]
