"""Server-sent events of MCP: the stream checker and message transforms.

The parser and the encoder live in :mod:`gateway.mcp.sse_parser` and are
exported here too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from gateway.mcp.jsonrpc import decode, encode, message_kind, same_id
from gateway.mcp.response import GatewayResponse
from gateway.mcp.sse_parser import SseEvent as SseEvent
from gateway.mcp.sse_parser import SseParser as SseParser
from gateway.mcp.sse_parser import encode_event as encode_event
from gateway.mcp.sse_parser import field_lines

MessageTransform = Callable[[dict[str, Any]], dict[str, Any] | None]
"""Returns the replacement message, or None (or the same dict) to keep it."""

NO_REQUEST: Any = object()
"""``answers`` value of a stream that answers no request (the GET stream)."""


def _encode_parsed(event: SseEvent) -> bytes:
    # encode_event for an event straight from the parser, whose data_bytes
    # match its data and contain no CR: the data is copied as bytes, which
    # saves encoding a message of many MiB again.
    data = event.data_bytes
    if data is None:
        return encode_event(event)
    head = "".join(f"{line}\n" for line in field_lines(event)).encode()
    return head + b"data: " + data.replace(b"\n", b"\ndata: ") + b"\n\n"


class _Envelope(msgspec.Struct):
    """The members of a JSON-RPC message that classify it; the rest is skipped."""

    jsonrpc: Any = None
    id: Any = msgspec.UNSET
    method: Any = None
    result: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    error: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET

    def fields(self) -> dict[str, Any]:
        """Return the members present, as :func:`message_kind` reads them."""
        present: dict[str, Any] = {"jsonrpc": self.jsonrpc, "method": self.method}
        if self.id is not msgspec.UNSET:
            present["id"] = self.id
        if self.result is not msgspec.UNSET:
            present["result"] = True
        if self.error is not msgspec.UNSET:
            present["error"] = True
        return present


_envelope_decoder = msgspec.json.Decoder(_Envelope)


@dataclass(slots=True)
class CheckedEvents:
    """The outcome of checking one chunk of a JSON-RPC event stream.

    Attributes:
        data: The events to relay, encoded again; empty when none completed.
        dropped: Why each dropped event was dropped, in stream order.
        too_large: Events dropped for passing the size limit. They are not
            in ``dropped``, because a relay reports them with another reason.
    """

    data: bytes
    dropped: list[str]
    too_large: int = 0


class EventStreamChecker:
    """Check the events of an MCP event stream and find the response in it.

    Each complete event is relayed when it carries no data (a comment, or a
    priming event with only an ``id``) or exactly one JSON-RPC message.
    Events whose data is not JSON or not a JSON-RPC message are dropped.
    For the stream of a POST (``answers`` is the request's id), a response to
    another id is dropped as well, and nothing after the response to the
    request is relayed.

    With ``max_event_bytes``, an event over that size (see
    :class:`SseParser`) is never collected. On a GET stream it is dropped
    and counted. On the stream of a POST it may be the response itself, so
    checking stops there and :attr:`too_large` is set: the request can no
    longer be answered from this stream.

    Attributes:
        answered: Whether the response to ``answers`` has been relayed.
        resumable: Whether an event with a non-empty ``id`` has been relayed,
            so that the client can resume the stream with ``Last-Event-ID``.
        too_large: Whether an event over the size limit ended the checking of
            a POST's stream.
    """

    def __init__(
        self, answers: Any = NO_REQUEST, *, max_event_bytes: int | None = None
    ) -> None:
        self._answers = answers
        self._parser = SseParser(max_event_bytes)
        self.answered = False
        self.resumable = False
        self.too_large = False

    def feed(self, chunk: bytes) -> CheckedEvents:
        """Check the events that ``chunk`` completes."""
        out = bytearray()
        dropped: list[str] = []
        too_large = 0
        if self.answered or self.too_large:
            return CheckedEvents(b"", dropped)
        for event in self._parser.feed(chunk):
            if event.too_large:
                too_large += 1
                if self._answers is not NO_REQUEST:
                    self.too_large = True
                    break
                continue
            problem = self._problem(event)
            if problem is not None:
                dropped.append(problem)
                continue
            out += _encode_parsed(event)
            if event.id:
                self.resumable = True
            if self.answered:
                break
        return CheckedEvents(bytes(out), dropped, too_large)

    def _problem(self, event: SseEvent) -> str | None:
        if not event.data:
            return None
        data = event.data_bytes
        try:
            envelope = _envelope_decoder.decode(
                data if data is not None else event.data.encode()
            )
        except msgspec.ValidationError:
            return "an event whose data is not one JSON-RPC message"
        except msgspec.DecodeError:
            return "an event whose data is not valid JSON"
        kind = message_kind(envelope.fields())
        if kind is None:
            return "an event whose data is not one JSON-RPC message"
        if kind == "response" and self._answers is not NO_REQUEST:
            if not same_id(envelope.id, self._answers):
                return "a response to another request id"
            self.answered = True
        return None


def transform_messages(
    response: GatewayResponse, fn: MessageTransform
) -> GatewayResponse:
    """Apply ``fn`` to each JSON-RPC message of a response.

    A JSON body is one message; an event stream carries one message per event
    ``data``. ``fn`` returns the replacement message, or None or the same dict
    to keep the message as it was. Bodies and events whose data is not a JSON
    object pass unchanged, as do responses of other content types. Streams are
    transformed event by event, without waiting for the end of the stream.

    Returns:
        The same response when nothing was transformed, else a new response
        with the same status, headers, ``on_close`` callbacks and reason.
    """
    if response.stream is not None:
        if response.content_type != "text/event-stream":
            return response
        return dataclasses.replace(
            response,
            headers=dict(response.headers),
            stream=_transform_stream(response.stream, fn),
            on_close=list(response.on_close),
        )
    if response.content_type != "application/json" or not response.body:
        return response
    replacement = _transform_json(response.body, fn)
    if replacement is None:
        return response
    return dataclasses.replace(
        response,
        headers=dict(response.headers),
        body=replacement,
        on_close=list(response.on_close),
    )


def _transform_json(data: bytes | str, fn: MessageTransform) -> bytes | None:
    try:
        message = decode(data.encode() if isinstance(data, str) else data)
    except msgspec.DecodeError:
        return None
    if not isinstance(message, dict):
        return None
    replacement = fn(message)
    if replacement is None or replacement is message:
        return None
    return encode(replacement)


async def _transform_stream(
    stream: AsyncIterator[bytes], fn: MessageTransform
) -> AsyncIterator[bytes]:
    parser = SseParser()
    try:
        async for chunk in stream:
            out = bytearray()
            for event in parser.feed(chunk):
                if event.data is not None:
                    replacement = _transform_json(event.data, fn)
                    if replacement is not None:
                        event.data = replacement.decode()
                        event.data_bytes = replacement
                out += encode_event(event)
            if out:
                yield bytes(out)
    finally:
        await aclose_stream(stream)


async def aclose_stream(stream: AsyncIterator[bytes]) -> None:
    """Close a response stream if it supports ``aclose`` (async generators do)."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
