"""``agent-proxy revoke`` also withdraws the consent the user gave the client.

The gateway, the dev IdP and both demo backends run on loopback, and the
admin API behind ``agent-proxy revoke`` runs on a Unix socket in the test's
directory. A browser-like client approves the consent page once, so the
next sign-in of that client in the same browser skips it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from _grant_support import GrantStack, grant_stack, sign_in
from tests.integration.test_grant_revoke_admin import admin_api

from gateway.events import ConsentRevoked, GrantRevoked

pytestmark = pytest.mark.anyio


async def consent_page_shown(stack: GrantStack, client: dict[str, Any]) -> bool:
    """Start a sign-in; return True for the consent page, False when it is skipped."""
    response, _, _ = await stack.front.authorize(client)
    if response.status_code == 200:
        return True
    assert response.status_code == 302, response.text
    return False


async def revoke(admin: httpx.AsyncClient, **selector: str) -> dict[str, Any]:
    response = await admin.post("/grants/revoke", json=selector)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_admin_revoke_client_shows_consent_again(tmp_path: Path) -> None:
    """After revoking a client, its next sign-in shows the consent page."""
    async with (
        grant_stack(tmp_path) as stack,
        admin_api(stack.runtime, tmp_path / "admin.sock") as admin,
    ):
        client, _ = await sign_in(stack.front)
        skipped_before = not await consent_page_shown(stack, client)
        body = await revoke(admin, client_id=client["client_id"])
        shown_after = await consent_page_shown(stack, client)
        withdrawn = await stack.events_of(ConsentRevoked)
        ended = await stack.events_of(GrantRevoked)

    assert skipped_before
    assert body["revoked"] == 1
    assert body["consents_revoked"] == 1
    assert shown_after
    (event,) = withdrawn
    assert event.reason == "admin_revoke"
    assert event.stage == "admin"
    assert event.client_id == client["client_id"]
    assert event.user is not None and event.user.sub == "00u_alice"
    assert [grant.reason for grant in ended] == ["admin_revoke"]


async def test_admin_revoke_user_without_grant_withdraws(tmp_path: Path) -> None:
    """Revoking a user withdraws a consent whose grant had already ended."""
    async with (
        grant_stack(tmp_path) as stack,
        admin_api(stack.runtime, tmp_path / "admin.sock") as admin,
    ):
        client, tokens = await sign_in(stack.front)
        other_user = await revoke(
            admin, client_id=client["client_id"], user_sub="00u_bob"
        )
        # The client itself revokes its refresh token, which ends the grant
        # (RFC 7009) and keeps the consent.
        ended = await stack.front.browser.post(
            "/oauth2/revoke",
            data={
                "token": tokens["refresh_token"],
                "token_type_hint": "refresh_token",
                "client_id": client["client_id"],
            },
        )
        skipped = not await consent_page_shown(stack, client)
        body = await revoke(admin, user_sub="00u_alice")
        shown = await consent_page_shown(stack, client)

    assert other_user == {"revoked": 0, "consents_revoked": 0, "grants": []}
    assert ended.status_code == 200, ended.text
    assert skipped
    assert body["revoked"] == 0
    assert body["consents_revoked"] == 1
    assert shown
