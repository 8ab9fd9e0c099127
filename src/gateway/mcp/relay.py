"""Relaying a backend's event stream to the client, one checked event at a time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from gateway.mcp.backend import UpstreamStreamError
from gateway.mcp.sse import NO_REQUEST, EventStreamChecker

FailureReport = Callable[[str, str, Exception | None], Awaitable[None]]
"""Publishes ``BackendFailed`` with a reason, a detail and the exception, if any."""


class RelayStream:
    """The body of a backend event stream, relayed event by event as it arrives.

    Events are checked by :class:`EventStreamChecker`: an event whose data is
    not one JSON-RPC message, or that is a response to another request, is
    dropped, and the first such event of a stream is reported. When the
    stream answers a request (``answers`` is its JSON-RPC id), it ends right
    after the response to that request, even if the backend keeps its side
    open. :attr:`answered` records whether that response went through.

    A backend stream that ends or fails before that response would leave the
    client waiting, so the stream then reports the failure, sends one more
    event with ``fallback(reason)`` (the gateway's own response for the
    request) and raises :class:`UpstreamStreamError`, which marks the outcome
    as failed. The exception is a stream that relayed an event with an
    ``id``: MCP 2025-11-25 allows a server that sent an event id to close the
    stream before the response, and the client then resumes the stream with
    ``Last-Event-ID`` to get it. A read failure on a stream that answers no
    request is reported and raised.

    :meth:`aclose` closes the upstream response and is safe to call more than
    once, also before iteration started, which an async generator could not
    guarantee.
    """

    def __init__(
        self,
        upstream: httpx.Response,
        report: FailureReport,
        *,
        answers: Any = NO_REQUEST,
        fallback: Callable[[str], bytes] | None = None,
    ) -> None:
        self._upstream = upstream
        self._chunks = upstream.aiter_bytes()
        self._report = report
        self._checker = EventStreamChecker(answers)
        self._fallback = fallback if answers is not NO_REQUEST else None
        self._closed = False
        self._reported_drop = False
        self._pending_error: str | None = None

    @property
    def answered(self) -> bool:
        """Whether the response to the request went through."""
        return self._checker.answered

    def __aiter__(self) -> RelayStream:
        return self

    async def __anext__(self) -> bytes:
        if self._pending_error is not None:
            detail, self._pending_error = self._pending_error, None
            raise UpstreamStreamError(detail)
        while not (self._closed or self.answered):
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                await self.aclose()
                detail = "the event stream ended without the response"
                fallback = await self._fail("backend_invalid_response", detail, None)
                if fallback is None:
                    raise
                return fallback
            except httpx.HTTPError as exc:
                await self.aclose()
                detail = f"the backend stream failed: {type(exc).__name__}"
                fallback = await self._fail("backend_stream_failed", detail, exc)
                if fallback is None:
                    raise UpstreamStreamError(detail) from exc
                return fallback
            checked = self._checker.feed(chunk)
            if checked.dropped and not self._reported_drop:
                self._reported_drop = True
                detail = f"dropped {checked.dropped[0]} from the event stream"
                await self._report("backend_invalid_response", detail, None)
            if checked.data:
                return checked.data
        await self.aclose()
        raise StopAsyncIteration

    async def _fail(
        self, reason: str, detail: str, exc: Exception | None
    ) -> bytes | None:
        # Reports a failure and returns the fallback event to send, or None
        # when the client gets no fallback. A clean end is a failure only for
        # a request that will not get its response.
        owed = self._fallback is not None and not self._checker.resumable
        if exc is None and not owed:
            return None
        await self._report(reason, detail, exc)
        if self._fallback is None or not owed:
            return None
        self._pending_error = detail
        return self._fallback(reason)

    async def aclose(self) -> None:
        """Close the upstream response; later iteration ends at once."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._chunks.aclose()  # type: ignore[attr-defined]
        finally:
            await self._upstream.aclose()
