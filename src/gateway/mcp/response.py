"""The response a chain returns, possibly streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.mcp.jsonrpc import error_body

SSE_HEADERS = {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}


@dataclass(slots=True)
class StreamOutcome:
    """How a response ended, passed to ``on_close`` callbacks.

    Attributes:
        completed: Whether the whole body was sent.
        bytes_sent: Body bytes sent to the client.
        error: A short description when the stream failed or the client left.
    """

    completed: bool
    bytes_sent: int
    error: str | None = None


@dataclass(slots=True)
class GatewayResponse:
    """An HTTP response produced by a chain.

    Exactly one of ``body`` and ``stream`` carries the payload. Header names are
    lower-case. ``on_close`` callbacks run once, after the last byte was sent or
    the client went away, in the order they were added.

    Attributes:
        status: HTTP status code.
        headers: Response headers.
        body: The complete body, for non-streamed responses.
        stream: The body as chunks, for SSE responses.
        on_close: Callbacks awaited when the response is finished.
        reason: A stable reason code for audit when the gateway produced the
            response itself (``invalid_token``, ``tool_denied``, ...).
        denied: Whether a stage refused the request by policy; the audit
            stage then records the outcome ``denied`` whatever the status,
            instead of ``error``.
    """

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    on_close: list[Callable[[StreamOutcome], Awaitable[None]]] = field(
        default_factory=list
    )
    reason: str | None = None
    denied: bool = False

    @property
    def is_stream(self) -> bool:
        """Whether the body is streamed."""
        return self.stream is not None

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-case."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def jsonrpc_error_response(
    status: int,
    id: Any,
    code: int,
    message: str,
    *,
    reason: str,
    data: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    denied: bool = False,
) -> GatewayResponse:
    """Build a JSON response carrying one JSON-RPC error.

    ``data.reason`` is always set to ``reason`` so clients can branch on it.
    ``denied`` marks a refusal by policy (see :attr:`GatewayResponse.denied`).
    """
    payload = {"reason": reason, **(data or {})}
    all_headers = {"content-type": "application/json"}
    if headers:
        all_headers.update(headers)
    return GatewayResponse(
        status=status,
        headers=all_headers,
        body=error_body(id, code, message, payload),
        reason=reason,
        denied=denied,
    )
