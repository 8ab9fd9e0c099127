"""Spans of an embedded server carry its ``agent_proxy.component``.

The demo exports the gateway, the dev IdP and the demo backends under one
``service.name``, and the official MCP SDK names its server spans like the
gateway's (``tools/call <tool>``). A test backend (official-SDK server)
behind :class:`gateway.asgi_tracing.ServerSpanMiddleware` is called over
HTTP, with the gateway's tracer provider set-up recording every span into
the SDK's in-memory exporter.
"""

from __future__ import annotations

import httpx
import pytest
from _otlp_receiver import installed_provider
from _transport_harness import (
    MCP_HEADERS,
    BackendControls,
    create_backend_app,
    initialize_body,
)
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from gateway.asgi_tracing import ServerSpanMiddleware
from gateway.demo.serve import run_app
from gateway.telemetry import build_tracer_provider
from gateway.tracing_attributes import COMPONENT

pytestmark = pytest.mark.anyio

SDK_SCOPE = "mcp-python-sdk"


async def test_demo_backend_sdk_spans_have_component() -> None:
    """The MCP SDK's span under the middleware carries the component."""
    provider = build_tracer_provider(environ={"OTEL_TRACES_SAMPLER": "always_on"})
    assert provider is not None
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = ServerSpanMiddleware(
        create_backend_app(BackendControls()), component="employees", routes=("/mcp",)
    )
    with installed_provider(provider):
        async with run_app(app) as running, httpx.AsyncClient() as client:
            response = await client.post(
                f"{running.url}/mcp", json=initialize_body(), headers=MCP_HEADERS
            )
            assert response.status_code == 200
        provider.force_flush()
    spans = exporter.get_finished_spans()
    sdk_spans = [
        span
        for span in spans
        if span.instrumentation_scope and span.instrumentation_scope.name == SDK_SCOPE
    ]
    assert sdk_spans, [span.name for span in spans]
    for span in spans:
        assert (span.attributes or {}).get(COMPONENT) == "employees", span.name
    provider.shutdown()
