"""``Content-Encoding`` always matches the bytes the client receives.

The gateway asks backends for ``Accept-Encoding: identity``. An SDK server
never compresses, so the backend here is a raw ASGI app that compresses
anyway, or declares a coding it does not use.
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import pytest
from _streams_support import (
    RawResponder,
    events_of,
    open_session,
    raw_stack,
    sdk_stack,
    tool_call,
)

from gateway.events import BackendFailed

pytestmark = pytest.mark.anyio


def result_for(message: dict[str, Any], text: str) -> bytes:
    result = {"content": [{"type": "text", "text": text}], "isError": False}
    return json.dumps(
        {"jsonrpc": "2.0", "id": message["id"], "result": result}
    ).encode()


def progress_event(step: int) -> bytes:
    notification = {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": "p", "progress": step},
    }
    return f"event: message\ndata: {json.dumps(notification)}\n\n".encode()


def compress(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.compress(data)
    return zlib.compress(data)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_streams_compressed_json_relayed_decoded(coding: str) -> None:
    """A compressed JSON answer reaches the client decoded, without the header."""

    async def reply(message: dict[str, Any], responder: RawResponder) -> None:
        body = compress(coding, result_for(message, "décodé 🙂"))
        await responder.start(
            200, {"content-type": "application/json", "content-encoding": coding}
        )
        await responder.write(body[:10])
        await responder.write(body[10:])
        await responder.end()

    async with raw_stack(reply) as (gateway, client, _backend):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.post(
            gateway.mcp_url, json=tool_call(3, "echo"), headers=headers
        )
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert response.headers["content-length"] == str(len(response.content))
    assert response.json()["result"]["content"][0]["text"] == "décodé 🙂"


async def test_streams_gzip_event_stream_relayed_decoded() -> None:
    """A gzip event stream is relayed event by event, decoded, never compressed."""

    async def reply(message: dict[str, Any], responder: RawResponder) -> None:
        compressor = zlib.compressobj(wbits=31)
        await responder.start(
            200, {"content-type": "text/event-stream", "content-encoding": "gzip"}
        )
        for step in (1, 2):
            data = compressor.compress(progress_event(step))
            await responder.write(data + compressor.flush(zlib.Z_SYNC_FLUSH))
        final = f"event: message\ndata: {result_for(message, 'done').decode()}\n\n"
        await responder.write(compressor.compress(final.encode()) + compressor.flush())
        await responder.end()

    async with raw_stack(reply) as (gateway, client, _backend):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.post(
            gateway.mcp_url,
            json=tool_call(4, "echo"),
            headers={**headers, "accept-encoding": "gzip, deflate"},
        )
    messages = [json.loads(e.data) for e in events_of(response.content) if e.data]
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert "content-encoding" not in response.headers
    assert [m.get("method") for m in messages] == [
        "notifications/progress",
        "notifications/progress",
        None,
    ]
    assert messages[-1]["result"]["content"][0]["text"] == "done"


async def test_streams_compressed_backend_error_relayed_decoded() -> None:
    """A gzip JSON-RPC error on a 4xx is read decoded and relayed with HTTP 200."""

    async def reply(message: dict[str, Any], responder: RawResponder) -> None:
        error = {"code": -32602, "message": "Unknown tool: nope"}
        body = json.dumps({"jsonrpc": "2.0", "id": message["id"], "error": error})
        await responder.start(
            400, {"content-type": "application/json", "content-encoding": "gzip"}
        )
        await responder.write(gzip.compress(body.encode()))
        await responder.end()

    async with raw_stack(reply) as (gateway, client, _backend):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.post(
            gateway.mcp_url, json=tool_call(5, "nope"), headers=headers
        )
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert response.json()["error"]["message"] == "Unknown tool: nope"


@pytest.mark.parametrize("content_type", ["application/json", "text/event-stream"])
async def test_streams_unsupported_encoding_invalid_response(content_type: str) -> None:
    """A coding the gateway cannot decode is never relayed; the client gets an error."""

    async def reply(message: dict[str, Any], responder: RawResponder) -> None:
        await responder.start(
            200, {"content-type": content_type, "content-encoding": "br"}
        )
        await responder.write(b"\x8b\x02\x80not-really-brotli\x03")
        await responder.end()

    async with raw_stack(reply) as (gateway, client, _backend):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 6, "method": "tools/list"},
            headers=headers,
        )
        await gateway.settle()
        failed = gateway.events_of(BackendFailed)
    body = response.json()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert "content-encoding" not in response.headers
    assert body["id"] == 6
    assert body["error"]["data"]["reason"] == "backend_invalid_response"
    assert [event.reason for event in failed] == ["backend_invalid_response"]
    assert "'br'" in failed[0].detail


@pytest.mark.parametrize("content_type", ["application/json", "text/event-stream"])
async def test_streams_corrupt_gzip_gets_error_for_id(content_type: str) -> None:
    """Bytes that do not match their ``gzip`` header end in an error for the id."""

    async def reply(message: dict[str, Any], responder: RawResponder) -> None:
        await responder.start(
            200, {"content-type": content_type, "content-encoding": "gzip"}
        )
        await responder.write(b"data: this is not gzip\n\n")
        await responder.end()

    async with raw_stack(reply) as (gateway, client, _backend):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 7, "method": "tools/list"},
            headers=headers,
        )
        await gateway.settle()
        failed = gateway.events_of(BackendFailed)
    messages = [json.loads(e.data) for e in events_of(response.content) if e.data]
    if content_type == "application/json":
        messages = [response.json()]
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert b"not gzip" not in response.content
    assert [m["id"] for m in messages] == [7]
    reason = messages[0]["error"]["data"]["reason"]
    expected = (
        "backend_invalid_response"
        if content_type == "application/json"
        else "backend_stream_failed"
    )
    assert reason == expected
    assert [event.reason for event in failed] == [expected]


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
async def test_streams_client_accepting_gzip_gets_identity(json_response: bool) -> None:
    """A client that accepts gzip still gets uncompressed answers and streams."""
    async with sdk_stack(json_response=json_response) as (gateway, client):
        headers = await open_session(client, gateway.mcp_url)
        response = await client.post(
            gateway.mcp_url,
            json=tool_call(8, "echo", text="plain"),
            headers={**headers, "accept-encoding": "gzip, deflate, br, zstd"},
        )
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert b'"plain"' in response.content
