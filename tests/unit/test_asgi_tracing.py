"""The SERVER span middleware of the dev IdP and the demo backends.

The app behind it is a few lines of raw ASGI, because only its status and
path matter here. The real dev IdP and backends are traced in
``tests/integration/test_trace_one_request.py``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway import asgi_tracing
from gateway.asgi_tracing import ServerSpanMiddleware

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(asgi_tracing, "_tracer", provider.get_tracer("test"))
    return exporter


async def status_app(scope: Any, receive: Any, send: Any) -> None:
    status = 503 if scope["path"] == "/broken" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def request(path: str, headers: dict[str, str] | None = None) -> None:
    app = ServerSpanMiddleware(status_app, component="test", routes=("/mcp",))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.post(path, headers=headers or {})


@pytest.mark.anyio
async def test_server_span_known_route_continues_traceparent(
    exporter: InMemorySpanExporter,
) -> None:
    """A listed route names the span, whose parent is the caller's span."""
    await request("/mcp", {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})

    [span] = exporter.get_finished_spans()
    assert span.name == "POST /mcp"
    assert span.kind == SpanKind.SERVER
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == PARENT_ID
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    attributes = dict(span.attributes or {})
    assert attributes["agent_proxy.component"] == "test"
    assert attributes["http.route"] == "/mcp"
    assert attributes["http.response.status_code"] == 200


@pytest.mark.anyio
async def test_server_span_unknown_path_5xx_error(
    exporter: InMemorySpanExporter,
) -> None:
    """An unlisted path keeps the method as name; a 5xx marks the span failed."""
    await request("/broken")

    [span] = exporter.get_finished_spans()
    assert span.name == "POST"
    assert span.parent is None
    assert span.status.status_code == StatusCode.ERROR
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "503"
    assert "http.route" not in attributes
