"""The SSE parser, the encoder and JSON-RPC message transforms."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.mcp.response import GatewayResponse
from gateway.mcp.sse import (
    EventStreamChecker,
    SseEvent,
    SseParser,
    encode_event,
    transform_messages,
)


def parse_all(chunks: list[bytes]) -> list[SseEvent]:
    parser = SseParser()
    events: list[SseEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_sse_parser_line_endings_all_split_lines(newline: bytes) -> None:
    """LF, CRLF and CR each end a line, whole or fed byte by byte."""
    stream = newline.join(
        [b"event: message", b"data: one", b"", b"data: two", b"", b""]
    )
    for chunks in ([stream], bytewise(stream)):
        events = parse_all(chunks)
        assert [event.data for event in events] == ["one", "two"]
        assert events[0].event == "message"
        assert events[1].event is None


def test_sse_parser_crlf_split_across_chunks() -> None:
    """A CR at the end of one chunk and LF at the start of the next is one CRLF."""
    events = parse_all([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"])
    assert [event.data for event in events] == ["a\nb"]


def test_sse_parser_utf8_split_across_chunks_decodes() -> None:
    """Multi-byte characters split between network chunks decode intact."""
    text = 'data: {"name":"Tomás 🙂 日本"}\n\n'
    events = parse_all(bytewise(text.encode()))
    assert len(events) == 1
    assert events[0].data == '{"name":"Tomás 🙂 日本"}'


def test_sse_parser_event_waits_for_blank_line() -> None:
    """An event is returned only once its blank line has arrived."""
    parser = SseParser()
    assert parser.feed(b"data: partial") == []
    assert parser.feed(b"\n") == []
    events = parser.feed(b"\n")
    assert [event.data for event in events] == ["partial"]


def test_sse_parser_multiline_data_joined_with_lf() -> None:
    """Consecutive data lines join with LF; an empty data line keeps its place."""
    events = parse_all([b"data: first\ndata:\ndata:  indented\n\n"])
    assert events[0].data == "first\n\n indented"


def test_sse_parser_fields_id_retry_and_comments() -> None:
    """``id``, ``retry`` and comments are kept with their event."""
    events = parse_all([b": keep-alive\nid: 7\nretry: 1500\ndata: x\n\n"])
    event = events[0]
    assert event.id == "7"
    assert event.retry == 1500
    assert event.comments == [" keep-alive"]
    assert event.data == "x"


def test_sse_parser_invalid_retry_and_nul_id_ignored() -> None:
    """A non-numeric retry and an id containing NUL are ignored."""
    events = parse_all([b"retry: 10s\nid: a\x00b\ndata: x\n\n"])
    assert events[0].retry is None
    assert events[0].id is None


def test_sse_parser_field_without_colon_has_empty_value() -> None:
    """A bare ``data`` line is a data line with an empty value."""
    events = parse_all([b"data\n\n"])
    assert events[0].data == ""


def test_sse_parser_unknown_fields_ignored() -> None:
    """Unknown field names do not create events."""
    assert parse_all([b"foo: bar\n\n"]) == []


def test_sse_parser_priming_event_without_data_returned() -> None:
    """An event with only an id is returned so that a relay can re-emit it."""
    events = parse_all([b"id: prime-1\n\n"])
    assert events == [SseEvent(id="prime-1")]


def test_sse_parser_leading_bom_skipped() -> None:
    """A UTF-8 byte order mark at the start of the stream is not part of a field."""
    events = parse_all([b"\xef\xbb", b"\xbfdata: x\n\n"])
    assert events[0].data == "x"


def test_sse_parser_incomplete_event_at_end_discarded() -> None:
    """Bytes after the last blank line never become an event."""
    parser = SseParser()
    assert parser.feed(b"data: done\n\ndata: cut") == [SseEvent(data="done")]


def test_sse_encode_event_round_trips() -> None:
    """Encoding then parsing gives back the same event."""
    event = SseEvent(
        data='{"a":1}\nsecond', event="message", id="9", retry=3000, comments=[" c"]
    )
    encoded = encode_event(event)
    assert encoded.endswith(b"\n\n")
    assert parse_all([encoded]) == [event]


def test_sse_encode_event_line_break_in_id_rejected() -> None:
    """A line break in ``id`` would split the event, so encoding refuses it."""
    with pytest.raises(ValueError, match="line break"):
        encode_event(SseEvent(data="x", id="a\nb"))


def json_response(message: Any) -> GatewayResponse:
    return GatewayResponse(
        status=200,
        headers={"content-type": "application/json"},
        body=json.dumps(message).encode(),
    )


def drop_secret_tools(message: dict[str, Any]) -> dict[str, Any] | None:
    result = message.get("result")
    if not isinstance(result, dict) or "tools" not in result:
        return None
    tools = [tool for tool in result["tools"] if tool["name"] != "secret"]
    return {**message, "result": {**result, "tools": tools}}


TOOLS_RESULT = {
    "jsonrpc": "2.0",
    "id": 3,
    "result": {"tools": [{"name": "public"}, {"name": "secret"}]},
}


async def collect(stream: AsyncIterator[bytes] | None) -> bytes:
    assert stream is not None
    return b"".join([chunk async for chunk in stream])


def test_transform_messages_json_body_replaced() -> None:
    """A JSON body is transformed and the rest of the response kept."""

    async def callback(_outcome: Any) -> None:
        return None

    response = json_response(TOOLS_RESULT)
    response.on_close.append(callback)
    response.headers["mcp-protocol-version"] = "2025-06-18"
    transformed = transform_messages(response, drop_secret_tools)
    assert json.loads(transformed.body)["result"]["tools"] == [{"name": "public"}]
    assert transformed.headers["mcp-protocol-version"] == "2025-06-18"
    assert transformed.on_close == [callback]
    assert transformed.status == 200


def test_transform_messages_none_keeps_same_response() -> None:
    """When the transform keeps every message, the original response is returned."""
    response = json_response({"jsonrpc": "2.0", "id": 1, "result": {}})
    assert transform_messages(response, drop_secret_tools) is response
    assert transform_messages(response, lambda message: message) is response


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b""])
def test_transform_messages_non_object_body_unchanged(body: bytes) -> None:
    """Bodies that are not one JSON object pass unchanged."""
    response = GatewayResponse(
        status=200, headers={"content-type": "application/json"}, body=body
    )
    assert transform_messages(response, drop_secret_tools) is response


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for index in range(0, len(data), size):
        yield data[index : index + size]


@pytest.mark.anyio
async def test_transform_messages_sse_each_event_transformed() -> None:
    """Each SSE data message is transformed; non-JSON data and ids pass unchanged."""
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}}
    stream = (
        b"id: 1\nevent: message\ndata: " + json.dumps(progress).encode() + b"\n\n"
        b"data: plain text, not JSON\n\n"
        b"id: 2\ndata: " + json.dumps(TOOLS_RESULT).encode() + b"\n\n"
    )
    response = GatewayResponse(
        status=200,
        headers={"content-type": "text/event-stream"},
        stream=chunks_of(stream, 7),
    )
    transformed = transform_messages(response, drop_secret_tools)
    events = parse_all([await collect(transformed.stream)])
    assert [event.id for event in events] == ["1", None, "2"]
    assert events[0].event == "message"
    assert json.loads(events[0].data or "") == progress
    assert events[1].data == "plain text, not JSON"
    assert json.loads(events[2].data or "")["result"]["tools"] == [{"name": "public"}]


@pytest.mark.anyio
async def test_transform_messages_closing_stream_closes_source() -> None:
    """Closing the transformed stream early closes the stream it reads."""
    closed: list[bool] = []

    async def source() -> AsyncIterator[bytes]:
        try:
            yield b"data: {}\n\n"
            yield b"data: {}\n\n"
        finally:
            closed.append(True)

    response = GatewayResponse(
        status=200, headers={"content-type": "text/event-stream"}, stream=source()
    )
    transformed = transform_messages(response, drop_secret_tools)
    assert transformed.stream is not None
    iterator = transformed.stream.__aiter__()
    await iterator.__anext__()
    await iterator.aclose()  # type: ignore[attr-defined]
    assert closed == [True]


def test_event_stream_checker_bytewise_stops_after_response() -> None:
    """Events split byte by byte come out whole; nothing follows the response."""
    stream = (
        b'data: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n'
        b"data: [1, 2]\n\n"
        b'data: {"jsonrpc":"2.0","id":7,"result":{}}\n\n'
        b'data: {"jsonrpc":"2.0","method":"late"}\n\n'
    )
    checker = EventStreamChecker(answers=7)
    relayed = bytearray()
    dropped: list[str] = []
    for chunk in bytewise(stream):
        checked = checker.feed(chunk)
        relayed += checked.data
        dropped += checked.dropped
    messages = [json.loads(e.data) for e in parse_all([bytes(relayed)]) if e.data]
    assert [m.get("method", m.get("id")) for m in messages] == [
        "notifications/progress",
        7,
    ]
    assert dropped == ["an event whose data is not one JSON-RPC message"]
    assert checker.answered is True
    assert checker.resumable is False


def test_event_stream_checker_get_stream_keeps_responses() -> None:
    """A GET stream, tied to no request, relays every valid message."""
    checker = EventStreamChecker()
    checked = checker.feed(b'id: 4\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\n\n')
    assert checked.data == b'id: 4\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\n\n'
    assert checked.dropped == []
    assert checker.answered is False
    assert checker.resumable is True
