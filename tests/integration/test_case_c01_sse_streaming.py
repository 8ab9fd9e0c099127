"""Case C01: the gateway relays an event stream event by event, never buffered.

Everything the backend sends before its final response (progress, log
messages, ``list_changed`` and server-to-client requests) must reach the
client while the tool still runs.

Covered elsewhere and not repeated here:

- ``test_transport_http.py::test_transport_http_sse_relayed_event_by_event``:
  the first progress event arrives while the tool waits; ``Cache-Control:
  no-cache``, ``X-Accel-Buffering: no``, no ``Content-Length`` and no
  ``Content-Encoding``; the final response is the last event.
- ``test_transport_sdk.py::test_transport_sdk_progress_arrives_before_result``:
  the same through the official SDK client.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from _case_support import (
    HandshakeOnlyBackend,
    case_stack,
    modern_request,
    open_session,
    scripted_stack,
    tools_call,
)
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import ElicitRequestParams, ElicitResult, TextContent

from gateway.mcp.sse import SseParser

pytestmark = pytest.mark.anyio


async def read_events(
    response: httpx.Response, started: float
) -> AsyncIterator[tuple[float, dict[str, Any]]]:
    """Yield each JSON-RPC message of a streamed body with its arrival time."""
    parser = SseParser()
    async for chunk in response.aiter_raw():
        for event in parser.feed(chunk):
            if event.data:
                yield time.perf_counter() - started, json.loads(event.data)


async def test_sse_paced_progress_first_event_under_half_second() -> None:
    """Progress paced by the backend arrives paced, not all at the end (C01)."""
    call = tools_call(7, "paced_count", n=3, pause=0.6)
    call["params"]["_meta"] = {"progressToken": "pt-7"}
    arrivals: list[tuple[float, dict[str, Any]]] = []
    async with case_stack() as (gateway, client, _controls):
        headers = await open_session(client, gateway.mcp_url)
        started = time.perf_counter()
        async with client.stream(
            "POST", gateway.mcp_url, json=call, headers=headers
        ) as response:
            with anyio.fail_after(5):
                async for arrival in read_events(response, started):
                    arrivals.append(arrival)
            status = response.status_code
            content_type = response.headers["content-type"]

    times = [at for at, _message in arrivals]
    messages = [message for _at, message in arrivals]
    assert status == 200
    assert content_type == "text/event-stream"
    assert [m.get("method") for m in messages[:3]] == ["notifications/progress"] * 3
    assert [m["params"]["progress"] for m in messages[:3]] == [1, 2, 3]
    assert times[0] < 0.5
    assert times[1] - times[0] > 0.4
    assert times[-1] > 1.1
    assert messages[-1]["id"] == 7
    assert messages[-1]["result"]["content"][0]["text"] == "counted to 3"


async def test_sse_log_and_list_changed_arrive_before_result() -> None:
    """Log and list_changed notifications reach the client mid-call (C01)."""
    call = tools_call(8, "log_then_wait")
    messages: list[dict[str, Any]] = []
    seen_before_release: list[str] = []
    async with case_stack() as (gateway, client, controls):
        headers = await open_session(client, gateway.mcp_url)
        async with client.stream(
            "POST", gateway.mcp_url, json=call, headers=headers
        ) as response:
            with anyio.fail_after(4):
                async for _at, message in read_events(response, time.perf_counter()):
                    messages.append(message)
                    if not controls.release.is_set():
                        seen_before_release.append(message.get("method", "answer"))
                    if len(seen_before_release) == 2:
                        controls.release.set()

    assert seen_before_release == [
        "notifications/message",
        "notifications/tools/list_changed",
    ]
    assert messages[-1]["id"] == 8
    assert messages[-1]["result"]["content"][0]["text"] == "done"
    assert len(messages) == 3


@contextlib.asynccontextmanager
async def sdk_client(
    url: str, responses: list[httpx2.Response], **session_options: Any
) -> AsyncIterator[ClientSession]:
    """Open an initialized official-SDK client session, recording responses."""

    async def record(response: httpx2.Response) -> None:
        responses.append(response)

    async with (
        httpx2.AsyncClient(event_hooks={"response": [record]}) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write, **session_options) as session,
    ):
        await session.initialize()
        yield session


async def test_sse_elicitation_answered_mid_call_through_gateway() -> None:
    """A server-to-client request arrives mid-call and its answer gets back (C01).

    The official SDK client answers the backend's elicitation. The answer is
    a JSON-RPC response that the gateway acknowledges with 202 and relays to
    the backend session that asked, under the backend's own request id.
    """
    asked: list[str] = []

    async def elicit(_context: Any, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"name": "Ada"})

    responses: list[httpx2.Response] = []
    async with case_stack() as (gateway, _client, controls):
        async with sdk_client(
            gateway.mcp_url, responses, elicitation_callback=elicit
        ) as session:
            with anyio.fail_after(4):
                result = await session.call_tool("ask_name", {})
        elicit_answers = [
            r.message
            for r in controls.requests
            if isinstance(r.message, dict) and "result" in r.message
        ]

    content = result.content[0]
    assert isinstance(content, TextContent)
    assert content.text == "hello Ada"
    assert asked == ["Who is calling?"]
    [answer] = elicit_answers
    assert answer["result"] == {"action": "accept", "content": {"name": "Ada"}}
    # The backend's elicitation id came back unchanged, type included.
    assert isinstance(answer["id"], int | str)
    answer_posts = [
        r
        for r in responses
        if r.request.method == "POST" and b'"result"' in r.request.content
    ]
    assert [r.status_code for r in answer_posts] == [202]


async def test_sse_stream_not_compressed_for_gzip_client() -> None:
    """A client that accepts gzip still gets an uncompressed event stream (C01)."""
    call = tools_call(9, "paced_count", n=2, pause=0.05)
    call["params"]["_meta"] = {"progressToken": 9}
    async with case_stack() as (gateway, client, controls):
        headers = await open_session(client, gateway.mcp_url)
        headers["accept-encoding"] = "gzip, deflate, br"
        async with client.stream(
            "POST", gateway.mcp_url, json=call, headers=headers
        ) as response:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
            response_headers = response.headers
        upstream = controls.posts("tools/call")[0].headers

    assert "content-encoding" not in response_headers
    assert "content-length" not in response_headers
    assert raw.startswith(b"event:") or raw.startswith(b"data:") or b"\ndata:" in raw
    assert b"notifications/progress" in raw
    assert upstream.get("accept-encoding") == "identity"


async def test_modern_request_progress_relayed_before_result() -> None:
    """A 2026-07-28 tools/call streams its progress before the result (C01)."""
    body, headers = modern_request(
        11, "tools/call", {"name": "paced_count", "arguments": {"n": 2, "pause": 0.6}}
    )
    body["params"]["_meta"]["progressToken"] = "pt-11"
    arrivals: list[tuple[float, dict[str, Any]]] = []
    async with case_stack() as (gateway, client, _controls):
        started = time.perf_counter()
        async with client.stream(
            "POST", gateway.mcp_url, json=body, headers=headers
        ) as response:
            assert response.status_code == 200
            with anyio.fail_after(4):
                async for arrival in read_events(response, started):
                    arrivals.append(arrival)

    first_at, first = arrivals[0]
    assert first["method"] == "notifications/progress"
    assert first["params"]["progressToken"] == "pt-11"
    assert first_at < 0.5
    assert arrivals[-1][1]["id"] == 11


async def test_modern_request_abandoned_before_headers_cancels_call() -> None:
    """In 2026-07-28 a client leaving before any event cancels the call (C01).

    The client gives up after half a second, before the backend sent its
    response headers, and so closes its connection. The tool must then be
    cancelled at the backend.
    """
    body, headers = modern_request(
        12, "tools/call", {"name": "wait_for_release", "arguments": {"tag": "c12"}}
    )
    async with case_stack() as (gateway, client, controls):
        with anyio.move_on_after(0.5):
            await client.post(gateway.mcp_url, json=body, headers=headers)
        with anyio.move_on_after(3):
            while not controls.cancelled:
                await anyio.sleep(0.02)
        cancelled = list(controls.cancelled)
        controls.release.set()
    assert cancelled == ["c12"]


async def test_modern_stream_closed_by_client_cancels_call() -> None:
    """In 2026-07-28 a client closing a started event stream cancels the call (C01)."""
    body, headers = modern_request(
        13,
        "tools/call",
        {"name": "wait_for_release", "arguments": {"tag": "c13", "progress": True}},
    )
    body["params"]["_meta"]["progressToken"] = "pt-13"
    async with case_stack() as (gateway, client, controls):
        async with client.stream(
            "POST", gateway.mcp_url, json=body, headers=headers
        ) as response:
            assert response.status_code == 200
            with anyio.fail_after(3):
                async for _at, message in read_events(response, time.perf_counter()):
                    assert message["method"] == "notifications/progress"
                    break
        with anyio.move_on_after(3):
            while not controls.cancelled:
                await anyio.sleep(0.02)
        cancelled = list(controls.cancelled)
        controls.release.set()
    assert cancelled == ["c13"]


async def test_modern_abandoned_call_cancelled_at_handshake_backend() -> None:
    """A 2026-07-28 client leaving makes a bridged backend get a cancel (C01).

    The backend speaks only the handshake era, so the gateway must send it
    ``notifications/cancelled`` with the id it used upstream.
    """
    backend = HandshakeOnlyBackend()
    body, headers = modern_request(
        14, "tools/call", {"name": "echo", "arguments": {"text": "x", "delay": 3}}
    )
    async with scripted_stack(backend) as (gateway, client, scripted):
        with anyio.move_on_after(0.5):
            await client.post(gateway.mcp_url, json=body, headers=headers)
        with anyio.move_on_after(2):
            while not scripted.posts("notifications/cancelled"):
                await anyio.sleep(0.02)
        cancels = scripted.posts("notifications/cancelled")
        upstream_ids = list(backend.seen_ids)
    assert len(cancels) == 1
    assert cancels[0].message["params"]["requestId"] == upstream_ids[-1]
