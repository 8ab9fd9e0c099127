"""Bad requests against the running demo get the spec's status, never a 500."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from gateway.demo.driver import MemoryTokenStorage, run_client
from gateway.demo.runner import DemoStack, run_demo

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "probe", "version": "0"},
    },
}
HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
}


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[DemoStack]:
    async with run_demo(ephemeral=True, var_dir=tmp_path) as running:
        yield running


async def sign_in(stack: DemoStack, backend: str) -> str:
    storage = MemoryTokenStorage()
    await run_client(
        stack.mcp_url(backend), client_name="cursor", calls=[], storage=storage
    )
    assert storage.tokens is not None
    return storage.tokens.access_token


async def post(
    url: str, body: bytes, token: str | None = None, **headers: str
) -> httpx.Response:
    all_headers = dict(HEADERS)
    if token:
        all_headers["authorization"] = f"Bearer {token}"
    all_headers.update({k.replace("_", "-"): v for k, v in headers.items()})
    async with httpx.AsyncClient() as client:
        return await client.post(url, content=body, headers=all_headers)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["jsonrpc"] == "2.0"
    return body


async def test_no_token_gets_401_with_resource_metadata(stack: DemoStack) -> None:
    """A request without a token gets 401 pointing at the PRM document."""
    url = stack.mcp_url("employees")
    response = await post(url, msgspec.json.encode(INIT))
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    expected = (
        f'resource_metadata="{stack.urls["gateway"]}'
        '/.well-known/oauth-protected-resource/employees/mcp"'
    )
    assert challenge.startswith("Bearer ")
    assert expected in challenge
    assert "error=" not in challenge


async def test_expired_token_gets_401_invalid_token(stack: DemoStack) -> None:
    """A correctly signed but expired token is rejected with invalid_token."""
    runtime = stack.gateway.runtime
    now = int(time.time())
    token = runtime.keys.sign(
        {
            "iss": runtime.issuer,
            "aud": runtime.resource_for("employees"),
            "sub": "00u_alice",
            "client_id": "c",
            "jti": "expired-1",
            "grant_id": "g",
            "iat": now - 3600,
            "nbf": now - 3600,
            "exp": now - 600,
        }
    )
    response = await post(stack.mcp_url("employees"), msgspec.json.encode(INIT), token)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert "resource_metadata=" in response.headers["www-authenticate"]


async def test_token_for_other_backend_gets_401(stack: DemoStack) -> None:
    """A token issued for /partners/mcp is rejected on /employees/mcp."""
    token = await sign_in(stack, "partners")
    response = await post(stack.mcp_url("employees"), msgspec.json.encode(INIT), token)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    ok = await post(stack.mcp_url("partners"), msgspec.json.encode(INIT), token)
    assert ok.status_code == 200


async def test_malformed_json_gets_400_parse_error(stack: DemoStack) -> None:
    """Truncated JSON gets 400 with JSON-RPC -32700 and a null id."""
    token = await sign_in(stack, "partners")
    response = await post(stack.mcp_url("partners"), b'{"jsonrpc":"2.0","id":4', token)
    assert response.status_code == 400
    body = error_of(response)
    assert body["error"]["code"] == -32700
    assert body["id"] is None


async def test_batch_array_gets_400_invalid_request(stack: DemoStack) -> None:
    """A JSON-RPC batch gets 400 with -32600: MCP removed batching."""
    token = await sign_in(stack, "partners")
    batch = msgspec.json.encode([INIT, {**INIT, "id": 2}])
    response = await post(stack.mcp_url("partners"), batch, token)
    assert response.status_code == 400
    assert error_of(response)["error"]["code"] == -32600


async def test_unknown_session_gets_404(stack: DemoStack) -> None:
    """A session id the gateway never issued gets 404 with the request id."""
    token = await sign_in(stack, "partners")
    body = msgspec.json.encode({"jsonrpc": "2.0", "id": 7, "method": "tools/list"})
    response = await post(
        stack.mcp_url("partners"),
        body,
        token,
        mcp_session_id="never-issued-session",
        mcp_protocol_version="2025-11-25",
    )
    assert response.status_code == 404
    assert error_of(response)["id"] == 7


async def test_no_error_case_is_a_server_error(stack: DemoStack) -> None:
    """None of the bad inputs above produce a 5xx."""
    token = await sign_in(stack, "partners")
    url = stack.mcp_url("partners")
    bodies = [b"", b"null", b'"hello"', b"42", b"[]", b'{"jsonrpc":"2.0","id":3}']
    for body in bodies:
        response = await post(url, body, token)
        assert response.status_code == 400, body
