"""What the employees backend receives: a token from its own authorization server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.demo.driver import MemoryTokenStorage, run_client
from gateway.demo.runner import DemoStack, run_demo

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[DemoStack]:
    async with run_demo(ephemeral=True, var_dir=tmp_path) as running:
        yield running


async def test_employees_backend_sees_backend_as_token(stack: DemoStack) -> None:
    """The backend's caller is the gateway's client at the backend AS, as alice."""
    storage = MemoryTokenStorage()
    report = await run_client(
        stack.mcp_url("employees"),
        client_name="cursor",
        login_hint="alice",
        calls=[("list_employees", {})],
        storage=storage,
    )
    is_error, text = report.results["list_employees"]
    assert not is_error
    caller = json.loads(text)["requested_by"]
    assert caller["sub"] == "00u_alice"
    assert caller["client_id"] == "agent-proxy-at-employees"
    # The gateway's own access token was issued to the MCP client, not to the
    # gateway's client at the backend authorization server.
    assert storage.tokens is not None
    assert storage.client_info is not None
    assert caller["client_id"] != storage.client_info.client_id


async def test_bob_and_alice_get_their_own_backend_identity(stack: DemoStack) -> None:
    """Each user reaches the backend as themselves through the same gateway."""
    seen = {}
    for user in ("alice", "bob"):
        report = await run_client(
            stack.mcp_url("employees"),
            client_name="cursor",
            login_hint=user,
            calls=[("list_employees", {})],
        )
        seen[user] = json.loads(report.results["list_employees"][1])["requested_by"]
    assert seen["alice"]["sub"] == "00u_alice"
    assert seen["bob"]["sub"] == "00u_bob"
