"""OpenTelemetry and structlog set-up for the gateway process."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO, cast

import structlog
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

_configured = False


def configure_tracing(
    default_service_name: str = "agent-proxy",
) -> TracerProvider | None:
    """Install a tracer provider that honours the standard ``OTEL_*`` variables.

    ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_TRACES_SAMPLER``
    are read by the SDK itself. Spans are exported over OTLP/HTTP (protobuf)
    only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, and never when
    ``OTEL_SDK_DISABLED`` is ``true``. Without an exporter and without
    ``OTEL_TRACES_SAMPLER``, spans are not recorded but still carry ids.
    Calling it again does nothing.

    Returns:
        The provider installed, or None when tracing stays disabled.
    """
    global _configured
    if _configured or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    _configured = True
    attributes: dict[str, Any] = {}
    if "OTEL_SERVICE_NAME" not in os.environ:
        attributes[SERVICE_NAME] = default_service_name
    exporting = bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    sampler = None
    if not exporting and "OTEL_TRACES_SAMPLER" not in os.environ:
        # Nothing would receive the spans, so record none. Unsampled spans
        # still get trace and span ids, which audit events and logs carry
        # and which are propagated to backends.
        sampler = ALWAYS_OFF
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
    if exporting:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of each write.

    Binding the stream once would keep writing to a replaced and closed
    stream, as happens under test runners that capture output.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(*, json: bool | None = None, level: str = "INFO") -> None:
    """Configure structlog: JSON lines in production, console output on a terminal.

    Args:
        json: Force JSON (True) or console (False); None picks JSON unless
            stderr is a terminal.
        level: The minimum level name.
    """
    use_json = (not sys.stderr.isatty()) if json is None else json
    # Libraries log each HTTP request at INFO, with full URLs that can carry
    # authorization codes; the gateway logs its own canonical line instead.
    for noisy in ("httpx", "httpx2", "mcp", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(
            file=cast(TextIO, _CurrentStderr())
        ),
        cache_logger_on_first_use=True,
    )
