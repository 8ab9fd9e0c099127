"""Relaying a backend's event stream to the client, one checked event at a time."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx

from gateway.mcp.backend import UpstreamStreamError, unsupported_content_encoding
from gateway.mcp.keepalive import KEEPALIVE_COMMENT, TimedReader
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
    ``id`` when ``client_resumes`` is true: MCP 2025-11-25 allows a server
    that sent an event id to close the stream before the response, and the
    client then resumes the stream with ``Last-Event-ID`` to get it. A read
    failure on a stream that answers no request is reported and raised.

    Limits, each optional:

    - ``keepalive``: seconds without output after which the stream sends
      :data:`KEEPALIVE_COMMENT`, so that proxies keep an idle stream open.
      There is no total timeout otherwise.
    - ``deadline``: a ``time.perf_counter()`` value. A stream that has not
      answered its request by then is closed, reported as
      ``backend_deadline``, and ends with the fallback for that reason;
      :attr:`deadline_passed` is then set.
    - ``max_event_bytes``: the largest event relayed. A larger event on a
      stream that answers a request ends it like the deadline does, with
      ``backend_message_too_large``; on a stream that answers no request it
      is dropped and the first one is reported.

    A ``Content-Encoding`` that the HTTP client does not decode ends the
    stream at once with ``backend_invalid_response``, because the bytes
    could not be read as events.

    :attr:`failure_reason` is the reason of the fallback event, if one was
    sent. :meth:`aclose` closes the upstream response and is safe to call
    more than once, also before iteration started, which an async generator
    could not guarantee.
    """

    def __init__(
        self,
        upstream: httpx.Response,
        report: FailureReport,
        *,
        answers: Any = NO_REQUEST,
        fallback: Callable[[str], bytes] | None = None,
        client_resumes: bool = True,
        keepalive: float | None = None,
        deadline: float | None = None,
        max_event_bytes: int | None = None,
    ) -> None:
        self._upstream = upstream
        self._reader = TimedReader(upstream.aiter_bytes())
        self._report = report
        self._checker = EventStreamChecker(answers, max_event_bytes=max_event_bytes)
        self._fallback = fallback if answers is not NO_REQUEST else None
        self._client_resumes = client_resumes
        self._keepalive = keepalive
        self._deadline = deadline if answers is not NO_REQUEST else None
        self._max_event_bytes = max_event_bytes
        self._encoding = unsupported_content_encoding(upstream.headers)
        self._closed = False
        self._reported_drop = False
        self._reported_too_large = False
        self._outbox: deque[bytes] = deque()
        self._pending_error: str | None = None
        self._last_output = time.perf_counter()
        self.deadline_passed = False
        self.failure_reason: str | None = None

    @property
    def answered(self) -> bool:
        """Whether the response to the request went through."""
        return self._checker.answered

    def __aiter__(self) -> RelayStream:
        return self

    async def __anext__(self) -> bytes:
        if self._outbox:
            return self._output(self._outbox.popleft())
        if self._pending_error is not None:
            detail, self._pending_error = self._pending_error, None
            raise UpstreamStreamError(detail)
        if self._encoding is not None and not self._closed:
            detail = f"unsupported Content-Encoding {self._encoding!r}"
            return await self._end("backend_invalid_response", detail, None)
        while not (self._closed or self.answered):
            now = time.perf_counter()
            if self._deadline is not None and now >= self._deadline:
                self.deadline_passed = True
                detail = "the request did not complete within its deadline"
                return await self._end("backend_deadline", detail, None)
            idle = now - self._last_output
            if self._keepalive is not None and idle >= self._keepalive:
                return self._output(KEEPALIVE_COMMENT)
            try:
                chunk = await self._reader.read(self._wait_time(now))
            except StopAsyncIteration:
                if self._closed:
                    # Closed on purpose, such as a cancelled request: the
                    # client's stream ends without a response.
                    raise
                await self.aclose()
                detail = "the event stream ended without the response"
                fallback = await self._fail("backend_invalid_response", detail, None)
                if fallback is None:
                    raise
                return self._output(fallback)
            except httpx.HTTPError as exc:
                # Besides transport errors, httpx.DecodingError: the bytes do
                # not match their Content-Encoding.
                await self.aclose()
                detail = f"the backend stream failed: {type(exc).__name__}"
                fallback = await self._fail("backend_stream_failed", detail, exc)
                if fallback is None:
                    raise UpstreamStreamError(detail) from exc
                return self._output(fallback)
            if chunk is None:
                continue
            data = await self._check(chunk)
            if data:
                return self._output(data)
        await self.aclose()
        raise StopAsyncIteration

    async def _check(self, chunk: bytes) -> bytes:
        # Returns the events to relay now. A failure's last event is queued.
        checked = self._checker.feed(chunk)
        if checked.dropped and not self._reported_drop:
            self._reported_drop = True
            detail = f"dropped {checked.dropped[0]} from the event stream"
            await self._report("backend_invalid_response", detail, None)
        too_large = f"an event larger than {self._max_event_bytes} bytes"
        if checked.too_large and not self._reported_too_large:
            self._reported_too_large = True
            if not self._checker.too_large:
                detail = f"dropped {too_large} from the event stream"
                await self._report("backend_message_too_large", detail, None)
        if self._checker.too_large:
            # Only a stream that answers a request stops, so _end has a
            # fallback event to return.
            last = await self._end("backend_message_too_large", too_large, None)
            if not checked.data:
                return last
            self._outbox.append(last)
        return checked.data

    def _wait_time(self, now: float) -> float | None:
        limits: list[float] = []
        if self._keepalive is not None:
            limits.append(self._last_output + self._keepalive - now)
        if self._deadline is not None:
            limits.append(self._deadline - now)
        return min(limits) if limits else None

    def _output(self, data: bytes) -> bytes:
        self._last_output = time.perf_counter()
        return data

    async def _end(self, reason: str, detail: str, exc: Exception | None) -> bytes:
        # Closes the upstream for a failure that ends the stream whatever was
        # relayed, and returns the last event, or raises without a fallback.
        await self.aclose()
        fallback = await self._fail(reason, detail, exc, forced=True)
        if fallback is None:
            raise UpstreamStreamError(detail)
        return self._output(fallback)

    async def _fail(
        self,
        reason: str,
        detail: str,
        exc: Exception | None,
        *,
        forced: bool = False,
    ) -> bytes | None:
        # Reports a failure and returns the fallback event to send, or None
        # when the client gets no fallback. A clean end is a failure only for
        # a request that will not get its response; ``forced`` marks failures
        # that no resumption can repair.
        resumable = self._client_resumes and self._checker.resumable
        owed = self._fallback is not None and (forced or not resumable)
        if exc is None and not (owed or forced):
            return None
        await self._report(reason, detail, exc)
        if self._fallback is None or not owed:
            return None
        self._pending_error = detail
        self.failure_reason = reason
        return self._fallback(reason)

    async def aclose(self) -> None:
        """Close the upstream response; later iteration ends at once."""
        if self._closed:
            return
        self._closed = True
        # Shielded: a later call returns at once, so this one must finish
        # even while the request is being cancelled.
        with anyio.CancelScope(shield=True):
            try:
                await self._reader.aclose()
            finally:
                await self._upstream.aclose()
