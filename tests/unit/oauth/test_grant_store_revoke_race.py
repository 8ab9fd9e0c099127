"""GrantStore.revoke against concurrent saves, and who reports a revocation.

A shared store (Redis) lets another replica act between two store calls of
this one. ``InterleavingStore`` is a test-only stand-in that runs a revoke
right after the grant store's first check, a point MemoryStore never yields
at, to reproduce that order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.oauth.grants import Grant, GrantStore, UpstreamTokens
from gateway.store import MemoryStore

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000


class NoRefresh:
    async def refresh(self, refresh_token: str, **_: Any) -> UpstreamTokens:
        raise AssertionError("the IdP must not be asked")


class InterleavingStore(MemoryStore):
    """Runs ``hook`` once, after the first read of the revoked-grant marker."""

    def __init__(self) -> None:
        super().__init__()
        self.hook: Callable[[], Awaitable[None]] | None = None

    async def get(self, namespace: str, key: str) -> bytes | None:
        value = await super().get(namespace, key)
        if namespace == GrantStore.REVOKED_NAMESPACE and self.hook is not None:
            hook, self.hook = self.hook, None
            await hook()
        return value


def grant(grant_id: str = "a") -> Grant:
    return Grant(
        grant_id=grant_id,
        user_iss="https://idp.example",
        user_sub="00u_alice",
        client_id="client-1",
        agent_id="cursor",
        resource="https://gw.example/employees/mcp",
        upstream_id_token="id-token",
        id_token_expires_at=NOW + 3600,
        upstream_refresh_token="upstream-refresh",
        created_at=NOW,
        expires_at=NOW + 8 * 3600,
    )


async def test_grant_store_save_racing_revoke_not_revived() -> None:
    """A revoke between a save's check and its write still ends the grant."""
    store = InterleavingStore()
    grants = GrantStore(store, NoRefresh(), clock=lambda: NOW)
    await grants.save(grant())
    ended: list[Grant | None] = []

    async def revoke() -> None:
        ended.append(await grants.revoke("a"))

    store.hook = revoke
    saved = await grants.save(grant())

    assert [g.grant_id if g else None for g in ended] == ["a"]
    assert saved is False
    assert await grants.get("a") is None


async def test_grant_store_revoke_reports_once() -> None:
    """Only the call that ended a grant gets it back; later calls get None."""
    grants = GrantStore(MemoryStore(), NoRefresh(), clock=lambda: NOW)
    await grants.save(grant())

    first = await grants.revoke("a")
    second = await grants.revoke("a")
    unknown = await grants.revoke("never-issued")

    assert first is not None and first.grant_id == "a"
    assert second is None
    assert unknown is None
