"""The timed reader behind keepalive comments and deadlines.

The chunks come from plain async generators that the tests control, because
the reader's contract is about timing that a network peer cannot pin down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from gateway.mcp.keepalive import TimedReader

pytestmark = pytest.mark.anyio


async def gated_chunks(
    gate: anyio.Event, closed: list[bool], chunks: list[bytes]
) -> AsyncIterator[bytes]:
    try:
        yield chunks[0]
        await gate.wait()
        for chunk in chunks[1:]:
            yield chunk
    finally:
        closed.append(True)


async def test_timed_reader_timeout_keeps_read_in_progress() -> None:
    """A wait that times out returns None and loses no chunk."""
    gate = anyio.Event()
    closed: list[bool] = []
    reader = TimedReader(gated_chunks(gate, closed, [b"one", b"two", b"three"]))
    assert await reader.read(1.0) == b"one"
    assert await reader.read(0.02) is None
    assert await reader.read(0.0) is None
    gate.set()
    assert await reader.read(1.0) == b"two"
    assert await reader.read(None) == b"three"
    with pytest.raises(StopAsyncIteration):
        await reader.read(1.0)
    assert closed == [True]


async def test_timed_reader_aclose_stops_pending_read() -> None:
    """Closing while a read waits cancels it and closes the iterator."""
    gate = anyio.Event()
    closed: list[bool] = []
    reader = TimedReader(gated_chunks(gate, closed, [b"one", b"two"]))
    assert await reader.read(None) == b"one"
    assert await reader.read(0.01) is None
    await reader.aclose()
    await reader.aclose()
    assert closed == [True]
    with pytest.raises(StopAsyncIteration):
        await reader.read(1.0)


async def test_timed_reader_error_raised_to_caller() -> None:
    """An exception of the iterator reaches the caller of read."""

    async def failing() -> AsyncIterator[bytes]:
        yield b"one"
        await anyio.sleep(0.02)
        raise OSError("connection reset")

    reader = TimedReader(failing())
    assert await reader.read(1.0) == b"one"
    assert await reader.read(0.001) is None
    with pytest.raises(OSError, match="connection reset"):
        await reader.read(1.0)
