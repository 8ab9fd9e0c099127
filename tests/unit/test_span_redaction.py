"""Span status descriptions and exception events leave without credentials.

A real SDK tracer provider records the spans, and the SDK's in-memory
exporter behind :class:`gateway.span_redaction.RedactingSpanExporter`
receives what would be exported. The log redaction's rule for identifiers
is checked here too: a key id quoted in an error message stays readable.
"""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from gateway.redaction import REDACTED, default_redactor
from gateway.span_redaction import RedactingSpanExporter
from gateway.telemetry import build_tracer_provider

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl"
REFRESH = "Rt8x2KqLmN4pQ7vW9zA1bC3dE5fG6hJ0kM2nP4rS6tU"
KID = "Xk9rT2mWq4LpZ7vB1nC3dF5gH6jK8sA0eR2tY4uI6oP"


def exported_span() -> dict[str, object]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedactingSpanExporter(memory)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span(
        "POST /oauth2/v1/token", record_exception=False, set_status_on_exception=False
    ) as span:
        error = RuntimeError(
            f"token exchange failed: error_description=refresh_token={REFRESH} "
            f"with Bearer {JWT}"
        )
        span.record_exception(error)
        span.set_status(StatusCode.ERROR, f"IdP returned assertion {JWT}")
    [finished] = memory.get_finished_spans()
    [event] = finished.events
    return {
        "status": finished.status.description,
        "message": (event.attributes or {})["exception.message"],
        "stacktrace": (event.attributes or {})["exception.stacktrace"],
        "name": finished.name,
    }


def test_span_exception_message_redacted() -> None:
    """Tokens in a recorded exception's message and stack trace are removed."""
    found = exported_span()
    for key in ("message", "stacktrace"):
        text = str(found[key])
        assert JWT not in text, key
        assert REFRESH not in text, key
        assert REDACTED in text, key
    assert "token exchange failed" in str(found["message"])


def test_span_status_description_redacted() -> None:
    """A token in the status description is removed, the rest kept."""
    found = exported_span()
    assert found["status"] == f"IdP returned assertion {REDACTED}"
    assert found["name"] == "POST /oauth2/v1/token"


def test_span_tracer_provider_exports_through_redaction() -> None:
    """The gateway's provider wraps its OTLP exporter in the redacting one."""
    provider = build_tracer_provider(
        environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    )
    assert provider is not None
    processors = provider._active_span_processor._span_processors
    exporters = [getattr(p, "_batch_processor", p) for p in processors]
    assert any(
        isinstance(getattr(processor, "_exporter", None), RedactingSpanExporter)
        for processor in exporters
    ), exporters
    provider.shutdown()


def test_redaction_kid_in_message_readable() -> None:
    """A 43-character key id quoted after "kid" stays; a lone one goes."""
    message = f"no trusted key has the kid '{KID}'"
    assert default_redactor.scrub_text(message) == message
    assert default_redactor.scrub_text(f"kid={KID}") == f"kid={KID}"
    assert default_redactor.scrub_text(f"refresh {REFRESH}") == f"refresh {REDACTED}"
