"""The ``otlp`` audit sink: events as OpenTelemetry log records over OTLP/HTTP.

Each event becomes one log record:

- ``body``: the record as journaled, a JSON string (with ``prev_hash``);
- ``attributes``: the event's fields, nested objects flattened with dots
  (``user.sub``, ``agent.id``), null fields left out, lists of strings as
  string arrays;
- ``event_name``: ``agent_proxy.audit.<type>``, such as
  ``agent_proxy.audit.AccessDenied``;
- ``severity``: INFO for ``success``, WARN for ``denied``, ERROR for ``error``;
- ``trace_id`` and ``span_id``: the event's, so the record joins its trace;
- ``timestamp``: the event's ``time``.

The exporter is the OpenTelemetry SDK's ``OTLPLogExporter``, which sends
protobuf and blocks, so each export runs in a worker thread.
"""

from __future__ import annotations

import calendar
import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import anyio
import msgspec
from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from gateway.audit.config import OtlpSinkConfig

EVENT_NAME_PREFIX = "agent_proxy.audit."
SCOPE_NAME = "gateway.audit"

_SEVERITY = {
    "success": (SeverityNumber.INFO, "INFO"),
    "denied": (SeverityNumber.WARN, "WARN"),
    "error": (SeverityNumber.ERROR, "ERROR"),
}
_decoder = msgspec.json.Decoder()


class OtlpDeliveryError(Exception):
    """The OTLP receiver did not accept a batch."""


class OtlpSink:
    """Exports each batch as log records and succeeds only when it is accepted."""

    def __init__(self, config: OtlpSinkConfig, *, name: str) -> None:
        self.config = config
        self.name = name
        self._exporter = OTLPLogExporter(
            endpoint=config.endpoint,
            headers=config.headers or None,
            timeout=config.timeout,
        )
        attributes: dict[str, Any] = {}
        if "OTEL_SERVICE_NAME" not in os.environ:
            attributes[SERVICE_NAME] = "agent-proxy"
        self._resource = Resource.create(attributes)
        self._scope = InstrumentationScope(SCOPE_NAME)

    async def deliver(self, batch: Sequence[bytes]) -> None:
        """Export the batch; returns once the receiver accepted it.

        Raises:
            OtlpDeliveryError: The export failed after the exporter's retries.
        """
        records = [self.log_record(line) for line in batch]
        result = await anyio.to_thread.run_sync(self._exporter.export, records)
        if result is not LogRecordExportResult.SUCCESS:
            msg = f"OTLP export of {len(records)} audit events failed"
            raise OtlpDeliveryError(msg)

    def log_record(self, record: bytes) -> ReadableLogRecord:
        """Return the log record of one journaled audit record."""
        event: dict[str, Any] = _decoder.decode(record)
        severity, severity_text = _SEVERITY.get(
            str(event.get("outcome")), (SeverityNumber.INFO, "INFO")
        )
        log_record = LogRecord(
            timestamp=_unix_nanos(event.get("time")),
            context=_trace_context(event.get("trace_id"), event.get("span_id")),
            severity_number=severity,
            severity_text=severity_text,
            body=record.decode(),
            attributes=flatten(event),
            event_name=EVENT_NAME_PREFIX + str(event.get("type")),
        )
        return ReadableLogRecord(
            log_record=log_record,
            resource=self._resource,
            instrumentation_scope=self._scope,
        )

    async def aclose(self) -> None:
        """Shut the exporter down, closing its HTTP session."""
        await anyio.to_thread.run_sync(self._exporter.shutdown)


def flatten(event: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return an event's fields as OpenTelemetry attribute values.

    Nested objects become dotted keys and nulls are left out. A list of
    strings, of integers, of floats or of booleans stays a list, and any
    other list becomes its JSON text.
    """
    attributes: dict[str, Any] = {}
    for key, value in event.items():
        name = prefix + key
        if value is None:
            continue
        if isinstance(value, dict):
            attributes.update(flatten(value, name + "."))
        elif isinstance(value, list):
            kinds = {type(item) for item in value}
            if len(kinds) <= 1 and kinds <= {str, int, float, bool}:
                attributes[name] = value
            else:
                # Attribute arrays must hold one primitive type.
                attributes[name] = msgspec.json.encode(value).decode()
        else:
            attributes[name] = value
    return attributes


def _unix_nanos(text: object) -> int | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    seconds = calendar.timegm(moment.utctimetuple())
    return seconds * 1_000_000_000 + moment.microsecond * 1000


def _trace_context(trace_id: object, span_id: object) -> Any:
    """Return a context whose current span has the event's ids, if valid."""
    try:
        span_context = SpanContext(
            trace_id=int(str(trace_id), 16),
            span_id=int(str(span_id), 16),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.DEFAULT),
        )
    except ValueError:
        span_context = None
    if span_context is None or not span_context.is_valid:
        # An empty context: without it the record would take the ids of
        # whatever span is current in the delivering task.
        return trace.set_span_in_context(trace.INVALID_SPAN)
    return trace.set_span_in_context(NonRecordingSpan(span_context))
