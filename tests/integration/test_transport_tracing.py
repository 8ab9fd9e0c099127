"""One trace per MCP request: server span, stage spans and the backend call.

Spans go to an in-memory exporter: the tracers of the endpoint, the chain and
the backend client are replaced by tracers of a local SDK provider, because
the global provider can be set only once per process.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from _transport_harness import (
    MCP_HEADERS,
    BackendControls,
    initialize_body,
    running_backend,
    running_gateway,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.mcp import backend as backend_module
from gateway.mcp import endpoint as endpoint_module
from pipeline import chain as chain_module

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    for module in (endpoint_module, backend_module, chain_module):
        monkeypatch.setattr(module, "_tracer", tracer)
    return exporter


def only(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    [span] = [span for span in spans if span.name == name]
    return span


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


@pytest.mark.anyio
async def test_transport_trace_request_spans_nest(
    exporter: InMemorySpanExporter,
) -> None:
    """The server span continues the client's trace; stage and client spans nest."""
    controls = BackendControls()
    call = {
        "jsonrpc": "2.0",
        "id": 4,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x"}},
    }
    traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"
    async with (
        running_backend(controls) as backend_url,
        running_gateway(backend_url) as gateway,
        httpx.AsyncClient() as client,
    ):
        initialized = await client.post(
            gateway.mcp_url, json=initialize_body(), headers=MCP_HEADERS
        )
        session_id = initialized.headers["mcp-session-id"]
        exporter.clear()
        response = await client.post(
            gateway.mcp_url,
            json=call,
            headers={
                **MCP_HEADERS,
                "mcp-session-id": session_id,
                "traceparent": traceparent,
            },
        )
    assert response.status_code == 200
    spans = list(exporter.get_finished_spans())
    server = only(spans, "tools/call echo")
    security = only(spans, "stage security")
    session = only(spans, "stage session")
    forward = only(spans, "stage forward")
    backend_call = only(spans, "POST")

    assert server.kind == SpanKind.SERVER
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == CLIENT_SPAN_ID
    server_attributes = attributes(server)
    assert server_attributes["mcp.method.name"] == "tools/call"
    assert server_attributes["gen_ai.tool.name"] == "echo"
    assert server_attributes["jsonrpc.request.id"] == "4"
    assert server_attributes["agent_proxy.backend"] == "employees"
    assert (
        server_attributes["agent_proxy.request_id"]
        == (response.headers["x-request-id"])
    )
    assert server_attributes["http.response.status_code"] == 200

    assert security.parent is not None
    assert security.parent.span_id == server.context.span_id
    assert session.parent is not None
    assert session.parent.span_id == security.context.span_id
    assert forward.parent is not None
    assert forward.parent.span_id == session.context.span_id
    assert backend_call.kind == SpanKind.CLIENT
    assert backend_call.parent is not None
    assert backend_call.parent.span_id == forward.context.span_id

    backend_request = controls.requests[-1]
    _version, trace_id, parent_id, _flags = backend_request.headers[
        "traceparent"
    ].split("-")
    assert trace_id == TRACE_ID
    assert parent_id == f"{backend_call.context.span_id:016x}"

    # The response is an event stream, so the request span outlives the stages.
    assert server.end_time is not None and forward.end_time is not None
    assert server.end_time >= forward.end_time


@pytest.mark.anyio
async def test_transport_trace_rejection_has_span(
    exporter: InMemorySpanExporter,
) -> None:
    """A request rejected before the chain still gets its server span."""
    async with (
        running_backend(BackendControls()) as backend_url,
        running_gateway(backend_url) as gateway,
        httpx.AsyncClient() as client,
    ):
        response = await client.post(
            gateway.mcp_url, content=b"[]", headers=MCP_HEADERS
        )
    assert response.status_code == 400
    server = only(list(exporter.get_finished_spans()), "POST /employees/mcp")
    assert attributes(server)["http.response.status_code"] == 400
