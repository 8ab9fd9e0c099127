"""Settings of the forward stage's relay: its limits, fallback and deadline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from gateway.mcp.failures import failure_response
from gateway.mcp.relay import FailureReport, RelayStream
from gateway.mcp.sse import SseEvent, encode_event

if TYPE_CHECKING:
    from gateway.context import RequestContext


LISTEN_METHOD = "subscriptions/listen"
"""The 2026-07-28 request whose response is a stream meant to stay open."""


def request_deadline(ctx: RequestContext) -> float | None:
    """Return when a POST must be answered (``time.perf_counter()``), if ever.

    The backend's ``deadline`` counts from the request's arrival at the
    gateway. GET streams, DELETE and 2026-07-28 ``subscriptions/listen``
    (the stateless revision's notification stream) have none.
    """
    if ctx.backend.deadline is None or ctx.http_method != "POST":
        return None
    if ctx.mcp_method == LISTEN_METHOD:
        return None
    return ctx.started + ctx.backend.deadline


def open_relay(
    ctx: RequestContext,
    upstream: httpx.Response,
    report: FailureReport,
    *,
    to_client: bool,
) -> RelayStream:
    """Return the relay of a backend event stream for ``ctx``'s request.

    The relay applies ``server.max_message_bytes`` to each event and, for a
    request, the backend's ``deadline``, and ends an unanswered stream with
    :func:`failure_response` as its last event. A stream sent on to the
    client (``to_client``) gets keepalive comments after
    ``server.sse_keepalive`` seconds of silence and may end early once it
    relayed an event id, since the client can resume it. A stream that the
    gateway reads itself gets neither.
    """

    def fallback(reason: str) -> bytes:
        body = failure_response(ctx, reason).body
        return encode_event(SseEvent(data=body.decode()))

    server = ctx.runtime.config.server
    options: dict[str, Any] = {
        "max_event_bytes": server.max_message_bytes,
        "keepalive": server.sse_keepalive if to_client else None,
        "client_resumes": to_client,
    }
    message = ctx.message
    if message is None or message.kind != "request":
        return RelayStream(upstream, report, **options)
    return RelayStream(
        upstream,
        report,
        answers=message.id,
        fallback=fallback,
        deadline=request_deadline(ctx),
        **options,
    )
