"""Requests the gateway sends on its own behalf through the rest of a chain."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.context import RequestContext
from gateway.facts import BACKEND_SESSION, BackendSession
from gateway.mcp.backend import UpstreamStreamError
from gateway.mcp.eras import VERSION_HEADER, Envelope
from gateway.mcp.jsonrpc import decode, encode, parse_message
from gateway.mcp.response import GatewayResponse, StreamOutcome
from gateway.mcp.sse import SseParser, aclose_stream
from gateway.stages.forward import BACKEND_SESSION_ID, BACKEND_STATUS

MAX_READ_BYTES = 1024 * 1024
"""Largest backend response read for a request the gateway sent itself."""


def derived_context(
    ctx: RequestContext,
    message: dict[str, Any],
    *,
    protocol_version: str | None,
    backend_session_id: str | None,
    envelope: Envelope | None = None,
) -> RequestContext:
    """Return a context for ``message``, sent by the gateway for ``ctx``'s client.

    The derived request keeps the facts of the client's request, so the
    forward stage sends the same credentials, and gets its own
    ``backend_session`` fact. Only ``Content-Type``, the protocol version,
    the client's ``Accept`` (so a client that takes only JSON gets JSON) and
    the trace context are set as client headers.
    """
    body = encode(message)
    headers = {"content-type": "application/json"}
    if protocol_version is not None:
        headers[VERSION_HEADER] = protocol_version
    for name in ("accept", "traceparent", "tracestate"):
        value = ctx.headers.get(name)
        if value is not None:
            headers[name] = value
    derived = RequestContext(
        runtime=ctx.runtime,
        request_id=ctx.request_id,
        http_method="POST",
        backend_name=ctx.backend_name,
        backend=ctx.backend,
        resource=ctx.resource,
        headers=headers,
        body=body,
        message=parse_message(body),
        envelope=envelope,
    )
    derived.facts = dict(ctx.facts)
    derived.provide(
        BACKEND_SESSION,
        BackendSession(
            gateway_session_id=None,
            backend_session_id=backend_session_id,
            protocol_version=protocol_version,
        ),
    )
    return derived


def adopt_outcome(ctx: RequestContext, sent: RequestContext) -> None:
    """Copy what the forward stage recorded for ``sent`` onto the client's ``ctx``.

    The exchange stage reads ``backend_status`` from the client's context
    to retry after a backend 401, so a request sent in its place must report
    there. Keys of an earlier attempt that ``sent`` did not set are removed.
    """
    for name in (BACKEND_STATUS, BACKEND_SESSION_ID):
        ctx.attributes.pop(name, None)
    ctx.attributes.update(sent.attributes)


async def read_messages(
    response: GatewayResponse, limit: int = MAX_READ_BYTES
) -> list[dict[str, Any]]:
    """Collect the JSON-RPC messages of a response that is not sent to a client.

    Reads at most ``limit`` bytes of an event stream, closes the response and
    runs its callbacks. Data that is not a JSON object is skipped.
    """
    chunks: list[bytes] = []
    if response.stream is None:
        chunks.append(response.body)
    else:
        parser = SseParser()
        size = 0
        try:
            async for chunk in response.stream:
                size += len(chunk)
                if size > limit:
                    break
                chunks.extend(
                    event.data.encode() for event in parser.feed(chunk) if event.data
                )
        except UpstreamStreamError:
            # The stream has reported the failure and sent its last event;
            # the messages read so far decide.
            pass
        finally:
            await aclose_stream(response.stream)
    await finish_unsent(response, None)
    messages: list[dict[str, Any]] = []
    for data in chunks:
        try:
            message = decode(data)
        except msgspec.DecodeError:
            continue
        if isinstance(message, dict):
            messages.append(message)
    return messages


def result_of(messages: list[dict[str, Any]], request_id: Any) -> dict[str, Any] | None:
    """Return the ``result`` object of the response to ``request_id``, if any."""
    for message in messages:
        result = message.get("result")
        if message.get("id") == request_id and isinstance(result, dict):
            return result
    return None


def error_of(messages: list[dict[str, Any]], request_id: Any) -> dict[str, Any] | None:
    """Return the ``error`` object of the response to ``request_id``, if any."""
    for message in messages:
        error = message.get("error")
        if message.get("id") == request_id and isinstance(error, dict):
            return error
    return None


async def finish_unsent(response: GatewayResponse, error: str | None) -> None:
    """Close a response that will not be sent and run its callbacks once."""
    if response.stream is not None:
        await aclose_stream(response.stream)
    outcome = StreamOutcome(completed=error is None, bytes_sent=0, error=error)
    callbacks, response.on_close = list(response.on_close), []
    for callback in callbacks:
        await callback(outcome)
