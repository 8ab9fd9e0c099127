"""ASGI plumbing of the MCP endpoint: reading bodies and sending responses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from gateway.mcp.backend import UpstreamStreamError
from gateway.mcp.headers import encode_headers
from gateway.mcp.response import StreamOutcome
from gateway.mcp.sse import aclose_stream

log = structlog.get_logger("gateway.mcp.asgi")

ASGIMessage = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]

CLIENT_DISCONNECTED = "client disconnected"


class ClientDisconnected(Exception):
    """The client closed the connection before it could get its response."""


class RequestBodyError(Exception):
    """A request body that the endpoint rejects before reading all of it.

    Attributes:
        status: 413 for a body over the limit, 400 for an invalid length.
        reason: The ``data.reason`` code of the error response.
    """

    def __init__(self, detail: str, *, status: int, reason: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason


async def read_body(
    receive: ASGIReceive, content_length: str | None, limit: int
) -> bytes:
    """Read a request body of at most ``limit`` bytes.

    A declared ``Content-Length`` over the limit is rejected before any byte
    is read. Otherwise the body is read chunk by chunk, and reading stops as
    soon as the limit is passed.

    Raises:
        RequestBodyError: The body is too large or its length header invalid.
        ClientDisconnected: The client left while the body was being read.
    """
    if content_length is not None:
        if not content_length.strip().isdigit():
            detail = f"Bad Request: invalid Content-Length {content_length!r}"
            raise RequestBodyError(detail, status=400, reason="invalid_request")
        if int(content_length) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(limit: int) -> RequestBodyError:
    detail = f"Content Too Large: the body exceeds {limit} bytes"
    return RequestBodyError(detail, status=413, reason="body_too_large")


async def send_body(
    send: ASGISend, status: int, headers: dict[str, str], body: bytes
) -> StreamOutcome:
    """Send a complete response with ``Content-Length`` (none for 204 and 304)."""
    if status in (204, 304):
        body = b""
    else:
        headers["content-length"] = str(len(body))
    try:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": encode_headers(headers),
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})
    except OSError:
        return StreamOutcome(completed=False, bytes_sent=0, error=CLIENT_DISCONNECTED)
    return StreamOutcome(completed=True, bytes_sent=len(body))


@dataclass(slots=True)
class _StreamState:
    bytes_sent: int = 0
    finished: bool = False
    exhausted: bool = False
    disconnected: bool = False
    error: str | None = None


async def send_stream(
    send: ASGISend,
    receive: ASGIReceive,
    status: int,
    headers: dict[str, str],
    stream: AsyncIterator[bytes],
) -> StreamOutcome:
    """Send an event stream, each chunk as soon as it arrives, and close it.

    No ``Content-Length`` is sent, and ``Cache-Control: no-cache`` and
    ``X-Accel-Buffering: no`` keep proxies from buffering. While sending, a
    task watches ``receive`` for ``http.disconnect``: when the client leaves,
    relaying stops at once. The stream is closed in every case, which closes
    the upstream response behind it. A failing stream ends the response
    normally, so the client sees the end of the stream rather than a broken
    connection.
    """
    headers.setdefault("cache-control", "no-cache")
    headers.setdefault("x-accel-buffering", "no")
    headers.pop("content-length", None)
    state = _StreamState()
    try:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": encode_headers(headers),
                }
            )
        except OSError:
            state.disconnected = True
        else:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(
                    _watch_disconnect, receive, task_group.cancel_scope, state
                )
                await _pump(stream, send, state)
                task_group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            try:
                await aclose_stream(stream)
            except Exception:
                log.exception("mcp.stream_close_failed")
    if state.disconnected and not (state.exhausted and state.error is None):
        return StreamOutcome(
            completed=False, bytes_sent=state.bytes_sent, error=CLIENT_DISCONNECTED
        )
    # A client that leaves right after the last event, before the closing
    # empty chunk, still received the whole stream.
    return StreamOutcome(
        completed=(state.finished or state.exhausted) and state.error is None,
        bytes_sent=state.bytes_sent,
        error=state.error,
    )


async def _watch_disconnect(
    receive: ASGIReceive, scope: anyio.CancelScope, state: _StreamState
) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            state.disconnected = True
            scope.cancel()
            return


async def _pump(
    stream: AsyncIterator[bytes], send: ASGISend, state: _StreamState
) -> None:
    try:
        async for chunk in stream:
            if not chunk:
                continue
            try:
                await send(
                    {"type": "http.response.body", "body": chunk, "more_body": True}
                )
            except OSError:
                state.disconnected = True
                return
            state.bytes_sent += len(chunk)
        state.exhausted = True
    except UpstreamStreamError as exc:
        state.error = str(exc)
    except Exception as exc:
        log.exception("mcp.stream_failed")
        state.error = f"the response stream failed: {type(exc).__name__}"
    try:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:
        state.disconnected = True
        return
    state.finished = True
