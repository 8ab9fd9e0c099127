"""Removing tokens and secrets from span status descriptions and span events.

Span attributes are set by the gateway's own code and hold identifiers, not
free text. A span's status description and its events can hold text from
elsewhere: ``record_exception`` copies an exception's message and traceback,
which may quote an IdP's ``error_description`` or a request value. The
exporter wrapper here passes that text through the same
:class:`gateway.redaction.Redactor` as the logs before spans leave the
process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Status

from gateway.redaction import Redactor, default_redactor


class RedactingSpanExporter(SpanExporter):
    """Scrub status descriptions and event attributes, then call ``exporter``.

    A span without a status description or events is passed on unchanged.
    Attribute values that are not strings, or sequences of strings, are
    kept as they are.
    """

    def __init__(
        self, exporter: SpanExporter, redactor: Redactor = default_redactor
    ) -> None:
        self._exporter = exporter
        self._redactor = redactor

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export scrubbed copies of ``spans``."""
        return self._exporter.export([self._scrub_span(span) for span in spans])

    def shutdown(self) -> None:
        """Shut the wrapped exporter down."""
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Flush the wrapped exporter."""
        return self._exporter.force_flush(timeout_millis)

    def _scrub_span(self, span: ReadableSpan) -> ReadableSpan:
        description = span.status.description
        if not description and not span.events:
            return span
        status = span.status
        if description:
            status = Status(status.status_code, self._redactor.scrub_text(description))
        events = [
            Event(
                event.name,
                self._scrub_attributes(event.attributes),
                event.timestamp,
            )
            for event in span.events
        ]
        return ReadableSpan(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=span.attributes,
            events=events,
            links=span.links,
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def _scrub_attributes(self, attributes: Any) -> dict[str, Any]:
        scrubbed: dict[str, Any] = {}
        for key, value in (attributes or {}).items():
            if isinstance(value, str):
                scrubbed[key] = self._redactor.scrub_text(value)
            elif isinstance(value, Sequence) and all(
                isinstance(item, str) for item in value
            ):
                scrubbed[key] = tuple(self._redactor.scrub_text(v) for v in value)
            else:
                scrubbed[key] = value
        return scrubbed
