"""The pooled backend client: timeouts, trace context and cookies.

The backend here is a scripted ASGI app on loopback, because the cases (a
pause between events longer than the read timeout, slow headers, a cookie)
are not something an MCP server produces on request.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.config import BackendConfig
from gateway.demo.serve import run_app
from gateway.mcp import backend as backend_module
from gateway.mcp.backend import BackendClient


class ScriptedBackend:
    """An ASGI app whose behaviour each test picks by request path."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.requests.append({k.decode(): v.decode() for k, v in scope["headers"]})
        path = scope["path"]
        if path == "/slow-headers":
            await anyio.sleep(0.5)
        if path == "/sse-pause":
            await send(_start(200, b"text/event-stream"))
            await send(_chunk(b"data: one\n\n", more=True))
            await anyio.sleep(0.5)
            await send(_chunk(b"data: two\n\n", more=False))
            return
        headers = [(b"content-type", b"application/json")]
        if path == "/cookie":
            headers.append((b"set-cookie", b"tracking=1; Path=/"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(_chunk(b"{}", more=False))


def _start(status: int, content_type: bytes) -> dict[str, Any]:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", content_type)],
    }


def _chunk(body: bytes, *, more: bool) -> dict[str, Any]:
    return {"type": "http.response.body", "body": body, "more_body": more}


@contextlib.asynccontextmanager
async def client_for(
    path: str, timeout: float = 5.0
) -> AsyncIterator[tuple[BackendClient, ScriptedBackend]]:
    app = ScriptedBackend()
    async with run_app(app) as running:
        client = BackendClient(
            BackendConfig(path="/t/mcp", url=running.url + path, timeout=timeout)
        )
        try:
            yield client, app
        finally:
            await client.aclose()


@pytest.mark.anyio
async def test_backend_client_event_stream_has_no_read_timeout() -> None:
    """A pause between events longer than the timeout does not end the stream."""
    async with client_for("/sse-pause", timeout=0.2) as (client, _app):
        response = await client.send("POST", {}, b"{}")
        try:
            body = b"".join([chunk async for chunk in response.aiter_bytes()])
        finally:
            await response.aclose()
    assert body == b"data: one\n\ndata: two\n\n"


@pytest.mark.anyio
async def test_backend_client_slow_headers_time_out() -> None:
    """Response headers later than the configured timeout raise ReadTimeout."""
    async with client_for("/slow-headers", timeout=0.2) as (client, _app):
        with pytest.raises(httpx.ReadTimeout):
            await client.send("POST", {}, b"{}")


@pytest.mark.anyio
async def test_backend_client_cookies_never_replayed() -> None:
    """A cookie one response sets is not sent on the next request."""
    async with client_for("/cookie") as (client, app):
        for _ in range(2):
            response = await client.send("POST", {}, b"{}")
            await response.aread()
            await response.aclose()
    assert all("cookie" not in headers for headers in app.requests)
    assert len(app.requests) == 2


@pytest.mark.anyio
async def test_backend_client_trace_context_injected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The backend gets a traceparent naming the client span in the caller's trace."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    monkeypatch.setattr(backend_module, "_tracer", tracer)
    headers = {"x-custom": "kept"}
    async with client_for("/json") as (client, app):
        with tracer.start_as_current_span("caller") as parent:
            response = await client.send("POST", headers, b"{}")
            await response.aclose()
    trace_id = f"{parent.get_span_context().trace_id:032x}"
    client_span = next(
        span for span in exporter.get_finished_spans() if span.name == "POST"
    )
    span_id = f"{client_span.context.span_id:016x}"
    received = app.requests[0]
    version, received_trace_id, parent_id, _flags = received["traceparent"].split("-")
    assert version == "00"
    assert received_trace_id == trace_id
    assert parent_id == span_id
    assert received["x-custom"] == "kept"
    assert headers == {"x-custom": "kept"}
    assert client_span.attributes is not None
    assert client_span.attributes["http.response.status_code"] == 200
