"""A gateway grant lives no longer than the user's session at the upstream IdP.

The gateway, the dev IdP and both demo backends run on loopback. The dev IdP
ends a user's sessions (``end_sessions``) or fails its token endpoint
(:class:`~gateway.devidp.faults.TokenOutage`) on request.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from _grant_support import grant_stack, initialize, sign_in

from gateway.devidp.faults import TokenOutage
from gateway.events import ExchangeFailed, GrantRevoked, TokenRequestFailed
from gateway.mcp.jsonrpc import decode
from gateway.oauth.transactions import FlowState

pytestmark = pytest.mark.anyio

REFRESH_ONLY = frozenset({"refresh_token"})


async def test_recheck_upstream_session_ended_grant_revoked(tmp_path: Path) -> None:
    """An ended upstream session fails the next refresh and ends the access token."""
    async with grant_stack(tmp_path, recheck_after=0) as stack:
        client, tokens = await sign_in(stack.front)
        before = await initialize(stack.front, tokens["access_token"])
        assert stack.org.end_sessions("alice") == 1

        refreshed = await stack.front.refresh(client, tokens["refresh_token"])
        after = await initialize(stack.front, tokens["access_token"])
        again = await stack.front.refresh(client, tokens["refresh_token"])
        revoked = await stack.events_of(GrantRevoked)
        failed = await stack.events_of(TokenRequestFailed)

    assert before.status_code == 200, before.text
    assert refreshed.status_code == 400
    assert refreshed.json()["error"] == "invalid_grant"
    assert after.status_code == 401
    assert "resource_metadata=" in after.headers["www-authenticate"]
    assert decode(after.content)["error"]["data"]["reason"] == "grant_revoked"
    assert again.json()["error"] == "invalid_grant"
    (event,) = revoked
    assert event.reason == "upstream_session_ended"
    assert event.oauth_error == "invalid_grant"
    assert event.client_id == client["client_id"]
    assert event.user is not None and event.user.sub == "00u_alice"
    assert failed[0].oauth_error == "invalid_grant"
    assert failed[0].upstream_oauth_error == "invalid_grant"
    assert failed[0].reason == "upstream_session_ended"


@pytest.mark.parametrize(
    ("outage", "retry_after", "upstream_error"),
    [
        (TokenOutage(status=503, retry_after="7"), "7", "temporarily_unavailable"),
        (TokenOutage(status=502, error=None), "30", None),
    ],
)
async def test_recheck_idp_outage_503_grant_kept(
    tmp_path: Path, outage: TokenOutage, retry_after: str, upstream_error: str | None
) -> None:
    """An IdP 5xx at the re-check is a 503 with Retry-After; the grant survives it."""
    async with grant_stack(tmp_path, recheck_after=0) as stack:
        client, tokens = await sign_in(stack.front)
        stack.org.token_outage = refresh_only(outage)
        failed_refresh = await stack.front.refresh(client, tokens["refresh_token"])
        during = await initialize(stack.front, tokens["access_token"])
        stack.org.token_outage = None
        recovered = await stack.front.refresh(client, tokens["refresh_token"])
        failed = await stack.events_of(TokenRequestFailed)
        revoked = await stack.events_of(GrantRevoked)
        after = await initialize(stack.front, recovered.json()["access_token"])

    assert failed_refresh.status_code == 503
    assert failed_refresh.json()["error"] == "temporarily_unavailable"
    assert failed_refresh.headers["retry-after"] == retry_after
    assert during.status_code == 200, during.text
    assert recovered.status_code == 200, recovered.text
    assert after.status_code == 200, after.text
    (event,) = failed
    assert event.oauth_error == "temporarily_unavailable"
    assert event.upstream_oauth_error == upstream_error
    assert event.reason == "idp_unavailable"
    assert event.outcome == "error"
    assert revoked == []


def refresh_only(outage: TokenOutage) -> TokenOutage:
    """Return the outage limited to the refresh_token grant."""
    return TokenOutage(
        status=outage.status,
        error=outage.error,
        retry_after=outage.retry_after,
        grant_types=REFRESH_ONLY,
    )


async def test_recheck_within_window_skips_idp(tmp_path: Path) -> None:
    """Within recheck_after the IdP is not asked; after it, the IdP is asked."""
    async with grant_stack(tmp_path, recheck_after=300) as stack:
        client, tokens = await sign_in(stack.front)
        grants = stack.runtime.grants
        _, claims = stack.runtime.keys.verify(
            tokens["access_token"], algorithms=["ES256"]
        )
        grant_id = claims["grant_id"]
        signed_in = await grants.get(grant_id)
        assert signed_in is not None
        # Any call to the IdP's token endpoint would fail from here on.
        stack.org.token_outage = TokenOutage(grant_types=REFRESH_ONLY)

        within = await stack.front.refresh(client, tokens["refresh_token"])
        assert within.status_code == 200, within.text
        unchecked = await grants.get(grant_id)
        assert unchecked is not None
        unchecked.upstream_checked_at = int(time.time()) - 301
        await grants.save(unchecked)
        due = await stack.front.refresh(client, within.json()["refresh_token"])
        stack.org.token_outage = None
        checked = await stack.front.refresh(client, within.json()["refresh_token"])
        rechecked = await grants.get(grant_id)

    assert unchecked.upstream_refresh_token == signed_in.upstream_refresh_token
    assert signed_in.upstream_checked_at is None
    assert due.status_code == 503
    assert checked.status_code == 200, checked.text
    assert rechecked is not None
    assert rechecked.upstream_checked_at is not None
    assert rechecked.upstream_checked_at >= int(time.time()) - 5
    assert rechecked.upstream_refresh_token != signed_in.upstream_refresh_token
    assert rechecked.upstream_id_token != signed_in.upstream_id_token


async def test_grant_without_upstream_refresh_ends_at_exp(
    tmp_path: Path,
) -> None:
    """Without offline_access the grant and its tokens end when the ID token does."""
    async with grant_stack(
        tmp_path, id_token_ttl=2, scopes=["openid", "profile", "email"]
    ) as stack:
        client, tokens = await sign_in(stack.front, backend="partners")
        _, claims = stack.runtime.keys.verify(
            tokens["access_token"], algorithms=["ES256"]
        )
        grant = await stack.runtime.grants.get(claims["grant_id"])
        assert grant is not None
        record = await FlowState(stack.runtime.store).find_refresh_token(
            tokens["refresh_token"]
        )
        assert record is not None
        before = await initialize(stack.front, tokens["access_token"], "partners")
        await anyio.sleep(max(0.0, grant.id_token_expires_at - time.time()) + 0.2)
        after = await initialize(stack.front, tokens["access_token"], "partners")
        refreshed = await stack.front.refresh(client, tokens["refresh_token"])

    assert grant.upstream_refresh_token is None
    assert grant.expires_at == grant.id_token_expires_at
    assert record.expires_at <= grant.id_token_expires_at
    assert tokens["expires_in"] <= 2
    assert claims["exp"] <= grant.id_token_expires_at
    assert before.status_code == 200, before.text
    assert after.status_code == 401
    assert "resource_metadata=" in after.headers["www-authenticate"]
    assert refreshed.json()["error"] == "invalid_grant"


async def test_recheck_concurrent_refreshes_keep_grant(tmp_path: Path) -> None:
    """Concurrent upstream refreshes of one grant take turns, so none is a replay."""
    async with grant_stack(tmp_path, recheck_after=0) as stack:
        _, tokens = await sign_in(stack.front)
        _, claims = stack.runtime.keys.verify(
            tokens["access_token"], algorithms=["ES256"]
        )
        grants = stack.runtime.grants
        grant = await grants.get(claims["grant_id"])
        assert grant is not None
        # An ID token close to its exp makes current_id_token refresh as well.
        grant.id_token_expires_at = int(time.time()) + 10
        await grants.save(grant)
        id_tokens: list[str] = []

        async def recheck() -> None:
            assert await grants.recheck_upstream(grant) is not None

        async def current() -> None:
            id_tokens.append(await grants.current_id_token(grant.grant_id))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(recheck)
                tg.start_soon(current)
        final = await grants.get(grant.grant_id)

    assert final is not None
    assert len(id_tokens) == 3
    assert grant.upstream_id_token not in id_tokens


async def test_exchange_upstream_refresh_5xx_oauth_error_in_event(
    tmp_path: Path,
) -> None:
    """An IdP 5xx at the refresh before an exchange is retryable and has its code."""
    async with grant_stack(tmp_path) as stack:
        _, tokens = await sign_in(stack.front)
        _, claims = stack.runtime.keys.verify(
            tokens["access_token"], algorithms=["ES256"]
        )
        grants = stack.runtime.grants
        grant = await grants.get(claims["grant_id"])
        assert grant is not None
        # An ID token close to its exp is refreshed before the exchange.
        grant.id_token_expires_at = int(time.time()) + 10
        await grants.save(grant)
        stack.org.token_outage = TokenOutage(retry_after="9", grant_types=REFRESH_ONLY)
        response = await initialize(stack.front, tokens["access_token"])
        failed = await stack.events_of(ExchangeFailed)
        kept = await grants.get(grant.grant_id)

    assert response.status_code == 200
    error = decode(response.content)["error"]
    assert error["data"]["reason"] == "idp_unavailable"
    assert error["data"]["step"] == "upstream_refresh"
    assert error["data"]["retry_after"] == 9
    assert error["data"]["oauth_error"] == "temporarily_unavailable"
    (event,) = failed
    assert event.step == "upstream_refresh"
    assert event.oauth_error == "temporarily_unavailable"
    assert kept is not None
