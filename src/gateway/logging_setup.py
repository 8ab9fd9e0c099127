"""structlog set-up: JSON lines in production, console output in development.

Records from structlog and from the standard library's ``logging``, which
uvicorn, httpx, the MCP SDK and the OpenTelemetry SDK use, go through the same
processors. They add the level, an ISO timestamp in UTC, the current
``trace_id`` and ``span_id`` and the rendered exception. Then
:data:`gateway.redaction.default_redactor` removes tokens and secrets, and the
renderer writes the line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Protocol, TextIO, cast, runtime_checkable

import structlog
from opentelemetry import trace

from gateway.redaction import Redactor, default_redactor

NOISY_LOGGERS = ("httpx", "httpx2", "mcp", "uvicorn.access")
"""Libraries that log each HTTP request at INFO, with full URLs that can carry
authorization codes. They are set to WARNING, because the gateway logs its own
canonical line per request."""


UNTRUSTED_INPUT_LOGGERS = (
    "opentelemetry.trace.span",
    "opentelemetry.trace.propagation.tracecontext",
    "opentelemetry.baggage.propagation",
)
"""OpenTelemetry loggers that warn about each malformed ``traceparent``,
``tracestate`` or ``baggage`` value a client sends: up to 32 lines per
request, some quoting the whole header. The gateway drops such values and
starts a new trace, so these loggers are set to ERROR."""


@runtime_checkable
class DeferredSpan(Protocol):
    """A span that starts on first use, such as the MCP endpoint's SERVER span."""

    @property
    def started_span(self) -> trace.Span | None:
        """The span once it has started; reading it must not start it."""


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of each write.

    Binding the stream once would keep writing to a replaced and closed
    stream, as happens under test runners that capture output.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _GatewayHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler this module installs; replaced on reconfiguration."""


def add_trace_context(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Add the current span's ``trace_id`` and ``span_id`` as hex.

    Ids already in the record are kept, so a line logged for an event
    carries the event's ids rather than those of the task that logs it.
    A :class:`DeferredSpan` that has not started adds no ids and is not
    started here, because starting it parses the request's trace context,
    which can log and so call this processor again.
    """
    if "trace_id" in event_dict:
        return event_dict
    current = trace.get_current_span()
    span = current.started_span if isinstance(current, DeferredSpan) else current
    if span is None:
        return event_dict
    context = span.get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = f"{context.trace_id:032x}"
        event_dict["span_id"] = f"{context.span_id:016x}"
    return event_dict


def shared_processors(redactor: Redactor = default_redactor) -> list[Any]:
    """Return the processors that run before rendering, redaction last."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        add_trace_context,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redactor,
    ]


def configure_logging(
    *,
    json: bool | None = None,
    level: str = "INFO",
    cache_loggers: bool = True,
    redactor: Redactor = default_redactor,
) -> None:
    """Configure structlog and route the standard ``logging`` through it.

    Args:
        json: Force JSON lines (True) or console output (False); None picks
            JSON unless stderr is a terminal.
        level: The minimum level name, for structlog and the root logger.
        cache_loggers: Let each structlog logger keep its configuration after
            first use, which saves work per call. A logger used once ignores
            later calls to this function, so tests that reconfigure pass
            False.
        redactor: The processor that removes credentials.
    """
    use_json = (not sys.stderr.isatty()) if json is None else json
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, numeric_level))
    for untrusted in UNTRUSTED_INPUT_LOGGERS:
        logging.getLogger(untrusted).setLevel(max(logging.ERROR, numeric_level))
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    processors = shared_processors(redactor)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(
            file=cast(TextIO, _CurrentStderr())
        ),
        cache_logger_on_first_use=cache_loggers,
    )

    handler = _GatewayHandler(cast(TextIO, _CurrentStderr()))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *processors],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _GatewayHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)


def unconfigure_logging() -> None:
    """Undo :func:`configure_logging`: remove its root handler, reset structlog."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _GatewayHandler)]:
        root.removeHandler(old)
    structlog.reset_defaults()
