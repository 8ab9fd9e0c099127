"""Case C22: browser clients get working CORS, foreign origins get 403.

On the assembled demo gateway, whose chain authenticates: a preflight from
an allowed origin (the MCP Inspector's ``http://localhost:6274``) gets 204
without any token and lists every MCP request header of both protocol eras.
Real responses, errors included, echo the origin and expose
``Mcp-Session-Id`` and ``WWW-Authenticate``. A foreign origin gets 403 with
no CORS headers on every method.

The OAuth endpoints process a real request from a foreign origin as usual
but send no CORS headers, so the browser withholds the response. They
reject its preflight with 403 (``test_preflight_foreign_origin_forbidden``).

Covered elsewhere and not repeated here:

- ``test_transport_http.py``: ``test_transport_http_foreign_origin_403``
  (POST and OPTIONS), ``test_transport_http_preflight_answered_without_auth``
  and ``test_transport_http_cors_on_every_real_response`` (200 and 400),
  with a chain that does not authenticate.
- ``test_oauth_endpoints.py``: ``test_preflight_allowed_origin_answered``,
  ``test_preflight_foreign_origin_forbidden``,
  ``test_cors_actual_response_origin_echoed`` and
  ``test_cors_error_response_origin_echoed``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from _case_support import bearer, sign_in
from _transport_harness import MCP_HEADERS, initialize_body

from gateway.demo.runner import DemoStack, run_demo

pytestmark = pytest.mark.anyio

INSPECTOR = "http://localhost:6274"
EVIL = "https://evil.example.test"
PREFLIGHT_HEADERS = (
    "authorization, content-type, mcp-protocol-version, mcp-session-id, last-event-id"
)


@pytest.fixture(scope="module")
async def demo(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DemoStack]:
    var_dir = tmp_path_factory.mktemp("demo")
    async with run_demo(ephemeral=True, var_dir=var_dir) as running:
        yield running


@pytest.fixture(scope="module")
async def token(demo: DemoStack) -> str:
    storage = await sign_in(demo, "partners", client_name="cursor")
    assert storage.tokens is not None
    return storage.tokens.access_token


def listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",")}


def assert_cors(response: httpx.Response) -> None:
    assert response.headers["access-control-allow-origin"] == INSPECTOR
    assert "origin" in listed(response.headers["vary"])
    exposed = listed(response.headers["access-control-expose-headers"])
    assert {"mcp-session-id", "www-authenticate"} <= exposed


@pytest.mark.parametrize("backend", ["employees", "partners"])
async def test_preflight_lists_headers_of_both_eras(
    demo: DemoStack, backend: str
) -> None:
    """The preflight gets 204 with every MCP header and no token (C22)."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.options(
            demo.mcp_url(backend),
            headers={
                "origin": INSPECTOR,
                "access-control-request-method": "POST",
                "access-control-request-headers": PREFLIGHT_HEADERS,
            },
        )
    assert response.status_code == 204
    assert "www-authenticate" not in response.headers
    assert response.headers["access-control-allow-origin"] == INSPECTOR
    methods = listed(response.headers["access-control-allow-methods"])
    assert methods == {"get", "post", "delete", "options"}
    allowed = listed(response.headers["access-control-allow-headers"])
    assert {
        "authorization",
        "content-type",
        "accept",
        "mcp-protocol-version",
        "mcp-session-id",
        "last-event-id",
        "mcp-method",
        "mcp-name",
    } <= allowed
    assert int(response.headers["access-control-max-age"]) > 0
    assert "origin" in listed(response.headers["vary"])


async def test_error_responses_carry_cors_headers(demo: DemoStack, token: str) -> None:
    """401, 403, 404 and 400 responses are readable by the browser client (C22)."""
    url = demo.mcp_url("partners")
    body = msgspec.json.encode(initialize_body())
    listing = msgspec.json.encode({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    origin = {"origin": INSPECTOR}
    async with httpx.AsyncClient(timeout=10.0) as client:
        unauthorized = await client.post(
            url, content=body, headers={**MCP_HEADERS, **origin}
        )
        conflict = await client.post(
            url, content=body, headers=bearer(token, **origin, **{"x-mcp-agent": "x"})
        )
        unknown = await client.post(
            url,
            content=listing,
            headers=bearer(token, **origin, **{"mcp-session-id": "gw-unknown"}),
        )
        missing = await client.post(
            url, content=listing, headers=bearer(token, **origin)
        )
    assert unauthorized.status_code == 401
    assert conflict.status_code == 403
    assert unknown.status_code == 404
    assert missing.status_code == 400
    for response in (unauthorized, conflict, unknown, missing):
        assert_cors(response)


async def test_session_responses_carry_cors_headers(
    demo: DemoStack, token: str
) -> None:
    """initialize, a streamed call and DELETE expose the session id (C22)."""
    url = demo.mcp_url("partners")
    origin = {"origin": INSPECTOR}
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {
            "name": "partner_status",
            "arguments": {"partner_id": "P-100"},
            "_meta": {"progressToken": 2},
        },
    }
    async with httpx.AsyncClient(timeout=10.0) as client:
        opened = await client.post(
            url,
            content=msgspec.json.encode(initialize_body()),
            headers=bearer(token, **origin),
        )
        session = {
            "mcp-session-id": opened.headers["mcp-session-id"],
            "mcp-protocol-version": "2025-06-18",
            **origin,
        }
        streamed = await client.post(
            url, content=msgspec.json.encode(call), headers=bearer(token, **session)
        )
        deleted = await client.delete(url, headers=bearer(token, **session))
    assert opened.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert deleted.status_code == 204
    for response in (opened, streamed, deleted):
        assert_cors(response)


@pytest.mark.parametrize("origin", [EVIL, "null", "http://localhost.evil.example"])
@pytest.mark.parametrize("method", ["POST", "GET", "DELETE", "OPTIONS"])
async def test_foreign_origin_403_every_method(
    demo: DemoStack, token: str, origin: str, method: str
) -> None:
    """A foreign origin gets 403 without CORS headers, token or not (C22)."""
    headers = bearer(token, origin=origin)
    if method == "GET":
        headers["accept"] = "text/event-stream"
    if method == "OPTIONS":
        headers["access-control-request-method"] = "POST"
    body = msgspec.json.encode(initialize_body()) if method == "POST" else None
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.request(
            method, demo.mcp_url("employees"), content=body, headers=headers
        )
    assert response.status_code == 403
    assert not any(name.startswith("access-control-") for name in response.headers)


async def test_oauth_endpoints_answer_browser_client(demo: DemoStack) -> None:
    """Discovery and registration are readable by the browser client (C22)."""
    base = demo.urls["gateway"]
    origin = {"origin": INSPECTOR}
    async with httpx.AsyncClient(timeout=10.0) as client:
        prm = await client.get(
            base + "/.well-known/oauth-protected-resource/partners/mcp", headers=origin
        )
        registered = await client.post(
            base + "/oauth2/register",
            json={
                "client_name": "MCP Inspector",
                "redirect_uris": [f"{INSPECTOR}/oauth/callback"],
                "token_endpoint_auth_method": "none",
            },
            headers=origin,
        )
        token_error = await client.post(
            base + "/oauth2/token",
            data={"grant_type": "authorization_code", "code": "x", "client_id": "x"},
            headers=origin,
        )
    assert prm.status_code == 200
    assert registered.status_code == 201
    assert token_error.status_code in (400, 401)
    for response in (prm, registered, token_error):
        assert response.headers["access-control-allow-origin"] == INSPECTOR
