"""A real OTLP/HTTP trace receiver on 127.0.0.1, and a per-test tracer provider.

The receiver accepts ``POST /v1/traces`` with a protobuf
``ExportTraceServiceRequest`` (gzip or not), decodes it with
``opentelemetry-proto`` and keeps the spans. It runs on a thread of its own:
the SDK's exporter posts from a worker thread, and flushing it from the event
loop thread while the receiver needed that loop would deadlock.

OpenTelemetry lets a process install its global tracer provider only once,
and every module's tracer binds to it on first use. :func:`installed_provider`
installs a provider for one test and afterwards puts the previous one back,
unbinding the module tracers both times, so that no other test sees it.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from _otlp_http import serve_otlp
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace import TracerProvider

KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS_ERROR = 2


@dataclass(frozen=True)
class ExportedSpan:
    """One span as the receiver decoded it; ids are lower-case hex."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    scope: str
    service: str
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    status_code: int


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(item) for item in value.array_value.values]
    if which is None:
        return None
    return getattr(value, which)


def decode_spans(body: bytes) -> list[ExportedSpan]:
    """Decode the spans of one ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest.FromString(body)
    spans: list[ExportedSpan] = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ExportedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        scope=scope_spans.scope.name,
                        service=str(resource.get("service.name")),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        links=[
                            (link.trace_id.hex(), link.span_id.hex())
                            for link in span.links
                        ],
                        status_code=span.status.code,
                    )
                )
    return spans


@dataclass
class OtlpReceiver:
    """What the receiver got: decoded spans, and the raw requests' count."""

    endpoint: str = ""
    spans: list[ExportedSpan] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def trace(self, trace_id: str) -> list[ExportedSpan]:
        """Return the spans of one trace."""
        with self.lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def named(self, name: str) -> list[ExportedSpan]:
        """Return every span called ``name``."""
        with self.lock:
            return [span for span in self.spans if span.name == name]


@contextlib.contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """Serve an OTLP/HTTP trace receiver on a free port while the context is open."""
    received = OtlpReceiver()

    def handle(path: str, body: bytes) -> tuple[int, bytes]:
        if path != "/v1/traces":
            return 404, b""
        spans = decode_spans(body)
        with received.lock:
            received.spans.extend(spans)
            received.requests += 1
        return 200, ExportTraceServiceResponse().SerializeToString()

    with serve_otlp(handle) as url:
        received.endpoint = url
        yield received


def _unbind_module_tracers() -> None:
    # Module-level tracers (``_tracer = trace.get_tracer(...)``) are proxies
    # that bind to the global provider on first use and keep it.
    for module in list(sys.modules.values()):
        for value in list(getattr(module, "__dict__", {}).values()):
            if isinstance(value, trace.ProxyTracer):
                value._real_tracer = None


@contextlib.contextmanager
def installed_provider(provider: TracerProvider) -> Iterator[TracerProvider]:
    """Make ``provider`` the global tracer provider while the context is open."""
    previous = trace._TRACER_PROVIDER
    _unbind_module_tracers()
    trace._TRACER_PROVIDER = provider
    try:
        yield provider
    finally:
        trace._TRACER_PROVIDER = previous
        _unbind_module_tracers()


async def flush(provider: TracerProvider) -> None:
    """Export every finished span now, from a worker thread (see the module doc)."""
    flushed = await anyio.to_thread.run_sync(provider.force_flush, 10_000)
    assert flushed, "the span processor did not flush within 10 s"
