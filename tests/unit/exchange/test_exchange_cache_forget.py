"""Tokens of exchanges that were in flight while a user's tokens were forgotten.

The exchange is a test function that waits on an ``anyio.Event``, because
the cache calls only that function. The integration test
``test_exchange_forget_in_flight`` runs the same case against the dev IdP.
"""

from __future__ import annotations

import anyio
import pytest

from gateway.exchange.cache import CacheKey, ForgetLog, TokenCache
from gateway.exchange.idjag import IssuedToken

pytestmark = pytest.mark.anyio

ALICE = ("http://127.0.0.1:9", "alice", "cursor")


def key() -> CacheKey:
    return CacheKey(
        user_iss=ALICE[0],
        user_sub=ALICE[1],
        agent_id=ALICE[2],
        backend="employees",
        audience="http://127.0.0.1:9/oauth2/employees",
        scope="employees:read",
    )


class HeldExchanges:
    """Hands out numbered tokens; the first call waits until released."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self) -> IssuedToken:
        self.calls += 1
        if self.calls == 1:
            self.started.set()
            await self.release.wait()
        return IssuedToken(access_token=f"token-{self.calls}", expires_in=3600)


async def test_cache_token_not_kept_waiters_exchange_again() -> None:
    """A token that is not kept reaches its caller only; waiters exchange anew."""
    cache = TokenCache()
    fetch = HeldExchanges()
    results: dict[str, str] = {}

    async def leader() -> None:
        token, _ = await cache.get(key(), fetch, refresh_before=60, keep=lambda: False)
        results["leader"] = token.access_token

    async def waiter() -> None:
        token, _ = await cache.get(key(), fetch, refresh_before=60)
        results["waiter"] = token.access_token

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await fetch.started.wait()
        tg.start_soon(waiter)
        await anyio.sleep(0.01)
        fetch.release.set()

    assert results == {"leader": "token-1", "waiter": "token-2"}
    assert fetch.calls == 2
    cached = cache.peek(key())
    assert cached is not None
    assert cached.access_token == "token-2"


def test_forget_log_forget_after_start_stale() -> None:
    """Only a forget after an exchange started makes that exchange stale."""
    log = ForgetLog()
    before = log.now()
    log.forget(ALICE)
    after = log.now()
    log.forget(("http://127.0.0.1:9", "bob", "cursor"))

    assert not log.unchanged_since(ALICE, before)
    assert log.unchanged_since(ALICE, after)
    assert log.unchanged_since(("http://127.0.0.1:9", "carol", "cursor"), before)


def test_forget_log_evicted_entry_stale_before_it() -> None:
    """Past its bound, the log treats exchanges older than a dropped forget as stale."""
    log = ForgetLog(max_entries=1)
    before = log.now()
    log.forget(ALICE)
    middle = log.now()
    log.forget(("http://127.0.0.1:9", "bob", "cursor"))

    assert not log.unchanged_since(ALICE, before)
    assert not log.unchanged_since(("http://127.0.0.1:9", "carol", "cursor"), before)
    assert log.unchanged_since(ALICE, middle)
