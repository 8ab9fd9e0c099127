"""Which browser origins may call the gateway."""

from __future__ import annotations

import pytest

from gateway.oauth.cors import cors_headers, is_origin_allowed, preflight_headers

PUBLIC = "https://gw.example.com"


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:6274",
        "http://127.0.0.1:3000",
        "http://[::1]:8080",
        "https://localhost",
        "https://gw.example.com",
        "https://inspector.example.com",
        "HTTPS://Inspector.Example.com",
    ],
)
def test_is_origin_allowed_known_origin_true(origin: str) -> None:
    """Loopback origins, the gateway's own origin and listed origins are allowed."""
    assert is_origin_allowed(
        origin, allowed_origins=["https://inspector.example.com/"], public_url=PUBLIC
    )


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example.com",
        "null",
        "http://localhost.evil.example",
        "https://gw.example.com.evil.example",
        "http://127.0.0.1:3000/path",
        "file://",
        "http://localhost:99999",
    ],
)
def test_is_origin_allowed_other_origin_false(origin: str) -> None:
    """Every other origin is refused."""
    assert not is_origin_allowed(
        origin, allowed_origins=["https://inspector.example.com"], public_url=PUBLIC
    )


def test_cors_headers_echo_origin() -> None:
    """The allowed origin is echoed, never '*', with Vary: Origin."""
    headers = cors_headers("http://localhost:6274", expose=["WWW-Authenticate"])
    assert headers["access-control-allow-origin"] == "http://localhost:6274"
    assert headers["vary"] == "Origin"
    assert headers["access-control-expose-headers"] == "WWW-Authenticate"


def test_preflight_headers_list_mcp_protocol_version() -> None:
    """Preflights allow the MCP-Protocol-Version header that SDKs send on discovery."""
    headers = preflight_headers("http://localhost:6274")
    assert "mcp-protocol-version" in headers["access-control-allow-headers"]
    assert "authorization" in headers["access-control-allow-headers"]
    assert headers["access-control-allow-methods"] == "GET, POST, OPTIONS"
