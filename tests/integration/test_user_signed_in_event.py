"""``UserSignedIn`` names the upstream client the user signed in through.

The demo stack (dev IdP, both backends, gateway) runs on loopback with the
demo config, which gives the verified agent ``cursor`` its own client at the
dev IdP. The official MCP SDK client signs in once as that verified agent
and once as a client that only calls itself cursor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _identity_support import (
    AGENT_UPSTREAM_CLIENT,
    GATEWAY_UPSTREAM_CLIENT,
    VERIFIED_CLIENT,
    VERIFIED_SECRET,
    identity_stack,
)

from gateway.demo.driver import MemoryTokenStorage, pre_registered_storage, run_client

pytestmark = pytest.mark.anyio


async def sign_in(url: str, storage: MemoryTokenStorage) -> None:
    report = await run_client(
        url, client_name="cursor", calls=[("list_employees", {})], storage=storage
    )
    is_error, text = report.results["list_employees"]
    assert not is_error, text


async def test_user_signed_in_names_upstream_client(tmp_path: Path) -> None:
    """A verified agent's sign-in names its own client, another the gateway's."""
    async with identity_stack(tmp_path) as stack:
        url = stack.mcp_url("employees")
        verified = pre_registered_storage(
            VERIFIED_CLIENT, VERIFIED_SECRET, client_name="cursor"
        )
        await sign_in(url, verified)
        await sign_in(url, MemoryTokenStorage())
    records = [json.loads(line) for line in stack.audit_path.read_text().splitlines()]
    signed_in = [record for record in records if record["type"] == "UserSignedIn"]

    assert [record["upstream_client_id"] for record in signed_in] == [
        AGENT_UPSTREAM_CLIENT,
        GATEWAY_UPSTREAM_CLIENT,
    ]
    assert [record["agent"]["trust"] for record in signed_in] == [
        "verified",
        "self-asserted",
    ]
    assert VERIFIED_SECRET not in stack.audit_path.read_text()
