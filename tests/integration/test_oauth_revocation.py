"""``POST /oauth2/revoke`` (RFC 7009) against the gateway and the real dev IdP."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from tests.integration import test_oauth_flow
from tests.integration.test_oauth_flow import Gateway

from gateway.events import TokenRevoked
from gateway.mcp.jsonrpc import decode
from gateway.oauth.revoked_tokens import REVOCATION_MARGIN, is_access_token_revoked

pytestmark = pytest.mark.anyio

# The sign-in servers of the flow tests, started once for this module too.
servers = test_oauth_flow.servers
gateway = test_oauth_flow.gateway


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def signed_in(gateway: Gateway, **register: Any) -> tuple[dict[str, Any], Any]:
    """Register a client, sign it in and return it with its token response."""
    client = await gateway.register("cursor", **register)
    sign_in = await gateway.sign_in(client)
    if client.get("client_secret"):
        response = await gateway.token(
            {
                "grant_type": "authorization_code",
                "code": sign_in.code,
                "redirect_uri": sign_in.redirect_uri.split("?")[0],
                "code_verifier": sign_in.verifier,
            },
            auth=(client["client_id"], client["client_secret"]),
        )
    else:
        response = await gateway.redeem(client, sign_in)
    assert response.status_code == 200, response.text
    return client, response.json()


async def revoke(
    gateway: Gateway, client: dict[str, Any], token: str, **extra: str
) -> httpx.Response:
    return await gateway.browser.post(
        "/oauth2/revoke",
        data={"token": token, "client_id": client["client_id"], **extra},
    )


async def call_backend(gateway: Gateway, access_token: str) -> httpx.Response:
    return await gateway.browser.post(
        "/employees/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"authorization": f"Bearer {access_token}"},
    )


async def test_revoke_refresh_token_ends_grant(gateway: Gateway) -> None:
    """Revoking a refresh token ends its grant and every token of it."""
    client, tokens = await signed_in(gateway)
    assert (await call_backend(gateway, tokens["access_token"])).status_code == 200
    response = await revoke(
        gateway, client, tokens["refresh_token"], token_type_hint="refresh_token"
    )
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["cache-control"] == "no-store"
    refreshed = await gateway.refresh(client, tokens["refresh_token"])
    assert refreshed.json()["error"] == "invalid_grant"
    denied = await call_backend(gateway, tokens["access_token"])
    assert denied.status_code == 401
    assert decode(denied.content)["error"]["data"]["reason"] == "grant_revoked"
    await gateway.settle()
    (event,) = gateway.events_of(TokenRevoked)
    assert event.token_type == "refresh_token"
    assert event.client_id == client["client_id"]
    assert event.user is not None
    assert event.user.sub == "00u_alice"


async def test_revoke_access_token_marked_until_expiry(gateway: Gateway) -> None:
    """Revoking an access token marks its jti; the grant keeps working."""
    client, tokens = await signed_in(gateway)
    _, claims = gateway.runtime.keys.verify(
        tokens["access_token"], algorithms=["ES256"]
    )
    response = await revoke(
        gateway, client, tokens["access_token"], token_type_hint="access_token"
    )
    assert response.status_code == 200
    store = gateway.runtime.store
    assert await is_access_token_revoked(store, claims["jti"])
    refreshed = await gateway.refresh(client, tokens["refresh_token"])
    assert refreshed.status_code == 200
    await gateway.settle()
    (event,) = gateway.events_of(TokenRevoked)
    assert event.token_type == "access_token"
    assert event.token_id == claims["jti"]
    assert claims["exp"] + REVOCATION_MARGIN >= time.time()


async def test_revoke_access_token_without_hint_found(gateway: Gateway) -> None:
    """Without a hint an access token is still recognised and revoked."""
    client, tokens = await signed_in(gateway)
    _, claims = gateway.runtime.keys.verify(
        tokens["access_token"], algorithms=["ES256"]
    )
    assert (await revoke(gateway, client, tokens["access_token"])).status_code == 200
    assert await is_access_token_revoked(gateway.runtime.store, claims["jti"])


@pytest.mark.parametrize("token", ["unknown-token", "a.b.c", "x" * 5000])
async def test_revoke_unknown_token_ok(gateway: Gateway, token: str) -> None:
    """An unknown or malformed token gets 200, as RFC 7009 requires."""
    client = await gateway.register("cursor")
    response = await revoke(gateway, client, token)
    assert response.status_code == 200
    await gateway.settle()
    assert gateway.events_of(TokenRevoked) == []


async def test_revoke_other_client_token_rejected(gateway: Gateway) -> None:
    """A client cannot revoke another client's tokens."""
    owner, tokens = await signed_in(gateway)
    other = await gateway.register("cursor")
    for token in (tokens["refresh_token"], tokens["access_token"]):
        response = await revoke(gateway, other, token)
        assert response.status_code == 400
        assert response.json()["error"] == "unauthorized_client"
    refreshed = await gateway.refresh(owner, tokens["refresh_token"])
    assert refreshed.status_code == 200


async def test_revoke_missing_token_invalid_request(gateway: Gateway) -> None:
    """A request without token is invalid_request."""
    client = await gateway.register("cursor")
    response = await gateway.browser.post(
        "/oauth2/revoke", data={"client_id": client["client_id"]}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_revoke_confidential_client_wrong_secret_invalid_client(
    gateway: Gateway,
) -> None:
    """A confidential client authenticates as at the token endpoint."""
    client, tokens = await signed_in(gateway, method="client_secret_basic")
    wrong = await gateway.browser.post(
        "/oauth2/revoke",
        data={"token": tokens["refresh_token"]},
        auth=(client["client_id"], "wrong"),
    )
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"
    right = await gateway.browser.post(
        "/oauth2/revoke",
        data={"token": tokens["refresh_token"]},
        auth=(client["client_id"], client["client_secret"]),
    )
    assert right.status_code == 200
    refreshed = await gateway.token(
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=(client["client_id"], client["client_secret"]),
    )
    assert refreshed.json()["error"] == "invalid_grant"


async def test_revoked_access_token_rejected_at_mcp_endpoint(gateway: Gateway) -> None:
    """After revocation the same access token gets 401 token_revoked."""
    client, tokens = await signed_in(gateway)
    before = await call_backend(gateway, tokens["access_token"])
    response = await revoke(
        gateway, client, tokens["access_token"], token_type_hint="access_token"
    )
    after = await call_backend(gateway, tokens["access_token"])
    assert before.status_code != 401
    assert response.status_code == 200
    assert after.status_code == 401
    assert decode(after.content)["error"]["data"]["reason"] == "token_revoked"
