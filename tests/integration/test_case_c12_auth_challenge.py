"""Case C12: every 401 carries ``WWW-Authenticate`` with ``resource_metadata``.

Whatever rejects the client's own token, on any method, the response is 401
with a Bearer challenge naming the backend's resource metadata, with
``error="invalid_token"`` only when a token was sent. Discovery and the
OAuth endpoints never ask for a bearer token. A backend's own 401 is not
relayed, because its challenge names the backend's authorization server,
not the gateway's.

The gateway grants one scope, ``mcp``, to every token and has no per-tool
scopes, so the 403 ``insufficient_scope`` challenge has no case to answer
here; refusals of a tool by policy are JSON-RPC errors in HTTP 200.

Covered elsewhere and not repeated here:

- ``tests/e2e/test_gateway_errors.py``:
  ``test_no_token_gets_401_with_resource_metadata``,
  ``test_expired_token_gets_401_invalid_token`` and
  ``test_token_for_other_backend_gets_401``.
- ``test_transport_faults.py``: ``test_transport_faults_anonymous_*``, the
  401 sent before a large anonymous body is read.
- ``test_exchange_stage_devidp.py``:
  ``test_exchange_stage_devidp_backend_401_retried_with_new_token`` and
  ``test_exchange_stage_devidp_backend_401_twice_no_loop``, one new token
  exchange and one retry after a backend 401.
- ``tests/unit/stages/test_authenticate.py``: the other scheme and the
  lower-case ``bearer`` cases.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest
from _case_support import (
    SCRIPTED_SESSION,
    Reply,
    ScriptedRequest,
    answer_of,
    initialize_reply,
    modern_request,
    open_session,
    scripted_stack,
    tools_call,
)
from _transport_harness import MCP_HEADERS, initialize_body

from gateway.demo.runner import DemoStack, run_demo

pytestmark = pytest.mark.anyio

BACKEND_CHALLENGE = (
    'Bearer resource_metadata="http://b1.internal:8080/'
    '.well-known/oauth-protected-resource/mcp"'
)


@pytest.fixture(scope="module")
async def demo(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DemoStack]:
    var_dir = tmp_path_factory.mktemp("demo")
    async with run_demo(ephemeral=True, var_dir=var_dir) as running:
        yield running


def metadata_url(demo: DemoStack, backend: str) -> str:
    path = urlsplit(demo.mcp_url(backend)).path
    return demo.urls["gateway"] + "/.well-known/oauth-protected-resource" + path


def challenge_params(response: httpx.Response) -> dict[str, str]:
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    return dict(re.findall(r'(\w+)="([^"]*)"', challenge))


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
async def test_no_token_401_challenge_without_error(
    demo: DemoStack, method: str
) -> None:
    """Without credentials every method gets the challenge and no error (C12)."""
    url = demo.mcp_url("partners")
    headers = {**MCP_HEADERS, "mcp-session-id": "gw-any"}
    if method == "GET":
        headers["accept"] = "text/event-stream"
    body = msgspec.json.encode(initialize_body()) if method == "POST" else None
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.request(method, url, content=body, headers=headers)
    assert response.status_code == 401
    params = challenge_params(response)
    assert params["resource_metadata"] == metadata_url(demo, "partners")
    assert "error" not in params


@pytest.mark.parametrize(
    "authorization",
    ["Bearer", "Bearer not.a.jwt", "Bearer a b", "Bearer e30.e30.e30"],
)
async def test_unusable_token_401_invalid_token(
    demo: DemoStack, authorization: str
) -> None:
    """Empty, malformed or unsigned bearer tokens get invalid_token (C12)."""
    url = demo.mcp_url("employees")
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(
            url,
            content=msgspec.json.encode(initialize_body(request_id="i-1")),
            headers={**MCP_HEADERS, "authorization": authorization},
        )
    assert response.status_code == 401
    params = challenge_params(response)
    assert params["resource_metadata"] == metadata_url(demo, "employees")
    assert params["error"] == "invalid_token"
    assert response.json()["id"] == "i-1"
    assert "not.a.jwt" not in response.headers["www-authenticate"]


async def test_token_in_query_string_not_accepted(demo: DemoStack) -> None:
    """A token sent in the query string is ignored: 401 without error (C12)."""
    url = demo.mcp_url("employees") + "?access_token=e30.e30.e30"
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(
            url, content=msgspec.json.encode(initialize_body()), headers=MCP_HEADERS
        )
    assert response.status_code == 401
    assert "error" not in challenge_params(response)


async def test_discovery_and_oauth_endpoints_need_no_token(demo: DemoStack) -> None:
    """Discovery, JWKS and registration never answer with a bearer 401 (C12)."""
    base = demo.urls["gateway"]
    async with httpx.AsyncClient(timeout=10.0) as client:
        documents = [
            await client.get(metadata_url(demo, "employees")),
            await client.get(base + "/.well-known/oauth-authorization-server"),
            await client.get(base + "/oauth2/jwks"),
        ]
        registered = await client.post(
            base + "/oauth2/register",
            json={
                "client_name": "cursor",
                "redirect_uris": ["http://127.0.0.1:33418/callback"],
                "token_endpoint_auth_method": "none",
            },
        )
    for response in documents:
        assert response.status_code == 200
    assert registered.status_code == 201
    for response in (*documents, registered):
        assert "resource_metadata" not in response.headers.get("www-authenticate", "")


def challenging_backend() -> object:
    """Script a backend that rejects every call with its own 401 challenge."""

    async def script(request: ScriptedRequest) -> Reply:
        message = request.message
        if message.get("method") == "initialize":
            return initialize_reply(message, SCRIPTED_SESSION)
        if "id" not in message:
            return Reply(202)
        body = b'{"error":"invalid_token"}'
        return Reply(
            401,
            {
                "content-type": "application/json",
                "www-authenticate": BACKEND_CHALLENGE,
            },
            [body],
        )

    return script


async def test_backend_401_challenge_not_relayed() -> None:
    """A backend's 401 and its challenge never reach the client (C12).

    The official SDK server cannot be made to reject the gateway's
    credential after accepting its initialize, so the backend is scripted.
    """
    async with scripted_stack(challenging_backend()) as (gateway, client, _b):
        headers = await open_session(client, gateway.mcp_url)
        called = await client.post(
            gateway.mcp_url, json=tools_call(9, "echo"), headers=headers
        )
        listed = await client.post(
            gateway.mcp_url,
            json={"jsonrpc": "2.0", "id": 10, "method": "resources/list"},
            headers=headers,
        )
    for response in (called, listed):
        assert response.status_code == 200
        assert "www-authenticate" not in response.headers
        assert "b1.internal" not in response.text
    assert answer_of(called)["result"]["isError"] is True
    assert answer_of(listed)["error"]["code"] == -32603


async def test_modern_request_without_token_challenged(demo: DemoStack) -> None:
    """A 2026-07-28 request without a token gets the same challenge (C12)."""
    body, headers = modern_request(1, "tools/list")
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(
            demo.mcp_url("employees"),
            content=msgspec.json.encode(body),
            headers=headers,
        )
    assert response.status_code == 401
    params = challenge_params(response)
    assert params["resource_metadata"] == metadata_url(demo, "employees")
    assert "error" not in params
