"""Backends and helpers of the event stream tests (``test_streams_*``).

The SDK backend is an official-SDK ``MCPServer`` with tools for streams:
large results, slow progress, a tool that waits for the test, and one that
closes its own stream so that the client resumes it. It can keep its events
in :class:`MemoryEventStore` for ``Last-Event-ID`` resumption.

:class:`RawBackend` is a plain ASGI app for what an SDK server never sends:
compressed bodies despite ``Accept-Encoding: identity``, characters split
across TCP writes, oversized events on demand.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from _transport_harness import (
    MCP_HEADERS,
    BackendControls,
    GatewayHarness,
    RecordingApp,
    initialize_body,
    running_gateway,
)
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp_types import JSONRPCMessage

from gateway.demo.serve import run_app
from gateway.mcp.sse import SseEvent, SseParser

RAW_SESSION = "raw-backend-session"
PATTERN = "héllo wörld 🙂 日本 "
"""Text with one-, two-, three- and four-byte UTF-8 characters."""


def patterned_text(size: int) -> str:
    """Return ``size`` characters cycling through :data:`PATTERN`."""
    repeats = size // len(PATTERN) + 1
    return (PATTERN * repeats)[:size]


@dataclass
class StoredEvent:
    """One event as the backend's event store keeps it."""

    event_id: str
    stream_id: str
    message: JSONRPCMessage | None


class MemoryEventStore(EventStore):
    """An event store in memory, which lets the SDK server resume streams.

    Attributes:
        events: Every event stored, in order; priming events have no message.
    """

    def __init__(self) -> None:
        self.events: list[StoredEvent] = []
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        """Keep the event and return its id, unique in the store."""
        event_id = f"evt-{next(self._ids)}"
        self.events.append(StoredEvent(event_id, stream_id, message))
        return event_id

    async def replay_events_after(
        self, last_event_id: str, send_callback: EventCallback
    ) -> str | None:
        """Send the messages of the same stream stored after ``last_event_id``."""
        positions = [e.event_id for e in self.events]
        if last_event_id not in positions:
            return None
        start = positions.index(last_event_id)
        stream_id = self.events[start].stream_id
        for stored in self.events[start + 1 :]:
            if stored.stream_id == stream_id and stored.message is not None:
                await send_callback(EventMessage(stored.message, stored.event_id))
        return stream_id


def create_streams_backend(
    controls: BackendControls,
    *,
    json_response: bool = False,
    event_store: EventStore | None = None,
    max_request_body_size: int = 16 * 1024 * 1024,
) -> RecordingApp:
    """Build the SDK backend of the stream tests."""
    server = MCPServer("streams-test-backend")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def sized(size: int) -> str:
        """Return ``size`` characters of patterned text."""
        return patterned_text(size)

    @server.tool()
    async def slow_steps(steps: int, pause: float, ctx: Context) -> str:
        """Report progress ``steps`` times, ``pause`` seconds apart."""
        for step in range(1, steps + 1):
            await anyio.sleep(pause)
            await ctx.report_progress(step, steps)
        return f"done after {steps} steps"

    @server.tool()
    async def gated(ctx: Context) -> str:
        """Report progress 1, wait for the test's release, report 2 and finish."""
        await ctx.report_progress(1, 2)
        try:
            with anyio.fail_after(10):
                await controls.release.wait()
        except anyio.get_cancelled_exc_class():
            controls.cancelled.set()
            raise
        await ctx.report_progress(2, 2)
        return "released"

    @server.tool()
    async def pausing(ctx: Context) -> str:
        """Report progress 1, close this request's stream, then finish."""
        await ctx.report_progress(1, 2)
        await ctx.close_sse_stream()
        await anyio.sleep(0.2)
        await ctx.report_progress(2, 2)
        return "finished after the stream closed"

    app = server.streamable_http_app(
        streamable_http_path="/mcp",
        json_response=json_response,
        event_store=event_store,
        retry_interval=100 if event_store is not None else None,
        max_request_body_size=max_request_body_size,
    )
    return RecordingApp(app, controls)


@contextlib.asynccontextmanager
async def sdk_stack(
    controls: BackendControls | None = None,
    *,
    json_response: bool = False,
    event_store: EventStore | None = None,
    **gateway_options: Any,
) -> AsyncIterator[tuple[GatewayHarness, httpx.AsyncClient]]:
    """Serve the SDK backend and the gateway; yield the gateway and a client."""
    app = create_streams_backend(
        controls or BackendControls(),
        json_response=json_response,
        event_store=event_store,
    )
    async with (
        run_app(app) as backend,
        running_gateway(f"{backend.url}/mcp", **gateway_options) as gateway,
        httpx.AsyncClient(timeout=10.0) as client,
    ):
        yield gateway, client


Reply = Callable[[dict[str, Any], "RawResponder"], Awaitable[None]]


class RawResponder:
    """Sends one raw HTTP response from :class:`RawBackend`."""

    def __init__(self, send: Any) -> None:
        self._send = send

    async def start(self, status: int, headers: dict[str, str]) -> None:
        """Send the status line and headers, plus the backend's session id."""
        raw = [(k.encode(), v.encode()) for k, v in headers.items()]
        raw.append((b"mcp-session-id", RAW_SESSION.encode()))
        await self._send(
            {"type": "http.response.start", "status": status, "headers": raw}
        )

    async def write(self, chunk: bytes) -> None:
        """Send one chunk of the body as its own write."""
        await self._send(
            {"type": "http.response.body", "body": chunk, "more_body": True}
        )

    async def end(self) -> None:
        """End the body."""
        await self._send(
            {"type": "http.response.body", "body": b"", "more_body": False}
        )


class RawBackend:
    """An MCP backend whose answers to requests other than initialize are scripted.

    ``initialize`` gets a JSON result and a session id, notifications 202,
    and every other request is answered by ``reply(message, responder)``.
    The messages received are kept in :attr:`messages`.
    """

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        responder = RawResponder(send)
        if scope["method"] != "POST":
            await responder.start(405, {"allow": "POST"})
            await responder.end()
            return
        message = json.loads(body)
        self.messages.append(message)
        if message.get("method") == "initialize":
            result = {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "raw-backend", "version": "0"},
            }
            reply = {"jsonrpc": "2.0", "id": message["id"], "result": result}
            await responder.start(200, {"content-type": "application/json"})
            await responder.write(json.dumps(reply).encode())
            await responder.end()
        elif "id" not in message or "method" not in message:
            await responder.start(202, {})
            await responder.end()
        else:
            await self.reply(message, responder)


@contextlib.asynccontextmanager
async def raw_stack(
    reply: Reply, **gateway_options: Any
) -> AsyncIterator[tuple[GatewayHarness, httpx.AsyncClient, RawBackend]]:
    """Serve a :class:`RawBackend` and the gateway in front of it."""
    backend_app = RawBackend(reply)
    async with (
        run_app(backend_app) as backend,
        running_gateway(f"{backend.url}/mcp", **gateway_options) as gateway,
        httpx.AsyncClient(timeout=10.0) as client,
    ):
        yield gateway, client, backend_app


async def open_session(
    client: httpx.AsyncClient, url: str, version: str = "2025-06-18"
) -> dict[str, str]:
    """Initialize a session through the gateway; return its request headers."""
    response = await client.post(
        url, json=initialize_body(version=version), headers=MCP_HEADERS
    )
    assert response.status_code == 200, response.text
    headers = {
        **MCP_HEADERS,
        "mcp-session-id": response.headers["mcp-session-id"],
        "mcp-protocol-version": version,
    }
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    sent = await client.post(url, json=initialized, headers=headers)
    assert sent.status_code == 202
    return headers


def tool_call(request_id: Any, name: str, **arguments: Any) -> dict[str, Any]:
    """Return a ``tools/call`` request that asks for progress notifications."""
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {
            "name": name,
            "arguments": arguments,
            "_meta": {"progressToken": f"progress-{request_id}"},
        },
    }


def events_of(body: bytes) -> list[SseEvent]:
    """Parse a whole event stream body."""
    return SseParser().feed(body)


def messages_of(response: httpx.Response) -> list[dict[str, Any]]:
    """Return the JSON-RPC messages of a JSON or event-stream response."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return [json.loads(e.data) for e in events_of(response.content) if e.data]
    return [response.json()]
