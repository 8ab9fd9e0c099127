"""Header decoding, Accept matching and the MCP CORS lists."""

from __future__ import annotations

import pytest

from gateway.mcp.cors import OriginPolicy, preflight_headers, response_headers
from gateway.mcp.headers import accepts, encode_headers, read_headers


def test_read_headers_names_lowered_and_repeats_joined() -> None:
    """Names become lower-case, repeated headers join with a comma."""
    headers, size = read_headers(
        [(b"Accept", b"application/json"), (b"accept", b"text/event-stream")]
    )
    assert headers == {"accept": "application/json, text/event-stream"}
    assert size == len("Accept: application/json\r\n") + len(
        "accept: text/event-stream\r\n"
    )


def test_read_headers_non_ascii_bytes_decoded() -> None:
    """Bytes outside ASCII decode as Latin-1 instead of failing."""
    headers, _ = read_headers([(b"x-name", "é".encode())])
    assert headers["x-name"] == "Ã©"


def test_encode_headers_latin1_pairs() -> None:
    """Response headers become ASGI byte pairs."""
    assert encode_headers({"x-a": "1"}) == [(b"x-a", b"1")]


@pytest.mark.parametrize(
    ("accept", "media_type", "expected"),
    [
        (None, "application/json", True),
        ("application/json, text/event-stream", "text/event-stream", True),
        ("*/*", "text/event-stream", True),
        ("text/*", "text/event-stream", True),
        ("application/json", "text/event-stream", False),
        ("APPLICATION/JSON; charset=utf-8", "application/json", True),
        ("text/event-stream;q=0, */*", "text/event-stream", False),
        ("text/event-stream;q=0.5", "text/event-stream", True),
        ("*/*;q=0", "application/json", False),
        ("", "application/json", False),
    ],
)
def test_accepts_media_ranges(
    accept: str | None, media_type: str, expected: bool
) -> None:
    """The most specific media range decides, and q=0 excludes."""
    assert accepts(accept, media_type) is expected


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),
        ("http://localhost:6274", True),
        ("http://127.0.0.1:3000", True),
        ("http://[::1]:8080", True),
        ("https://inspector.example.test", True),
        ("http://gateway.example.test:8000", True),
        ("https://evil.example.test", False),
        ("null", False),
        ("http://localhost.evil.test", False),
        ("file://", False),
    ],
)
def test_origin_policy_loopback_configured_and_public(
    origin: str | None, allowed: bool
) -> None:
    """Loopback, configured and the gateway's own origins pass; others fail."""
    policy = OriginPolicy(
        ["https://inspector.example.test"], "http://gateway.example.test:8000"
    )
    assert policy.allows(origin) is allowed


def test_preflight_headers_list_mcp_request_headers() -> None:
    """The preflight allows every header MCP clients send."""
    headers = preflight_headers("http://localhost:6274")
    allowed = {
        name.strip() for name in headers["access-control-allow-headers"].split(",")
    }
    expected = {
        "authorization",
        "content-type",
        "accept",
        "mcp-protocol-version",
        "mcp-session-id",
        "last-event-id",
        "mcp-method",
        "mcp-name",
        "x-mcp-agent",
        "traceparent",
        "tracestate",
    }
    assert expected <= allowed
    assert headers["access-control-allow-origin"] == "http://localhost:6274"
    assert headers["access-control-allow-methods"] == "GET, POST, DELETE, OPTIONS"
    assert int(headers["access-control-max-age"]) > 0
    assert headers["vary"] == "Origin"


def test_response_headers_expose_session_and_challenge() -> None:
    """Real responses expose the session id, the challenge and the version."""
    headers = response_headers("http://localhost:6274")
    exposed = headers["access-control-expose-headers"]
    assert exposed == "Mcp-Session-Id, WWW-Authenticate, Mcp-Protocol-Version"
    assert headers["access-control-allow-origin"] == "http://localhost:6274"
