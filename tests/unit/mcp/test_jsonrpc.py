"""Parsing and checking JSON-RPC messages: hostile nesting and message kinds."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway.mcp.jsonrpc import (
    MAX_DEPTH,
    PARSE_ERROR,
    JsonRpcError,
    decode,
    message_kind,
    parse_message,
    read_response_envelope,
    same_id,
)

DEPTH = 5000


def nested(prefix: bytes, suffix: bytes) -> bytes:
    return prefix + b"[" * DEPTH + b"]" * DEPTH + suffix


@pytest.mark.parametrize(
    "body",
    [
        b"[" * DEPTH,
        nested(b"", b""),
        nested(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"a":', b"}}"),
    ],
    ids=["unclosed", "closed", "in-params"],
)
def test_parse_message_deep_nesting_parse_error(body: bytes) -> None:
    """JSON nested past the parser's depth is a -32700 error, not RecursionError."""
    with pytest.raises(JsonRpcError) as raised:
        parse_message(body)
    assert raised.value.code == PARSE_ERROR
    assert raised.value.id is None


def nested_params(depth: int) -> bytes:
    """Return a request whose nesting, the envelope included, is ``depth`` levels."""
    inner = depth - 2
    prefix = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"a":'
    return prefix + b"[" * inner + b"]" * inner + b"}}"


def test_parse_message_max_depth_accepted() -> None:
    """A message nested exactly MAX_DEPTH levels is accepted."""
    message = parse_message(nested_params(MAX_DEPTH))
    assert message.method == "tools/call"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 980])
def test_parse_message_past_max_depth_parse_error(depth: int) -> None:
    """One level past MAX_DEPTH is -32700, however deep the caller's stack is."""
    with pytest.raises(JsonRpcError) as raised:
        parse_message(nested_params(depth))
    assert raised.value.code == PARSE_ERROR
    assert str(MAX_DEPTH) in str(raised.value)


def test_parse_message_many_shallow_containers_accepted() -> None:
    """Many containers that are not deep pass the depth walk."""
    items = [{"k": index, "v": [index]} for index in range(1000)]
    body = msgspec.json.encode(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"a": items}}
    )
    assert parse_message(body).params["a"] == items


def test_parse_message_number_out_of_range_parse_error() -> None:
    """A number too large for a float is invalid JSON to the gateway."""
    with pytest.raises(JsonRpcError) as raised:
        parse_message(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":1e400}}')
    assert raised.value.code == PARSE_ERROR


def test_decode_deep_nesting_decode_error() -> None:
    """decode() turns a RecursionError into msgspec.DecodeError."""
    with pytest.raises(msgspec.DecodeError):
        decode(nested(b"", b""))


def test_read_response_envelope_deep_nesting_none() -> None:
    """A response nested past the parser's depth is not a response."""
    body = nested(b'{"jsonrpc":"2.0","id":1,"result":', b"}")
    assert read_response_envelope(body) is None


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ({"jsonrpc": "2.0", "id": 1, "method": "ping"}, "request"),
        ({"jsonrpc": "2.0", "method": "notifications/progress"}, "notification"),
        ({"jsonrpc": "2.0", "id": "a", "result": {}}, "response"),
        ({"jsonrpc": "2.0", "id": None, "error": {"code": 1}}, "response"),
        ({"jsonrpc": "2.0", "id": 1.5, "method": "ping"}, None),
        ({"jsonrpc": "2.0", "id": True, "result": {}}, None),
        ({"jsonrpc": "1.0", "id": 1, "result": {}}, None),
        ({"jsonrpc": "2.0", "id": 1}, None),
        ({"jsonrpc": "2.0", "method": 5}, None),
        ([{"jsonrpc": "2.0", "method": "ping"}], None),
        ("text", None),
    ],
)
def test_message_kind_cases(message: Any, kind: str | None) -> None:
    """Only well-formed JSON-RPC 2.0 messages get a kind."""
    assert message_kind(message) == kind


def test_same_id_compares_json_types() -> None:
    """1 and "1" are different ids, and so are 1 and true."""
    assert same_id(1, 1)
    assert same_id("a", "a")
    assert not same_id(1, "1")
    assert not same_id(1, True)
