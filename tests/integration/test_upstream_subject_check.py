"""An upstream refresh must return an ID token for the grant's own user.

OpenID Connect Core 1.0 section 12.2 requires a refreshed ID token to have
the same ``iss`` and ``sub`` as the one it replaces. The gateway, the dev IdP
and both demo backends run on loopback. The dev IdP's ``refresh_subject``
fault (:class:`~gateway.devidp.faults.SubjectSwap`) makes it issue refreshed
ID tokens for another user, as a broken or compromised IdP might.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from _grant_support import GrantStack, grant_stack, initialize, sign_in

from gateway.devidp.faults import SubjectSwap
from gateway.events import ExchangeFailed, GrantRevoked, TokenRequestFailed
from gateway.mcp.jsonrpc import decode

pytestmark = pytest.mark.anyio


async def expire_id_token_soon(stack: GrantStack, access_token: str) -> str:
    """Make the grant's ID token due for refresh before the next exchange."""
    _, claims = stack.runtime.keys.verify(access_token, algorithms=["ES256"])
    grant = await stack.runtime.grants.get(claims["grant_id"])
    assert grant is not None
    grant.id_token_expires_at = int(time.time()) + 10
    assert await stack.runtime.grants.save(grant)
    return grant.grant_id


async def test_recheck_other_subject_grant_revoked(tmp_path: Path) -> None:
    """A re-check refresh that names another user revokes the grant."""
    async with grant_stack(tmp_path, recheck_after=0) as stack:
        client, tokens = await sign_in(stack.front)
        stack.org.refresh_subject = SubjectSwap("bob")
        refreshed = await stack.front.refresh(client, tokens["refresh_token"])
        after = await initialize(stack.front, tokens["access_token"])
        revoked = await stack.events_of(GrantRevoked)
        failed = await stack.events_of(TokenRequestFailed)

    assert refreshed.status_code == 400
    assert refreshed.json()["error"] == "invalid_grant"
    assert "another user" in refreshed.json()["error_description"]
    assert after.status_code == 401
    assert decode(after.content)["error"]["data"]["reason"] == "grant_revoked"
    (event,) = revoked
    assert event.reason == "upstream_subject_changed"
    assert event.stage == "oauth.token"
    assert event.oauth_error == "invalid_grant"
    assert event.user is not None and event.user.sub == "00u_alice"
    (failure,) = failed
    assert failure.reason == "upstream_subject_changed"
    assert failure.oauth_error == "invalid_grant"


async def test_exchange_refresh_other_subject_401(tmp_path: Path) -> None:
    """The refresh before an exchange that names another user gets 401."""
    async with grant_stack(tmp_path) as stack:
        _, tokens = await sign_in(stack.front)
        grant_id = await expire_id_token_soon(stack, tokens["access_token"])
        stack.org.refresh_subject = SubjectSwap("bob")
        response = await initialize(stack.front, tokens["access_token"])
        again = await initialize(stack.front, tokens["access_token"])
        revoked = await stack.events_of(GrantRevoked)
        failed = await stack.events_of(ExchangeFailed)
        grant = await stack.runtime.grants.get(grant_id)

    assert response.status_code == 401
    assert "resource_metadata=" in response.headers["www-authenticate"]
    error = decode(response.content)["error"]
    assert error["data"]["reason"] == "reauthentication_required"
    assert error["data"]["step"] == "upstream_refresh"
    assert again.status_code == 401
    assert decode(again.content)["error"]["data"]["reason"] == "grant_revoked"
    assert grant is None
    (event,) = revoked
    assert event.reason == "upstream_subject_changed"
    assert event.stage == "exchange"
    assert event.grant_id == grant_id
    assert event.user is not None and event.user.sub == "00u_alice"
    (failure,) = failed
    assert failure.reason == "reauthentication_required"
    assert "another user" in failure.detail


async def test_exchange_refresh_same_subject_kept(tmp_path: Path) -> None:
    """A refresh for the same user keeps the grant and the exchange succeeds."""
    async with grant_stack(tmp_path) as stack:
        _, tokens = await sign_in(stack.front)
        grant_id = await expire_id_token_soon(stack, tokens["access_token"])
        before = await stack.runtime.grants.get(grant_id)
        response = await initialize(stack.front, tokens["access_token"])
        after = await stack.runtime.grants.get(grant_id)
        revoked = await stack.events_of(GrantRevoked)

    assert response.status_code == 200, response.text
    assert before is not None
    assert after is not None
    assert after.upstream_id_token != before.upstream_id_token
    assert revoked == []
