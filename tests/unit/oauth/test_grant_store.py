"""GrantStore: selectors, revocation, expiry caps and when a re-check is due.

No case here reaches the IdP, so the refresher is a stub that fails the test
when it is called.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.events import GrantSelector
from gateway.oauth.grants import Grant, GrantStore, UpstreamTokens
from gateway.store import MemoryStore

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000


class NoRefresh:
    """A refresher for cases that must not reach the IdP."""

    async def refresh(self, refresh_token: str, **_: Any) -> UpstreamTokens:
        raise AssertionError("the IdP must not be asked")


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def grant(grant_id: str, **overrides: Any) -> Grant:
    values: dict[str, Any] = {
        "grant_id": grant_id,
        "user_iss": "https://idp.example",
        "user_sub": "00u_alice",
        "client_id": "client-1",
        "agent_id": "cursor",
        "resource": "https://gw.example/employees/mcp",
        "upstream_id_token": "id-token",
        "id_token_expires_at": NOW + 3600,
        "upstream_refresh_token": "upstream-refresh",
        "created_at": NOW,
        "expires_at": NOW + 8 * 3600,
    }
    values.update(overrides)
    return Grant(**values)


def store(clock: Clock | None = None, **options: Any) -> GrantStore:
    return GrantStore(MemoryStore(), NoRefresh(), clock=clock or Clock(), **options)


async def save_all(grants: GrantStore) -> None:
    await grants.save(grant("a"))
    await grants.save(grant("b", user_sub="00u_bob"))
    await grants.save(grant("c", agent_id="claude-code", client_id="client-2"))
    await grants.save(grant("d", user_iss="https://other.example"))


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (GrantSelector(user_sub="00u_alice"), {"a", "c", "d"}),
        (
            GrantSelector(user_sub="00u_alice", user_iss="https://idp.example"),
            {"a", "c"},
        ),
        (GrantSelector(agent_id="claude-code"), {"c"}),
        (GrantSelector(client_id="client-1"), {"a", "b", "d"}),
        (GrantSelector(user_sub="00u_bob", agent_id="claude-code"), set()),
    ],
)
async def test_grant_store_find_matches_every_given_field(
    selector: GrantSelector, expected: set[str]
) -> None:
    """find returns the grants equal on every field the selector sets."""
    grants = store()
    await save_all(grants)
    found = await grants.find(selector)
    assert {g.grant_id for g in found} == expected


async def test_grant_store_revoke_matching_leaves_others() -> None:
    """revoke_matching ends the matching grants only."""
    grants = store()
    await save_all(grants)
    revoked = await grants.revoke_matching(GrantSelector(agent_id="claude-code"))
    assert [g.grant_id for g in revoked] == ["c"]
    assert await grants.get("c") is None
    for kept in ("a", "b", "d"):
        assert await grants.get(kept) is not None


async def test_grant_store_find_skips_expired_grants() -> None:
    """An expired grant is neither found nor counted as revoked."""
    clock = Clock()
    grants = store(clock)
    await grants.save(grant("a", expires_at=NOW + 10))
    clock.now = NOW + 11
    assert await grants.find(GrantSelector(user_sub="00u_alice")) == []


async def test_grant_store_save_without_refresh_token_caps_expiry() -> None:
    """A grant without an upstream refresh token ends at its ID token's exp."""
    clock = Clock()
    grants = store(clock)
    saved = grant("a", upstream_refresh_token=None, id_token_expires_at=NOW + 60)
    await grants.save(saved)
    assert saved.expires_at == NOW + 60
    clock.now = NOW + 60
    assert await grants.get("a") is None


async def test_grant_store_save_with_refresh_token_keeps_expiry() -> None:
    """A grant with an upstream refresh token keeps its own expiry."""
    grants = store()
    saved = grant("a", id_token_expires_at=NOW + 60)
    await grants.save(saved)
    assert saved.expires_at == NOW + 8 * 3600


async def test_grant_store_revoked_grant_not_revived_by_save() -> None:
    """Saving a grant after its revocation, as a slow refresh would, stores nothing."""
    grants = store()
    copy = grant("a")
    await grants.save(grant("a"))
    await grants.revoke("a")
    assert await grants.save(copy) is False
    assert await grants.get("a") is None


@pytest.mark.parametrize(
    ("recheck_after", "checked_at", "age", "due"),
    [
        (300, None, 299, False),
        (300, None, 300, True),
        (300, NOW + 200, 450, False),
        (300, NOW + 200, 500, True),
        (0, None, 0, True),
    ],
)
def test_grant_store_recheck_due_after_window(
    recheck_after: int, checked_at: int | None, age: int, due: bool
) -> None:
    """A re-check is due once recheck_after seconds passed since the last check."""
    clock = Clock(NOW + age)
    grants = store(clock, recheck_after=recheck_after)
    assert grants.recheck_due(grant("a", upstream_checked_at=checked_at)) is due


def test_grant_store_recheck_without_refresh_token_never_due() -> None:
    """Without an upstream refresh token there is nothing to re-check with."""
    grants = store(Clock(NOW + 10_000), recheck_after=0)
    assert not grants.recheck_due(grant("a", upstream_refresh_token=None))


async def test_grant_store_recheck_not_due_returns_grant_unchanged() -> None:
    """recheck_upstream within the window returns the grant without the IdP."""
    grants = store(Clock(NOW + 10), recheck_after=300)
    original = grant("a")
    await grants.save(original)
    assert await grants.recheck_upstream(original) is original


async def test_grant_store_uses_wall_clock_by_default() -> None:
    """Without a clock argument a grant expiring in the future is live."""
    grants = GrantStore(MemoryStore(), NoRefresh())
    now = int(time.time())
    await grants.save(grant("a", created_at=now, expires_at=now + 60))
    assert await grants.get("a") is not None
