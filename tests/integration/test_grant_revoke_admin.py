"""The admin API behind ``agent-proxy revoke``, served on a Unix socket in-process.

The gateway, the dev IdP and both demo backends run on loopback, and the
admin API runs on a socket in the test's temporary directory, so the test
can look at the gateway's backend token cache and events directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from _grant_support import grant_stack, initialize, sign_in

from gateway.admin import bind_admin_socket, serve_admin
from gateway.events import GrantRevoked
from gateway.runtime import Runtime

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def admin_api(runtime: Runtime, path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """Serve the admin API at ``path``; yield a client connected to it."""
    admin = bind_admin_socket(path)
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    async with (
        anyio.create_task_group() as tg,
        httpx.AsyncClient(transport=transport, base_url="http://admin") as http,
    ):
        tg.start_soon(serve_admin, runtime, admin)
        with anyio.fail_after(10):
            while True:
                try:
                    await http.get("/")
                    break
                except httpx.TransportError:
                    await anyio.sleep(0.02)
        yield http
        tg.cancel_scope.cancel()
    admin.remove()


async def test_admin_revoke_drops_cached_backend_tokens(tmp_path: Path) -> None:
    """Revoking a grant drops the backend token cached for its user and agent."""
    async with grant_stack(tmp_path) as stack:
        client, tokens = await sign_in(stack.front)
        served = await initialize(stack.front, tokens["access_token"])
        cached = len(stack.runtime.credentials.cache)
        async with admin_api(stack.runtime, tmp_path / "admin.sock") as admin:
            response = await admin.post(
                "/grants/revoke", json={"user_sub": "00u_alice", "agent_id": "cursor"}
            )
        after = await initialize(stack.front, tokens["access_token"])
        events = await stack.events_of(GrantRevoked)

    assert served.status_code == 200, served.text
    assert cached == 1
    assert response.status_code == 200
    body = response.json()
    assert body["revoked"] == 1
    assert body["grants"][0]["client_id"] == client["client_id"]
    assert len(stack.runtime.credentials.cache) == 0
    assert after.status_code == 401
    (event,) = events
    assert event.reason == "admin_revoke"
    assert event.outcome == "success"
    assert event.stage == "admin"
    assert event.selector is not None
    assert event.selector.user_sub == "00u_alice"
    assert event.selector.agent_id == "cursor"
    assert event.agent is not None and event.agent.id == "cursor"
    assert event.backend == "employees"


async def test_admin_revoke_no_match_zero(tmp_path: Path) -> None:
    """A selector that matches nothing gets 200 with a count of 0."""
    async with (
        grant_stack(tmp_path) as stack,
        admin_api(stack.runtime, tmp_path / "admin.sock") as admin,
    ):
        response = await admin.post("/grants/revoke", json={"client_id": "nobody"})

    assert response.status_code == 200
    assert response.json() == {"revoked": 0, "consents_revoked": 0, "grants": []}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({}, "name at least one of user_sub, agent_id and client_id"),
        ({"user_iss": "http://idp"}, "user_iss selects nothing without user_sub"),
        ({"user_sub": "00u_alice", "extra": 1}, "unknown field"),
        ({"user_sub": ""}, "length >= 1"),
        ([], "Expected `object`"),
    ],
)
async def test_admin_revoke_invalid_body_rejected(
    tmp_path: Path, body: Any, problem: str
) -> None:
    """A body without a selector or with unknown fields gets 400 invalid_request."""
    async with (
        grant_stack(tmp_path) as stack,
        admin_api(stack.runtime, tmp_path / "admin.sock") as admin,
    ):
        _, tokens = await sign_in(stack.front)
        response = await admin.post("/grants/revoke", json=body)
        still = await initialize(stack.front, tokens["access_token"])

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert problem in response.json()["error_description"]
    assert still.status_code == 200


async def test_admin_api_unknown_path_not_found(tmp_path: Path) -> None:
    """Paths other than the revoke endpoint get 404."""
    async with (
        grant_stack(tmp_path) as stack,
        admin_api(stack.runtime, tmp_path / "admin.sock") as admin,
    ):
        response = await admin.post("/grants/list", json={})

    assert response.status_code == 404
