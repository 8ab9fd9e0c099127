"""Trace context in HTTP headers and ``params._meta``, coming in and going out."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.mcp.jsonrpc import parse_message
from gateway.mcp.response import jsonrpc_error_response
from gateway.mcp.server_span import (
    ServerSpan,
    describe_message,
    describe_response,
)
from gateway.mcp.trace_context import meta_carrier, parent_context, with_trace_meta

HEADER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
HEADER_SPAN = "00f067aa0ba902b7"
META_TRACE = "0af7651916cd43dd8448eb211c80319c"
META_SPAN = "b7ad6b7169203331"
HEADER_PARENT = f"00-{HEADER_TRACE}-{HEADER_SPAN}-01"
META_PARENT = f"00-{META_TRACE}-{META_SPAN}-01"


def span_ids(ctx: Any) -> tuple[str, str] | None:
    span_context = trace.get_current_span(ctx).get_span_context()
    if not span_context.is_valid:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def test_parent_context_header_only() -> None:
    """Without _meta the header's span is the parent, with no link."""
    parent, links = parent_context({"traceparent": HEADER_PARENT}, {"name": "x"})
    assert span_ids(parent) == (HEADER_TRACE, HEADER_SPAN)
    assert links == []


def test_parent_context_meta_wins_header_linked() -> None:
    """With both, _meta is the parent and the header's span is linked."""
    params = {"_meta": {"traceparent": META_PARENT, "tracestate": "a=1"}}
    parent, links = parent_context({"traceparent": HEADER_PARENT}, params)
    assert span_ids(parent) == (META_TRACE, META_SPAN)
    [link] = links
    assert f"{link.context.span_id:016x}" == HEADER_SPAN
    state = trace.get_current_span(parent).get_span_context().trace_state
    assert state.get("a") == "1"


@pytest.mark.parametrize(
    "meta",
    [
        {"traceparent": "00-garbage-01"},
        {"traceparent": 42},
        {"traceparent": ["not", "a", "string"]},
        "not an object",
    ],
)
def test_parent_context_unusable_meta_falls_back_to_header(meta: Any) -> None:
    """A malformed or non-string _meta traceparent is ignored."""
    parent, links = parent_context({"traceparent": HEADER_PARENT}, {"_meta": meta})
    assert span_ids(parent) == (HEADER_TRACE, HEADER_SPAN)
    assert links == []


def test_parent_context_malformed_header_new_trace() -> None:
    """A malformed header and no _meta give no parent: a new trace."""
    parent, links = parent_context({"traceparent": "00-zz-01"}, {})
    assert span_ids(parent) is None
    assert links == []


def test_meta_carrier_only_string_trace_keys() -> None:
    """Only the W3C keys with string values are read from _meta."""
    params = {
        "_meta": {
            "traceparent": META_PARENT,
            "baggage": "k=v",
            "tracestate": 5,
            "progressToken": "p",
        }
    }
    assert meta_carrier(params) == {"traceparent": META_PARENT, "baggage": "k=v"}


def test_with_trace_meta_replaces_client_keys(provider: TracerProvider) -> None:
    """The current span's context replaces the client's; other _meta keys stay."""
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "echo",
            "_meta": {
                "traceparent": META_PARENT,
                "tracestate": "client=1",
                "progressToken": 7,
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            },
        },
    }
    with provider.get_tracer("test").start_as_current_span("forward") as span:
        sent = with_trace_meta(message)
    meta = sent["params"]["_meta"]
    ids = span.get_span_context()
    _version, trace_id, parent_id, _flags = meta["traceparent"].split("-")
    assert trace_id == f"{ids.trace_id:032x}"
    assert parent_id == f"{ids.span_id:016x}"
    assert "tracestate" not in meta
    assert meta["progressToken"] == 7
    assert meta["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
    assert message["params"]["_meta"]["traceparent"] == META_PARENT


def test_with_trace_meta_adds_params_when_absent(provider: TracerProvider) -> None:
    """A request without params gets params._meta with the context."""
    with provider.get_tracer("test").start_as_current_span("forward"):
        sent = with_trace_meta({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert set(sent["params"]) == {"_meta"}
    assert sent["params"]["_meta"]["traceparent"].startswith("00-")


def test_with_trace_meta_no_context_removes_client_keys() -> None:
    """Without a current span, the client's keys are removed, not passed on."""
    token = otel_context.attach(otel_context.Context())
    try:
        sent = with_trace_meta(
            {"method": "ping", "params": {"_meta": {"traceparent": "bad"}}}
        )
        unchanged = {"method": "ping", "params": {"x": 1}}
        assert with_trace_meta(unchanged) is unchanged
    finally:
        otel_context.detach(token)
    assert sent["params"] == {}


def test_with_trace_meta_params_not_object_unchanged(provider: TracerProvider) -> None:
    """Positional params or a _meta that is not an object are left as sent."""
    positional = {"method": "x", "params": [1, 2]}
    odd_meta = {"method": "x", "params": {"_meta": "text"}}
    with provider.get_tracer("test").start_as_current_span("forward"):
        assert with_trace_meta(positional) is positional
        assert with_trace_meta(odd_meta) is odd_meta


def test_server_span_starts_under_meta_with_early_attributes(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Attributes set before the body is parsed land on the span started later."""
    span = ServerSpan(
        provider.get_tracer("test"),
        "POST /employees/mcp",
        {"traceparent": HEADER_PARENT},
        {"http.request.method": "POST"},
    )
    span.set_attribute("agent_proxy.request_id", "r-1")
    body = (
        b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo",'
        b'"_meta":{"traceparent":"' + META_PARENT.encode() + b'"}}}'
    )
    describe_message(span, parse_message(body))
    span.end()

    [finished] = exporter.get_finished_spans()
    assert finished.name == "tools/call echo"
    assert finished.kind == SpanKind.SERVER
    assert finished.parent is not None
    assert f"{finished.parent.span_id:016x}" == META_SPAN
    attributes = dict(finished.attributes or {})
    assert attributes["agent_proxy.request_id"] == "r-1"
    assert attributes["http.request.method"] == "POST"
    assert attributes["jsonrpc.request.id"] == "3"
    assert attributes["gen_ai.tool.name"] == "echo"


def test_server_span_context_needed_first_uses_header(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A span whose context is read before parsing starts under the header."""
    span = ServerSpan(
        provider.get_tracer("test"), "POST /x", {"traceparent": HEADER_PARENT}, {}
    )
    trace_id = span.get_span_context().trace_id
    describe_message(
        span, parse_message(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}')
    )
    span.end()

    [finished] = exporter.get_finished_spans()
    assert f"{trace_id:032x}" == HEADER_TRACE
    assert finished.name == "tools/list"


def test_describe_response_error_code_and_reason(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A gateway error sets status ERROR, error.type and the JSON-RPC code."""
    span = provider.get_tracer("test").start_span("tools/call x")
    response = jsonrpc_error_response(
        200, 1, -32003, "Forbidden: tool x", reason="tool_denied"
    )
    describe_response(span, response)
    span.end()

    [finished] = exporter.get_finished_spans()
    assert finished.status.status_code == trace.StatusCode.ERROR
    attributes = dict(finished.attributes or {})
    assert attributes["error.type"] == "tool_denied"
    assert attributes["rpc.response.status_code"] == "-32003"
