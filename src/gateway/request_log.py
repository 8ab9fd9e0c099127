"""The canonical log line: one ``request.completed`` record per request.

MCP requests get theirs from events, off the request path: the ``audit``
stage publishes ``ResponseCompleted`` when a response ends, and the HTTP
layer publishes ``RequestRejected`` for a request it refuses before the chain
runs. Each request publishes exactly one of the two. Requests to the OAuth
front door and other non-MCP routes get theirs from the dispatcher in
:mod:`gateway.app` through :func:`log_http_request`.

The keys are stable: ``request_id``, ``trace_id``, ``span_id``, ``backend``,
``method`` (the MCP method), ``tool``, ``agent_id``, ``protocol_version``,
``outcome``, ``reason``, ``status`` (HTTP), ``duration_ms``, and for MCP
responses ``streamed``, ``completed`` and ``bytes_sent``. A non-MCP request
has ``http_method`` and ``route`` in place of the MCP fields.
"""

from __future__ import annotations

import time

import structlog
from opentelemetry.trace import SpanContext

from gateway.events import RequestRejected, ResponseCompleted
from pipeline import Event, EventBus

log = structlog.get_logger("gateway.requests")

SUBSCRIBER_NAME = "log.requests"
"""The bus subscriber's name in ``EventBus.stats`` and in metrics."""


def subscribe_request_log(bus: EventBus) -> None:
    """Subscribe the canonical log line to ``bus`` as a best-effort subscriber.

    Only ``ResponseCompleted`` and ``RequestRejected`` are queued, so the other
    events of a request do not wake the subscriber's task.
    """
    bus.subscribe(
        SUBSCRIBER_NAME, log_request, accepts=(ResponseCompleted, RequestRejected)
    )


async def log_request(event: Event) -> None:
    """Log the canonical line of the request that ``event`` ends."""
    if isinstance(event, ResponseCompleted):
        log.info(
            "request.completed",
            request_id=event.request_id,
            trace_id=event.trace_id,
            span_id=event.span_id,
            backend=event.backend,
            method=event.method,
            tool=event.tool,
            agent_id=event.agent.id if event.agent else None,
            protocol_version=event.protocol_version,
            outcome=event.outcome,
            reason=event.reason,
            status=event.status,
            duration_ms=event.duration_ms,
            streamed=event.streamed,
            completed=event.completed,
            bytes_sent=event.bytes_sent,
        )
    elif isinstance(event, RequestRejected):
        log.info(
            "request.completed",
            request_id=event.request_id,
            trace_id=event.trace_id,
            span_id=event.span_id,
            backend=event.backend,
            method=event.method,
            tool=event.tool,
            agent_id=None,
            protocol_version=event.protocol_version,
            outcome=event.outcome,
            reason=event.reason,
            status=event.status,
            duration_ms=None,
        )


def log_http_request(
    *,
    request_id: str,
    http_method: str,
    route: str | None,
    status: int | None,
    started: float,
    span_context: SpanContext,
) -> None:
    """Log the canonical line of a request to a non-MCP route.

    Args:
        request_id: The id the response sent as ``X-Request-Id``.
        http_method: The HTTP method.
        route: The matched route template, never the raw path, whose query
            string could carry an authorization code; None when no route
            matched.
        status: The response status; None when no response was started.
        started: ``time.perf_counter()`` when the request arrived.
        span_context: The request's server span, for ``trace_id`` and
            ``span_id``.
    """
    if status in (401, 403):
        outcome = "denied"
    elif status is None or status >= 400:
        outcome = "error"
    else:
        outcome = "success"
    valid = span_context.is_valid
    log.info(
        "request.completed",
        request_id=request_id,
        trace_id=f"{span_context.trace_id:032x}" if valid else None,
        span_id=f"{span_context.span_id:016x}" if valid else None,
        http_method=http_method,
        route=route,
        outcome=outcome,
        status=status,
        duration_ms=round((time.perf_counter() - started) * 1000, 3),
    )
