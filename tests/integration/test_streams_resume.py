"""``Last-Event-ID`` resumption through the gateway (handshake era).

The backend is an official-SDK server with an event store, at protocol
2025-11-25, which sends a priming event with an id on every stream.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from _streams_support import (
    MemoryEventStore,
    open_session,
    sdk_stack,
    tool_call,
)
from _transport_harness import BackendControls
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent

from gateway.events import BackendFailed
from gateway.mcp.sse import SseEvent, SseParser

pytestmark = pytest.mark.anyio

VERSION = "2025-11-25"


async def read_until(
    response: httpx.Response, done: Any, limit: float = 5.0
) -> list[SseEvent]:
    """Read events until ``done(events)`` is true."""
    parser = SseParser()
    events: list[SseEvent] = []
    with anyio.fail_after(limit):
        async for chunk in response.aiter_bytes():
            events.extend(parser.feed(chunk))
            if done(events):
                break
    return events


def has_progress(events: list[SseEvent]) -> bool:
    return any(e.data and "notifications/progress" in e.data for e in events)


def has_answer(events: list[SseEvent]) -> bool:
    return any(e.data and '"result"' in e.data for e in events)


async def test_streams_resume_after_disconnect_gets_rest() -> None:
    """A client that left mid-stream resumes with GET and gets the rest once."""
    controls = BackendControls()
    store = MemoryEventStore()
    async with sdk_stack(controls, event_store=store) as (gateway, client):
        headers = await open_session(client, gateway.mcp_url, version=VERSION)
        async with client.stream(
            "POST", gateway.mcp_url, json=tool_call(21, "gated"), headers=headers
        ) as first:
            before = await read_until(first, has_progress)
        controls.release.set()
        last_id = [e.id for e in before if e.id][-1]
        get_headers = {
            "accept": "text/event-stream",
            "mcp-session-id": headers["mcp-session-id"],
            "mcp-protocol-version": VERSION,
            "last-event-id": last_id,
        }
        async with client.stream(
            "GET", gateway.mcp_url, headers=get_headers
        ) as resumed:
            after = await read_until(resumed, has_answer)
        await gateway.settle()
        failed = gateway.events_of(BackendFailed)
    stored_ids = [e.event_id for e in store.events]
    relayed = [e for e in [*before, *after] if e.id]
    messages = [json.loads(e.data) for e in [*before, *after] if e.data]
    assert first.status_code == 200
    assert resumed.status_code == 200
    assert resumed.headers["content-type"] == "text/event-stream"
    # The ids reach the client exactly as the backend stored them.
    assert all(e.id in stored_ids for e in relayed)
    assert [m.get("method", m.get("id")) for m in messages] == [
        "notifications/progress",
        "notifications/progress",
        21,
    ]
    assert messages[-1]["result"]["content"][0]["text"] == "released"
    backend_gets = [r for r in controls.requests if r.method == "GET"]
    assert backend_gets[-1].headers["last-event-id"] == last_id
    assert failed == []


async def test_streams_sdk_client_resumes_closed_stream() -> None:
    """The SDK client resumes a stream the server closed, through the gateway."""
    store = MemoryEventStore()
    progress: list[float] = []

    async def on_progress(
        value: float, total: float | None, message: str | None
    ) -> None:
        progress.append(value)

    controls = BackendControls()
    async with sdk_stack(controls, event_store=store) as (gateway, _client):
        async with (
            streamable_http_client(gateway.mcp_url) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            with anyio.fail_after(10):
                result = await session.call_tool(
                    "pausing", {}, progress_callback=on_progress
                )
        await gateway.settle()
        failed = gateway.events_of(BackendFailed)
    content = result.content[0]
    assert isinstance(content, TextContent)
    assert content.text == "finished after the stream closed"
    assert progress == [1.0, 2.0]
    resumptions = [
        r
        for r in controls.requests
        if r.method == "GET" and "last-event-id" in r.headers
    ]
    assert len(resumptions) == 1
    assert failed == []
