"""The backend token cache: expiry, single flight, failures, LRU bound."""

from __future__ import annotations

import anyio
import pytest

from gateway.exchange.cache import CacheKey, TokenCache
from gateway.exchange.idjag import IssuedToken

pytestmark = pytest.mark.anyio


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Exchanges:
    """Counts fetches and hands out numbered tokens, optionally slowly."""

    def __init__(self, *, expires_in: int = 3600, delay: float = 0.0) -> None:
        self.calls = 0
        self.expires_in = expires_in
        self.delay = delay
        self.error: Exception | None = None

    async def __call__(self) -> IssuedToken:
        self.calls += 1
        if self.delay:
            await anyio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return IssuedToken(
            access_token=f"token-{self.calls}", expires_in=self.expires_in
        )


def key(user: str = "alice", agent: str = "cursor") -> CacheKey:
    return CacheKey(
        user_iss="http://127.0.0.1:9",
        user_sub=user,
        agent_id=agent,
        backend="employees",
        audience="http://127.0.0.1:9/oauth2/employees",
        scope="employees:read",
    )


async def test_cache_second_call_hit_without_fetch() -> None:
    """A cached token is served without another exchange."""
    cache = TokenCache(clock=Clock())
    fetch = Exchanges()

    first, first_hit = await cache.get(key(), fetch, refresh_before=60)
    second, second_hit = await cache.get(key(), fetch, refresh_before=60)

    assert first.access_token == "token-1"
    assert first_hit is False
    assert second.access_token == "token-1"
    assert second_hit is True
    assert fetch.calls == 1


async def test_cache_other_user_or_agent_separate_tokens() -> None:
    """Tokens are bound to the user and the agent: no sharing across either."""
    cache = TokenCache(clock=Clock())
    fetch = Exchanges()

    alice, _ = await cache.get(key("alice"), fetch, refresh_before=60)
    bob, bob_hit = await cache.get(key("bob"), fetch, refresh_before=60)
    claude, claude_hit = await cache.get(
        key("alice", "claude-code"), fetch, refresh_before=60
    )

    assert bob_hit is False
    assert claude_hit is False
    assert len({alice.access_token, bob.access_token, claude.access_token}) == 3
    assert fetch.calls == 3


async def test_cache_concurrent_callers_one_exchange() -> None:
    """Twenty concurrent requests for one key cause exactly one exchange."""
    cache = TokenCache(clock=Clock())
    fetch = Exchanges(delay=0.05)
    results: list[tuple[str, bool]] = []

    async def one() -> None:
        token, hit = await cache.get(key(), fetch, refresh_before=60)
        results.append((token.access_token, hit))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)

    assert fetch.calls == 1
    assert len(results) == 20
    assert {token for token, _ in results} == {"token-1"}
    assert [hit for _, hit in results].count(False) == 1


async def test_cache_failure_reaches_every_waiter_not_cached() -> None:
    """A failed exchange fails every waiting request and the next one retries."""
    cache = TokenCache(clock=Clock())
    fetch = Exchanges(delay=0.05)
    fetch.error = RuntimeError("idp down")
    errors: list[str] = []

    async def one() -> None:
        try:
            await cache.get(key(), fetch, refresh_before=60)
        except RuntimeError as exc:
            errors.append(str(exc))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(one)

    assert errors == ["idp down"] * 5
    assert fetch.calls == 1
    assert len(cache) == 0

    fetch.error = None
    token, hit = await cache.get(key(), fetch, refresh_before=60)
    assert token.access_token == "token-2"
    assert hit is False


async def test_cache_refresh_before_expiry_exchanges_again() -> None:
    """A token is replaced ``refresh_before`` seconds before it expires."""
    clock = Clock()
    cache = TokenCache(clock=clock)
    fetch = Exchanges(expires_in=3600)
    await cache.get(key(), fetch, refresh_before=60)

    clock.now += 3600 - 61
    still, hit = await cache.get(key(), fetch, refresh_before=60)
    assert still.access_token == "token-1"
    assert hit is True

    clock.now += 1
    fresh, hit = await cache.get(key(), fetch, refresh_before=60)
    assert fresh.access_token == "token-2"
    assert hit is False
    assert fresh.expires_at == clock.now + 3600


async def test_cache_short_lived_token_reused_half_lifetime() -> None:
    """A token living less than ``refresh_before`` is reused for half its life."""
    clock = Clock()
    cache = TokenCache(clock=clock)
    fetch = Exchanges(expires_in=60)
    await cache.get(key(), fetch, refresh_before=300)

    clock.now += 29
    _, hit = await cache.get(key(), fetch, refresh_before=300)
    assert hit is True

    clock.now += 1
    _, hit = await cache.get(key(), fetch, refresh_before=300)
    assert hit is False
    assert fetch.calls == 2


async def test_cache_lru_bound_evicts_least_recent() -> None:
    """Past ``max_entries`` the least recently used token is dropped."""
    cache = TokenCache(max_entries=2, clock=Clock())
    fetch = Exchanges()
    await cache.get(key("a"), fetch, refresh_before=60)
    await cache.get(key("b"), fetch, refresh_before=60)
    await cache.get(key("a"), fetch, refresh_before=60)
    await cache.get(key("c"), fetch, refresh_before=60)

    assert len(cache) == 2
    assert cache.peek(key("a")) is not None
    assert cache.peek(key("b")) is None
    assert cache.peek(key("c")) is not None


async def test_cache_invalidate_rejected_token_only() -> None:
    """Invalidation with the rejected token keeps a newer token."""
    cache = TokenCache(clock=Clock())
    fetch = Exchanges()
    await cache.get(key(), fetch, refresh_before=60)

    assert cache.invalidate(key(), access_token="token-0") is False
    assert cache.peek(key()) is not None
    assert cache.invalidate(key(), access_token="token-1") is True
    assert cache.peek(key()) is None
    assert cache.invalidate(key()) is False

    await cache.get(key(), fetch, refresh_before=60)
    assert cache.invalidate(key()) is True
    assert fetch.calls == 2


async def test_cache_cancelled_exchange_waiter_takes_over() -> None:
    """When the request running the exchange is cancelled, a waiter starts anew."""
    cache = TokenCache(clock=Clock())
    fetch = Exchanges(delay=0.2)
    results: list[str] = []

    async def waiter() -> None:
        token, _ = await cache.get(key(), fetch, refresh_before=60)
        results.append(token.access_token)

    leader_scope = anyio.CancelScope()

    async def leader() -> None:
        with leader_scope:
            await cache.get(key(), fetch, refresh_before=60)

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await anyio.sleep(0.01)
        tg.start_soon(waiter)
        await anyio.sleep(0.01)
        leader_scope.cancel()

    assert results == ["token-2"]
    assert fetch.calls == 2


def test_cached_token_repr_hides_token() -> None:
    """Neither token type shows the token in ``repr``, so logs never carry it."""
    issued = IssuedToken(access_token="secret-token", expires_in=60)
    assert "secret-token" not in repr(issued)


def test_cache_zero_entries_rejected() -> None:
    """A cache that could hold nothing is a configuration error."""
    with pytest.raises(ValueError, match="max_entries"):
        TokenCache(max_entries=0)
