"""The exchange stage publishes ``GrantRevoked`` for every grant it ends.

The gateway, the dev IdP and both demo backends run on loopback. A grant
ends in the exchange stage when only a new sign-in helps: the IdP rejects the
upstream refresh token or the user's ID token, or the ID token expired with
no refresh token. The tests move a grant's ID token expiry, or damage its
stored ID token, in the gateway's own store to reach those cases at once.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import pytest
from _grant_support import GrantStack, grant_stack, initialize, sign_in

from gateway.events import GrantRevoked
from gateway.mcp.jsonrpc import decode
from gateway.oauth.grants import Grant

pytestmark = pytest.mark.anyio


async def grant_of(stack: GrantStack, access_token: str) -> Grant:
    _, claims = stack.runtime.keys.verify(access_token, algorithms=["ES256"])
    grant = await stack.runtime.grants.get(claims["grant_id"])
    assert grant is not None
    return grant


async def test_exchange_refresh_rejected_grant_revoked_event(tmp_path: Path) -> None:
    """An upstream refresh the IdP rejects before an exchange is announced."""
    async with grant_stack(tmp_path) as stack:
        _, tokens = await sign_in(stack.front)
        grant = await grant_of(stack, tokens["access_token"])
        grant.id_token_expires_at = int(time.time()) + 10
        await stack.runtime.grants.save(grant)
        assert stack.org.end_sessions("alice") == 1
        response = await initialize(stack.front, tokens["access_token"])
        revoked = await stack.events_of(GrantRevoked)

    assert response.status_code == 401
    assert decode(response.content)["error"]["data"]["reason"] == (
        "reauthentication_required"
    )
    (event,) = revoked
    assert event.reason == "upstream_session_ended"
    assert event.stage == "exchange"
    assert event.outcome == "denied"
    assert event.oauth_error == "invalid_grant"
    assert event.grant_id == grant.grant_id
    assert event.client_id == grant.client_id
    assert event.backend == "employees"
    assert event.agent is not None and event.agent.id == grant.agent_id


async def test_exchange_id_token_rejected_grant_revoked_event(tmp_path: Path) -> None:
    """An ID token the IdP rejects at the token exchange is announced."""
    async with grant_stack(tmp_path) as stack:
        _, tokens = await sign_in(stack.front)
        grant = await grant_of(stack, tokens["access_token"])
        head, payload, signature = grant.upstream_id_token.split(".")
        grant.upstream_id_token = f"{head}.{payload}.{signature[::-1]}"
        await stack.runtime.grants.save(grant)
        response = await initialize(stack.front, tokens["access_token"])
        revoked = await stack.events_of(GrantRevoked)

    assert response.status_code == 401
    (event,) = revoked
    assert event.reason == "id_token_rejected"
    assert event.stage == "exchange"
    assert event.oauth_error == "invalid_grant"
    assert event.grant_id == grant.grant_id


async def test_exchange_id_token_expired_grant_revoked_event(tmp_path: Path) -> None:
    """An expiring ID token without a refresh token is announced."""
    async with grant_stack(tmp_path) as stack:
        _, tokens = await sign_in(stack.front)
        grant = await grant_of(stack, tokens["access_token"])
        grant.upstream_refresh_token = None
        grant.id_token_expires_at = int(time.time()) + 10
        await stack.runtime.grants.save(grant)
        response = await initialize(stack.front, tokens["access_token"])
        revoked = await stack.events_of(GrantRevoked)

    assert response.status_code == 401
    (event,) = revoked
    assert event.reason == "id_token_expired"
    assert event.stage == "exchange"
    assert event.grant_id == grant.grant_id


async def test_exchange_concurrent_failures_one_grant_revoked(tmp_path: Path) -> None:
    """Concurrent requests failing on one ended grant publish one event."""
    async with grant_stack(tmp_path) as stack:
        _, tokens = await sign_in(stack.front)
        grant = await grant_of(stack, tokens["access_token"])
        grant.id_token_expires_at = int(time.time()) + 10
        await stack.runtime.grants.save(grant)
        assert stack.org.end_sessions("alice") == 1
        responses: list[httpx.Response] = []

        async def send() -> None:
            responses.append(await initialize(stack.front, tokens["access_token"]))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(send)
        revoked = await stack.events_of(GrantRevoked)

    assert [response.status_code for response in responses] == [401] * 8
    (event,) = revoked
    assert event.reason == "upstream_session_ended"
