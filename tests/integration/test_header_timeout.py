"""A client that sends its request headers too slowly loses its connection."""

from __future__ import annotations

import socket
import time
from typing import Any

import anyio
import pytest

from gateway.demo.serve import run_app

pytestmark = pytest.mark.anyio

LIMIT = 0.3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def ok_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def exchange(port: int, parts: list[bytes], pause: float) -> bytes | None:
    """Send ``parts`` with ``pause`` seconds between them; return what came back.

    Returns None when the server neither answered nor closed within 3 s.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        for part in parts:
            try:
                sock.sendall(part)
            except OSError:
                break
            time.sleep(pause)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            return None
        except OSError:
            pass
        return b"".join(chunks)


async def test_slow_headers_close_connection() -> None:
    """Headers still incomplete after the limit: closed, with no response."""
    async with run_app(ok_app, header_timeout=LIMIT) as running:
        parts = [b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"X-Slow: 1\r\n", b"X-S: 2\r\n"]
        received = await anyio.to_thread.run_sync(exchange, running.port, parts, LIMIT)
    assert received == b""


async def test_headers_within_limit_served() -> None:
    """A request whose headers arrive in time gets its response."""
    async with run_app(ok_app, header_timeout=LIMIT) as running:
        parts = [b"GET / HTTP/1.1\r\nHost: x\r\n", b"Connection: close\r\n\r\n"]
        received = await anyio.to_thread.run_sync(
            exchange, running.port, parts, LIMIT / 4
        )
    assert received.startswith(b"HTTP/1.1 200")
    assert b"\r\nok\r\n" in received


async def test_idle_connection_without_bytes_closed() -> None:
    """A connection that sends nothing at all is closed after the limit."""
    async with run_app(ok_app, header_timeout=LIMIT) as running:
        received = await anyio.to_thread.run_sync(exchange, running.port, [], 0)
    assert received == b""
