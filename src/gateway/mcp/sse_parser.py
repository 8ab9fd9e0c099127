"""Server-sent events: the parser and the encoder.

The parser follows the "event stream interpretation" rules of the WHATWG HTML
standard. It decodes UTF-8 across chunk boundaries and ends lines at CR, LF or
CRLF only, so U+2028, U+0085 and other Unicode line breaks stay inside a
field. A blank line ends an event, ``data`` lines are joined with LF, and an
incomplete event at the end of the stream is discarded. Unlike a browser, the
parser also returns events that carry only ``id``, ``retry`` or comments, so
that a relay can re-emit them.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

# The only line ends of an event stream. str.splitlines() would also split at
# U+2028, U+0085 and other Unicode line breaks, which JSON strings may contain.
# CR and LF bytes never occur inside a multi-byte UTF-8 character, so lines
# are split before decoding.
_LINE_END = re.compile(rb"\r\n|\r|\n")
_FIELD_NAME_ALLOWANCE = len(b"data: ")


@dataclass(slots=True)
class SseEvent:
    """One event of an event stream.

    Attributes:
        data: The ``data`` lines joined with LF, or None without a data line.
        event: The ``event`` field (the event type), if any.
        id: The ``id`` field, if any.
        retry: The ``retry`` field in milliseconds, if valid.
        comments: Comment lines, without the leading colon.
        too_large: Set on the marker the parser returns in place of an event
            over its size limit. The other fields are then empty.
        data_bytes: ``data`` as the parser received it, before decoding, or
            None for events built otherwise. It is not kept in step when
            ``data`` is changed, and is not compared.
    """

    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    too_large: bool = False
    data_bytes: bytes | None = field(default=None, repr=False, compare=False)


class SseParser:
    """Turns chunks of an event stream into events as soon as each is complete.

    Lines are split on bytes and each field is decoded as UTF-8 once its
    line is complete, with U+FFFD for invalid bytes, so characters split
    across chunks decode whole and a long line is copied only once.

    With ``max_event_bytes``, an event is bounded by the size in bytes of its
    data (the lines joined with LF, which is the message a relay decodes)
    plus its comments. As soon as an event passes the bound, the parser
    returns one :class:`SseEvent` with ``too_large`` set and discards the
    rest of that event up to its blank line, so memory stays near the bound
    whatever the backend sends. Without the bound, events are collected
    whole.
    """

    def __init__(self, max_event_bytes: int | None = None) -> None:
        self._max_event_bytes = max_event_bytes
        # The start of a line whose end has not arrived yet, in pieces.
        self._partial: list[bytes] = []
        self._partial_size = 0
        self._skip_lf = False
        # Bytes held at the start of the stream until a byte order mark is
        # ruled out; None once it is.
        self._stream_start: bytes | None = b""
        self._skipping = False
        self._reset()

    def _reset(self) -> None:
        self._data: list[bytes] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._comments: list[str] = []
        self._has_fields = False
        self._size = 0

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Parse a chunk and return the events it completed, in order."""
        if self._stream_start is not None:
            chunk = self._stream_start + chunk
            if len(chunk) < len(codecs.BOM_UTF8) and codecs.BOM_UTF8.startswith(chunk):
                self._stream_start = chunk
                return []
            self._stream_start = None
            if chunk.startswith(codecs.BOM_UTF8):
                chunk = chunk[len(codecs.BOM_UTF8) :]
        if self._skip_lf and chunk:
            # The previous chunk ended with CR; an LF here completes that CRLF.
            self._skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]

        events: list[SseEvent] = []
        start = 0
        # A chunk inside a long line has no line end, and two byte searches
        # find that much faster than the regular expression.
        has_line_end = b"\n" in chunk or b"\r" in chunk
        for line_end in _LINE_END.finditer(chunk) if has_line_end else ():
            if line_end.end() == len(chunk) and line_end.group() == b"\r":
                self._skip_lf = True
            self._end_line(chunk[start : line_end.start()], events)
            start = line_end.end()
        if start < len(chunk):
            rest = chunk[start:]
            self._partial_size += len(rest)
            if not self._skipping:
                self._partial.append(rest)
                # The allowance is the "data: " before a value, which does
                # not count towards the size.
                pending = self._partial_size - _FIELD_NAME_ALLOWANCE
                if self._over_limit(self._size + pending):
                    self._start_skipping(events)
        return events

    def _end_line(self, piece: bytes, events: list[SseEvent]) -> None:
        empty = self._partial_size == 0 and not piece
        self._partial_size = 0
        if self._skipping:
            # Only the blank line that ends the discarded event matters.
            if empty:
                self._skipping = False
                self._reset()
            return
        if self._partial:
            self._partial.append(piece)
            line = b"".join(self._partial)
            self._partial.clear()
        else:
            line = piece
        if empty:
            event = self._dispatch()
            if event is not None:
                events.append(event)
            return
        self._process_line(line)
        if self._over_limit(self._size):
            self._start_skipping(events)

    def _over_limit(self, size: int) -> bool:
        return self._max_event_bytes is not None and size > self._max_event_bytes

    def _start_skipping(self, events: list[SseEvent]) -> None:
        events.append(SseEvent(too_large=True))
        self._skipping = True
        self._partial.clear()
        self._reset()

    def _process_line(self, line: bytes) -> None:
        if line.startswith(b":"):
            self._comments.append(line[1:].decode("utf-8", "replace"))
            self._size += len(line) - 1
            self._has_fields = True
            return
        # Slicing once: a data line can hold a message of many MiB.
        colon = line.find(b":")
        if colon == -1:
            name, value = line, b""
        else:
            name = line[:colon]
            start = colon + 2 if line.startswith(b" ", colon + 1) else colon + 1
            value = line[start:]
        if name == b"data":
            # One LF joins each data line to the one before it.
            self._size += len(value) + (1 if self._data else 0)
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\0" in value:
                return
            self._id = value.decode("utf-8", "replace")
        elif name == b"retry":
            # bytes.isdigit() accepts only the ASCII digits.
            if not value.isdigit():
                return
            self._retry = int(value)
        else:
            return
        self._has_fields = True

    def _dispatch(self) -> SseEvent | None:
        if not self._has_fields:
            return None
        data_bytes = b"\n".join(self._data) if self._data else None
        event = SseEvent(
            data=data_bytes.decode("utf-8", "replace")
            if data_bytes is not None
            else None,
            event=self._event,
            id=self._id,
            retry=self._retry,
            comments=self._comments,
            data_bytes=data_bytes,
        )
        self._reset()
        return event


def encode_event(event: SseEvent) -> bytes:
    """Encode one event, ending with the blank line that dispatches it.

    Raises:
        ValueError: A field other than ``data`` or a comment contains a line
            break, which would change the stream's structure.
    """
    lines = field_lines(event)
    if event.data is not None:
        for data_line in (
            event.data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        ):
            lines.append(f"data: {data_line}")
    lines.append("\n")
    return "\n".join(lines).encode()


def field_lines(event: SseEvent) -> list[str]:
    """Return the lines of every field but ``data``, without line ends.

    Raises:
        ValueError: ``event`` or ``id`` contains a line break.
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
    return lines
