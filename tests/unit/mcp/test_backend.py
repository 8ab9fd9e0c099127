"""The pooled backend client: timeouts, errors, pooling, trace context, cookies.

The backend here is a scripted ASGI app on loopback. An MCP server does not
produce these cases on request: a pause between events longer than the read
timeout, slow headers, a body cut short, a redirect, a cookie.
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
from gateway.demo.serve import bind_socket, run_app
from gateway.mcp import backend as backend_module
from gateway.mcp.backend import USER_AGENT, BackendClient


class ScriptedBackend:
    """An ASGI app whose behaviour each test picks by path or ``X-Script``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.client_ports: list[int] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append(headers)
        self.client_ports.append(scope["client"][1])
        script = headers.get("x-script", scope["path"])

        if script == "/slow-headers":
            await anyio.sleep(0.5)
        if script == "/slow-body":
            await send(_start(200, b"application/json"))
            await send(_chunk(b"{", more=True))
            await anyio.sleep(0.5)
            await send(_chunk(b"}", more=False))
            return
        if script == "/cut-short":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"100"),
                    ],
                }
            )
            await send(_chunk(b"{", more=True))
            raise RuntimeError("the scripted backend stops mid-body")

        if script == "/redirect":
            await send(
                {
                    "type": "http.response.start",
                    "status": 307,
                    "headers": [(b"location", b"/elsewhere")],
                }
            )
            await send(_chunk(b"", more=False))
            return

        if script in ("/sse-pause", "/sse"):
            await send(_start(200, b"text/event-stream"))
            await send(_chunk(b"data: one\n\n", more=True))
            if script == "/sse-pause":
                await anyio.sleep(0.5)
            await send(_chunk(b"data: two\n\n", more=False))
            return
        if script == "/sse-open":
            await send(_start(200, b"text/event-stream"))
            await send(_chunk(b"data: one\n\n", more=True))
            while (await receive())["type"] != "http.disconnect":
                pass
            return

        response_headers = [(b"content-type", b"application/json")]
        if script == "/cookie":
            response_headers.append((b"set-cookie", b"tracking=1; Path=/"))
        await send(
            {"type": "http.response.start", "status": 200, "headers": response_headers}
        )
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


async def _read(client: BackendClient, headers: dict[str, str] | None = None) -> bytes:
    response = await client.send("POST", headers or {}, b"{}")
    try:
        return await response.aread()
    finally:
        await response.aclose()


@pytest.mark.anyio
async def test_backend_client_slow_json_body_times_out() -> None:
    """A pause inside a JSON body longer than the timeout raises ReadTimeout."""
    async with client_for("/slow-body", timeout=0.2) as (client, _app):
        response = await client.send("POST", {}, b"{}")
        try:
            with pytest.raises(httpx.ReadTimeout):
                await response.aread()
        finally:
            await response.aclose()


@pytest.mark.anyio
async def test_backend_client_read_timeout_returns_after_event_stream() -> None:
    """The next request on a connection that carried a stream has a read timeout."""
    async with client_for("/json", timeout=0.2) as (client, app):
        assert (
            await _read(client, {"x-script": "/sse"}) == b"data: one\n\ndata: two\n\n"
        )
        with pytest.raises(httpx.ReadTimeout):
            await client.send("POST", {"x-script": "/slow-headers"}, b"{}")
    assert app.client_ports[0] == app.client_ports[1]


@pytest.mark.anyio
async def test_backend_client_connection_refused_raises_connect_error() -> None:
    """A backend port with nothing listening raises httpx.ConnectError."""
    with bind_socket("127.0.0.1", 0) as sock:
        port = sock.getsockname()[1]
    client = BackendClient(
        BackendConfig(path="/t/mcp", url=f"http://127.0.0.1:{port}/mcp", timeout=2.0)
    )
    try:
        with pytest.raises(httpx.ConnectError):
            await client.send("POST", {}, b"{}")
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_backend_client_body_cut_short_raises_transport_error() -> None:
    """A body shorter than its Content-Length raises an httpx.TransportError."""
    async with client_for("/cut-short") as (client, _app):
        response = await client.send("POST", {}, b"{}")
        try:
            with pytest.raises(httpx.TransportError):
                await response.aread()
        finally:
            await response.aclose()


@pytest.mark.anyio
async def test_backend_client_redirect_not_followed() -> None:
    """A 307 is returned to the caller, and its Location is not requested."""
    async with client_for("/redirect") as (client, app):
        response = await client.send("POST", {}, b"{}")
        await response.aclose()
    assert response.status_code == 307
    assert response.headers["location"] == "/elsewhere"
    assert len(app.requests) == 1


@pytest.mark.anyio
async def test_backend_client_sequential_requests_share_connection() -> None:
    """Requests one after another reuse one pooled connection."""
    async with client_for("/json") as (client, app):
        for _ in range(3):
            assert await _read(client) == b"{}"
    assert len(set(app.client_ports)) == 1
    assert len(app.client_ports) == 3


@pytest.mark.anyio
async def test_backend_client_stream_closed_early_drops_connection() -> None:
    """Closing an unfinished stream closes its connection; the next call works."""
    async with client_for("/json") as (client, app):
        response = await client.send("POST", {"x-script": "/sse-open"}, b"{}")
        chunks = response.aiter_bytes()
        assert await chunks.__anext__() == b"data: one\n\n"
        await chunks.aclose()  # type: ignore[attr-defined]
        await response.aclose()
        assert await _read(client) == b"{}"
    assert app.client_ports[0] != app.client_ports[1]


@pytest.mark.anyio
async def test_backend_client_env_proxy_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Proxy variables in the environment do not divert the forward hop."""
    with bind_socket("127.0.0.1", 0) as sock:
        unused_port = sock.getsockname()[1]
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{unused_port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with client_for("/json") as (client, app):
        assert await _read(client) == b"{}"
    assert len(app.requests) == 1


@pytest.mark.anyio
async def test_backend_client_headers_sent_as_given() -> None:
    """The caller's headers go out as given, plus a User-Agent; no Content-Type."""
    async with client_for("/json") as (client, app):
        await _read(client, {"mcp-session-id": "backend-session"})
    received = app.requests[0]
    assert received["mcp-session-id"] == "backend-session"
    assert received["user-agent"] == USER_AGENT
    assert "content-type" not in received


@pytest.mark.anyio
async def test_backend_client_control_character_raises_protocol_error() -> None:
    """A header value with a line break raises httpx.LocalProtocolError."""
    async with client_for("/json") as (client, app):
        with pytest.raises(httpx.LocalProtocolError):
            await client.send("POST", {"x-injected": "a\r\nx-extra: b"}, b"{}")
    assert app.requests == []


@pytest.mark.anyio
async def test_backend_client_closed_pool_raises_connect_error() -> None:
    """A request on a pool a reload closed fails as a transport error."""
    async with client_for("/sse-pause", timeout=5.0) as (client, _app):
        response = await client.send("POST", {}, b"{}")
        await response.aclose()
        await client.aclose()
        with pytest.raises(httpx.ConnectError, match="pool is closed"):
            await client.send("POST", {}, b"{}")
