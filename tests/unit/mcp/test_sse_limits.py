"""The SSE parser and checker on hard input: line breaks, split bytes, sizes."""

from __future__ import annotations

import json

import pytest

from gateway.mcp.sse import EventStreamChecker, SseEvent, SseParser


def parse_all(chunks: list[bytes], limit: int | None = None) -> list[SseEvent]:
    parser = SseParser(limit)
    events: list[SseEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


def response_event(request_id: int, text: str) -> bytes:
    answer = {"jsonrpc": "2.0", "id": request_id, "result": {"text": text}}
    return b"data: " + json.dumps(answer, ensure_ascii=False).encode() + b"\n\n"


@pytest.mark.parametrize(
    "separator", ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\x1e"]
)
def test_sse_parser_unicode_line_breaks_stay_in_data(separator: str) -> None:
    """Only CR and LF end lines; other Unicode line breaks stay in the data."""
    stream = f"data: before{separator}after\n\n".encode()
    for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        [event] = parse_all(chunks)
        assert event.data == f"before{separator}after"


def test_sse_parser_cr_at_chunk_end_then_lf_is_one_line_end() -> None:
    """CR ending one chunk and LF starting the next end one line, not two."""
    events = parse_all([b"data: a\r", b"\ndata: b\r", b"\n", b"\r", b"\n"])
    assert [event.data for event in events] == ["a\nb"]


def test_sse_parser_cr_at_chunk_end_then_text_ends_line() -> None:
    """A CR at a chunk's end followed by text is a line end of its own."""
    events = parse_all([b"data: a\r", b"data: b\r", b"\r"])
    assert [event.data for event in events] == ["a\nb"]


def test_sse_parser_utf8_split_at_every_byte_decodes() -> None:
    """An event cut in two at any byte, inside any character, decodes whole."""
    text = "é 日 🙂"
    stream = f"data: {text}\n\n".encode()
    for cut in range(1, len(stream)):
        [event] = parse_all([stream[:cut], stream[cut:]])
        assert event.data == text


def test_sse_parser_invalid_utf8_replaced() -> None:
    """Bytes that are not UTF-8 become U+FFFD, as browsers decode them."""
    [event] = parse_all([b"data: \xff ok \xe6\x97\n\n"])
    assert event.data == "\ufffd ok \ufffd"


def test_sse_parser_event_at_limit_kept() -> None:
    """An event whose data is exactly the limit in bytes is returned."""
    data = "é" * 50  # 100 bytes
    [event] = parse_all([f"event: message\ndata: {data}\nid: 1\n\n".encode()], 100)
    assert event.data == data
    assert event.too_large is False


def test_sse_parser_event_over_limit_marker_then_next_event() -> None:
    """An event over the limit gives one marker; the next event is parsed."""
    stream = b"data: " + b"x" * 60 + b"\ndata: " + b"y" * 60 + b"\n\ndata: ok\n\n"
    events = parse_all([stream], 100)
    assert events == [SseEvent(too_large=True), SseEvent(data="ok")]


def test_sse_parser_long_line_marker_before_line_ends() -> None:
    """A line over the limit is reported while it still arrives, not kept."""
    parser = SseParser(100_000)
    chunk = b"x" * 65_536
    assert parser.feed(b"data: " + chunk) == []
    assert parser.feed(chunk) == [SseEvent(too_large=True)]
    # The rest of the event is skipped as it arrives.
    for _ in range(20):
        assert parser.feed(chunk) == []
    assert parser.feed(b"\n\ndata: next\n\n") == [SseEvent(data="next")]


def test_sse_parser_many_comments_count_towards_limit() -> None:
    """Comment lines in one event count, so they cannot grow without end."""
    events = parse_all([b": " + b"c" * 40 + b"\n"] * 5 + [b"\n"], 100)
    assert events == [SseEvent(too_large=True)]


def test_sse_parser_multi_mib_line_in_small_chunks() -> None:
    """A 5 MiB data line arriving in 16 KiB chunks is returned intact."""
    text = "日本🙂x" * 500_000
    stream = f"data: {text}\r\n\r\n".encode()
    chunks = [stream[i : i + 16_384] for i in range(0, len(stream), 16_384)]
    [event] = parse_all(chunks, 16 * 1024 * 1024)
    assert event.data == text
    assert event.data_bytes == text.encode()


def test_event_stream_checker_oversized_response_stops_stream() -> None:
    """On a POST's stream, an event over the limit ends the checking."""
    checker = EventStreamChecker(answers=1, max_event_bytes=1024)
    progress = b'data: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n'
    checked = checker.feed(progress + response_event(1, "x" * 2000) + progress)
    assert checked.data == progress
    assert checked.too_large == 1
    assert checker.too_large is True
    assert checker.answered is False
    assert checker.feed(response_event(1, "late")).data == b""


def test_event_stream_checker_oversized_event_dropped_on_get_stream() -> None:
    """On a GET stream, an event over the limit is dropped and counted."""
    checker = EventStreamChecker(max_event_bytes=1024)
    notification = b'data: {"jsonrpc":"2.0","method":"notifications/message"}\n\n'
    checked = checker.feed(response_event(1, "x" * 2000) + notification)
    assert checked.data == notification
    assert checked.too_large == 1
    assert checked.dropped == []
    assert checker.too_large is False


def test_event_stream_checker_relays_data_bytes_unchanged() -> None:
    """Relayed data keeps every byte, including U+2028 and U+0085."""
    event = response_event(3, "a\u2028b\u0085c 🙂")
    checker = EventStreamChecker(answers=3)
    checked = checker.feed(event[:20])
    checked_rest = checker.feed(event[20:])
    assert checked.data + checked_rest.data == event
    assert checker.answered is True


def test_event_stream_checker_invalid_utf8_dropped() -> None:
    """Data that is not UTF-8 is not valid JSON, so the event is dropped."""
    checker = EventStreamChecker()
    checked = checker.feed(b'data: {"jsonrpc":"2.0","method":"x\xff"}\n\n')
    assert checked.data == b""
    assert checked.dropped == ["an event whose data is not valid JSON"]
