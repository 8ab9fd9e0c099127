"""The relay's keepalive, deadline, size limit and encoding checks.

The upstream is an ``httpx.Response`` over a scripted byte stream, because
these contracts depend on exact timing and event sequences; the
``test_streams_*`` integration tests cover the same paths through the
gateway with real backends.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from gateway.mcp.backend import UpstreamStreamError
from gateway.mcp.keepalive import KEEPALIVE_COMMENT
from gateway.mcp.relay import RelayStream

pytestmark = pytest.mark.anyio

PROGRESS = b'data: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n'
ANSWER = b'data: {"jsonrpc":"2.0","id":1,"result":{}}\n\n'


class ScriptedBody(httpx.AsyncByteStream):
    """Yields chunks, each after its delay in seconds; records closing."""

    def __init__(self, script: list[tuple[float, bytes]]) -> None:
        self.script = script
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for delay, chunk in self.script:
            await anyio.sleep(delay)
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


class Reports:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    async def __call__(self, reason: str, detail: str, exc: Exception | None) -> None:
        self.reasons.append(reason)


def upstream(body: ScriptedBody, **headers: str) -> httpx.Response:
    return httpx.Response(
        200, headers={"content-type": "text/event-stream", **headers}, stream=body
    )


def fallback(reason: str) -> bytes:
    error = {"code": -32603, "message": "failed", "data": {"reason": reason}}
    return (
        f"data: {json.dumps({'jsonrpc': '2.0', 'id': 1, 'error': error})}\n\n".encode()
    )


async def drain(relay: RelayStream) -> tuple[list[bytes], str | None]:
    chunks: list[bytes] = []
    try:
        with anyio.fail_after(5):
            async for chunk in relay:
                chunks.append(chunk)
    except UpstreamStreamError as exc:
        return chunks, str(exc)
    return chunks, None


async def test_relay_stream_idle_sends_keepalive_comments() -> None:
    """Output pauses longer than ``keepalive`` are filled with comments."""
    body = ScriptedBody([(0, PROGRESS), (0.25, ANSWER)])
    reports = Reports()
    relay = RelayStream(
        upstream(body), reports, answers=1, fallback=fallback, keepalive=0.05
    )
    chunks, error = await drain(relay)
    assert chunks[0] == PROGRESS
    assert chunks[-1] == ANSWER
    assert 2 <= chunks.count(KEEPALIVE_COMMENT) <= 6
    assert error is None
    assert reports.reasons == []
    assert body.closed is True


async def test_relay_stream_deadline_ends_with_fallback() -> None:
    """At the deadline the stream closes upstream and ends with the error event."""
    body = ScriptedBody([(0, PROGRESS), (5, ANSWER)])
    reports = Reports()
    relay = RelayStream(
        upstream(body),
        reports,
        answers=1,
        fallback=fallback,
        deadline=time.perf_counter() + 0.1,
    )
    chunks, error = await drain(relay)
    assert chunks == [PROGRESS, fallback("backend_deadline")]
    assert error == "the request did not complete within its deadline"
    assert reports.reasons == ["backend_deadline"]
    assert relay.deadline_passed is True
    assert relay.failure_reason == "backend_deadline"
    assert body.closed is True


async def test_relay_stream_deadline_applies_to_busy_stream() -> None:
    """A stream that keeps sending events still ends at its deadline."""
    body = ScriptedBody([(0.02, PROGRESS)] * 100 + [(0, ANSWER)])
    relay = RelayStream(
        upstream(body),
        Reports(),
        answers=1,
        fallback=fallback,
        deadline=time.perf_counter() + 0.15,
    )
    started = time.perf_counter()
    chunks, _error = await drain(relay)
    assert time.perf_counter() - started < 1.0
    assert chunks[-1] == fallback("backend_deadline")


async def test_relay_stream_get_ignores_deadline() -> None:
    """A stream that answers no request (GET) has no deadline."""
    body = ScriptedBody([(0, PROGRESS), (0.2, PROGRESS)])
    relay = RelayStream(upstream(body), Reports(), deadline=time.perf_counter())
    chunks, error = await drain(relay)
    assert chunks == [PROGRESS, PROGRESS]
    assert error is None


async def test_relay_stream_oversized_get_event_dropped_reported() -> None:
    """On a GET stream an event over the limit is dropped, reported once."""
    big = b"data: " + json.dumps({"jsonrpc": "2.0", "method": "x" * 2000}).encode()
    body = ScriptedBody([(0, big + b"\n\n"), (0, big + b"\n\n"), (0, PROGRESS)])
    reports = Reports()
    relay = RelayStream(upstream(body), reports, max_event_bytes=1024)
    chunks, error = await drain(relay)
    assert chunks == [PROGRESS]
    assert error is None
    assert reports.reasons == ["backend_message_too_large"]


async def test_relay_stream_oversized_answer_ends_with_fallback() -> None:
    """On a POST's stream an event over the limit ends it with the error event."""
    big = b'data: {"jsonrpc":"2.0","id":1,"result":{"t":"' + b"x" * 2000 + b'"}}\n\n'
    body = ScriptedBody([(0, PROGRESS + big)])
    reports = Reports()
    relay = RelayStream(
        upstream(body), reports, answers=1, fallback=fallback, max_event_bytes=1024
    )
    chunks, error = await drain(relay)
    assert chunks == [PROGRESS, fallback("backend_message_too_large")]
    assert error is not None
    assert reports.reasons == ["backend_message_too_large"]
    assert body.closed is True


@pytest.mark.parametrize("answers", [1, None], ids=["post", "get"])
async def test_relay_stream_unsupported_encoding_ends_at_once(answers: Any) -> None:
    """A Content-Encoding that is not decoded is never relayed as events."""
    body = ScriptedBody([(0, b"\x1b\x00compressed")])
    reports = Reports()
    options: dict[str, Any] = {} if answers is None else {"answers": answers}
    relay = RelayStream(
        upstream(body, **{"content-encoding": "zstd"}),
        reports,
        fallback=fallback,
        **options,
    )
    chunks, error = await drain(relay)
    expected = [] if answers is None else [fallback("backend_invalid_response")]
    assert chunks == expected
    assert error == "unsupported Content-Encoding 'zstd'"
    assert reports.reasons == ["backend_invalid_response"]
    assert body.closed is True
