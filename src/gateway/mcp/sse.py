"""Server-sent events: a parser, an encoder, a stream checker and message transforms.

The parser follows the "event stream interpretation" rules of the WHATWG HTML
standard. It decodes UTF-8 across chunk boundaries and ends lines at CR, LF or
CRLF. A blank line ends an event, ``data`` lines are joined with LF, and an
incomplete event at the end of the stream is discarded. Unlike a browser, the
parser also returns events that carry only ``id``, ``retry`` or comments, so
that a relay can re-emit them.
"""

from __future__ import annotations

import codecs
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.mcp.jsonrpc import decode, encode, message_kind, same_id
from gateway.mcp.response import GatewayResponse

MessageTransform = Callable[[dict[str, Any]], dict[str, Any] | None]
"""Returns the replacement message, or None (or the same dict) to keep it."""

NO_REQUEST: Any = object()
"""``answers`` value of a stream that answers no request (the GET stream)."""


@dataclass(slots=True)
class SseEvent:
    """One event of an event stream.

    Attributes:
        data: The ``data`` lines joined with LF, or None without a data line.
        event: The ``event`` field (the event type), if any.
        id: The ``id`` field, if any.
        retry: The ``retry`` field in milliseconds, if valid.
        comments: Comment lines, without the leading colon.
    """

    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)


class SseParser:
    """Turns chunks of an event stream into events as soon as each is complete."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._skip_lf = False
        self._at_start = True
        self._reset()

    def _reset(self) -> None:
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._comments: list[str] = []
        self._has_fields = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Parse a chunk and return the events it completed, in order."""
        text = self._decoder.decode(chunk)
        if not text:
            return []

        if self._at_start:
            self._at_start = False
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._skip_lf:
            # The previous chunk ended with CR; an LF here completes that CRLF.
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]

        buffer = self._buffer + text
        events: list[SseEvent] = []
        start = 0
        length = len(buffer)
        while start < length:
            cr = buffer.find("\r", start)
            lf = buffer.find("\n", start)
            if cr == -1 and lf == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, next_start = lf, lf + 1
            elif cr + 1 < length:
                end = cr
                next_start = cr + 2 if buffer[cr + 1] == "\n" else cr + 1
            else:
                end, next_start = cr, cr + 1
                self._skip_lf = True
            event = self._process_line(buffer[start:end])
            if event is not None:
                events.append(event)
            start = next_start

        self._buffer = buffer[start:]
        return events

    def _process_line(self, line: str) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self._comments.append(line[1:])
            self._has_fields = True
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" in value:
                return None
            self._id = value
        elif name == "retry":
            if not (value.isascii() and value.isdigit()):
                return None
            self._retry = int(value)
        else:
            return None
        self._has_fields = True
        return None

    def _dispatch(self) -> SseEvent | None:
        if not self._has_fields:
            return None
        event = SseEvent(
            data="\n".join(self._data) if self._data else None,
            event=self._event,
            id=self._id,
            retry=self._retry,
            comments=self._comments,
        )
        self._reset()
        return event


def encode_event(event: SseEvent) -> bytes:
    """Encode one event, ending with the blank line that dispatches it.

    Raises:
        ValueError: A field other than ``data`` or a comment contains a line
            break, which would change the stream's structure.
    """
    lines = [f":{comment}" for comment in event.comments]
    for name, value in (("event", event.event), ("id", event.id)):
        if value is not None:
            if "\n" in value or "\r" in value:
                msg = f"SSE field {name!r} must not contain a line break"
                raise ValueError(msg)
            lines.append(f"{name}: {value}")
    if event.retry is not None:
        lines.append(f"retry: {event.retry}")
    if event.data is not None:
        for data_line in (
            event.data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        ):
            lines.append(f"data: {data_line}")
    lines.append("\n")
    return "\n".join(lines).encode()


@dataclass(slots=True)
class CheckedEvents:
    """The outcome of checking one chunk of a JSON-RPC event stream.

    Attributes:
        data: The events to relay, encoded again; empty when none completed.
        dropped: Why each dropped event was dropped, in stream order.
    """

    data: bytes
    dropped: list[str]


class EventStreamChecker:
    """Check the events of an MCP event stream and find the response in it.

    Each complete event is relayed when it carries no data (a comment, or a
    priming event with only an ``id``) or exactly one JSON-RPC message.
    Events whose data is not JSON or not a JSON-RPC message are dropped.
    For the stream of a POST (``answers`` is the request's id), a response to
    another id is dropped as well, and nothing after the response to the
    request is relayed.

    Attributes:
        answered: Whether the response to ``answers`` has been relayed.
        resumable: Whether an event with a non-empty ``id`` has been relayed,
            so that the client can resume the stream with ``Last-Event-ID``.
    """

    def __init__(self, answers: Any = NO_REQUEST) -> None:
        self._answers = answers
        self._parser = SseParser()
        self.answered = False
        self.resumable = False

    def feed(self, chunk: bytes) -> CheckedEvents:
        """Check the events that ``chunk`` completes."""
        out = bytearray()
        dropped: list[str] = []
        if self.answered:
            return CheckedEvents(b"", dropped)
        for event in self._parser.feed(chunk):
            problem = self._problem(event)
            if problem is not None:
                dropped.append(problem)
                continue
            out += encode_event(event)
            if event.id:
                self.resumable = True
            if self.answered:
                break
        return CheckedEvents(bytes(out), dropped)

    def _problem(self, event: SseEvent) -> str | None:
        if not event.data:
            return None
        try:
            message = decode(event.data.encode())
        except msgspec.DecodeError:
            return "an event whose data is not valid JSON"
        kind = message_kind(message)
        if kind is None:
            return "an event whose data is not one JSON-RPC message"
        if kind == "response" and self._answers is not NO_REQUEST:
            if not same_id(message.get("id"), self._answers):
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
