"""``agent-proxy revoke`` while an ID-JAG exchange for the user is in flight.

The gateway, the dev IdP and both demo backends run on loopback, and the
admin API behind ``agent-proxy revoke`` runs on a Unix socket in the test's
directory. The dev IdP's ``token_hold`` fault
(:class:`~gateway.devidp.faults.TokenHold`) delays the token exchange at the
IdP until the revocation has finished, so the order is fixed.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
from _grant_support import grant_stack, initialize, sign_in
from tests.integration.test_grant_revoke_admin import admin_api

from gateway.devidp._urns import GRANT_TOKEN_EXCHANGE
from gateway.devidp.faults import TokenHold
from gateway.events import TokenExchanged

pytestmark = pytest.mark.anyio


async def test_revoke_during_exchange_token_not_cached(tmp_path: Path) -> None:
    """A backend token whose exchange was in flight at revoke is not cached."""
    async with (
        grant_stack(tmp_path) as stack,
        admin_api(stack.runtime, tmp_path / "admin.sock") as admin,
    ):
        _, tokens = await sign_in(stack.front)
        hold = TokenHold(grant_types=frozenset({GRANT_TOKEN_EXCHANGE}))
        stack.org.token_hold = hold
        responses: list[httpx.Response] = []

        async def send() -> None:
            responses.append(await initialize(stack.front, tokens["access_token"]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            with anyio.fail_after(10):
                await hold.arrived.wait()
            revoked = await admin.post("/grants/revoke", json={"user_sub": "00u_alice"})
            hold.release.set()
        cached = len(stack.runtime.credentials.cache)
        after = await initialize(stack.front, tokens["access_token"])
        exchanged = await stack.events_of(TokenExchanged)

    assert revoked.json()["revoked"] == 1
    assert hold.held == 1
    assert cached == 0
    (response,) = responses
    assert response.status_code == 200, response.text
    assert [event.cache for event in exchanged] == ["miss"]
    assert after.status_code == 401
