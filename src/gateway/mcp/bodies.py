"""Reading backend answers whole: a JSON body, or the response in an event stream.

Both readers bound what they hold by the size of one message and stop at the
request's deadline, so a backend cannot make the gateway buffer without end.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx

from gateway.mcp.backend import DeadlineExceeded, UpstreamStreamError
from gateway.mcp.jsonrpc import read_response_envelope, same_id
from gateway.mcp.sse import SseParser

MAX_ERROR_BODY_BYTES = 64 * 1024
"""Bytes read from a backend error response; the rest is discarded."""


class MessageTooLarge(Exception):
    """A backend message is larger than the gateway's size limit."""


def time_limit(deadline: float | None) -> contextlib.AbstractContextManager[Any]:
    """Return a cancel scope that ends at ``deadline`` (``time.perf_counter()``).

    Without a deadline no scope is created, which keeps the common path cheap.
    """
    if deadline is None:
        return contextlib.nullcontext()
    return anyio.move_on_after(deadline - time.perf_counter())


async def read_message(
    upstream: httpx.Response, *, limit: int, deadline: float | None
) -> bytes:
    """Read a JSON body of at most ``limit`` bytes, decoded, and close the response.

    Raises:
        MessageTooLarge: The decoded body is longer than ``limit``. Reading
            stops there.
        DeadlineExceeded: ``deadline`` passed before the body was read.
        httpx.DecodingError: The bytes do not match their Content-Encoding.
        httpx.TransportError: The connection failed or a read timed out.
    """
    chunks: list[bytes] = []
    size = 0
    finished = False
    body = upstream.aiter_bytes()
    try:
        with time_limit(deadline):
            async for chunk in body:
                size += len(chunk)
                if size > limit:
                    msg = f"a JSON body larger than {limit} bytes"
                    raise MessageTooLarge(msg)
                chunks.append(chunk)
            finished = True
    finally:
        await body.aclose()  # type: ignore[attr-defined]
        await upstream.aclose()
    if not finished:
        msg = "the request's deadline passed while the backend sent its answer"
        raise DeadlineExceeded(msg)
    return b"".join(chunks)


async def collect_answer(stream: AsyncIterator[bytes], request_id: Any) -> bytes | None:
    """Read a relayed event stream to its end and return the response to the id.

    Notifications and requests on the stream are dropped. The stream is
    expected to end after the response (as :class:`RelayStream` does) and is
    closed in every case. A stream that failed after its last event (raising
    :class:`UpstreamStreamError`) still gives that event.

    Returns:
        The data of the last event that is a response to ``request_id``, or
        None when there was none.
    """
    parser = SseParser()
    answer: bytes | None = None
    try:
        async for chunk in stream:
            for event in parser.feed(chunk):
                if not event.data:
                    continue
                data = event.data.encode()
                envelope = read_response_envelope(data)
                if envelope is not None and same_id(envelope.id, request_id):
                    answer = data
    except UpstreamStreamError:
        pass
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    return answer


async def read_limited(upstream: httpx.Response) -> bytes:
    """Read at most :data:`MAX_ERROR_BODY_BYTES` of a body not relayed, then close it.

    A body whose bytes do not match its Content-Encoding reads as empty.
    """
    chunks: list[bytes] = []
    size = 0
    body = upstream.aiter_bytes()
    try:
        async for chunk in body:
            chunks.append(chunk)
            size += len(chunk)
            if size >= MAX_ERROR_BODY_BYTES:
                break
    except httpx.DecodingError:
        # The bytes do not match their Content-Encoding, so the status decides.
        chunks.clear()
    finally:
        await body.aclose()  # type: ignore[attr-defined]
        await upstream.aclose()
    return b"".join(chunks)[:MAX_ERROR_BODY_BYTES]
