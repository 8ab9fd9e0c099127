"""A bounded, single-flight cache of backend access tokens.

Tokens stay in process memory on purpose. A shared store (Redis) would keep
every user's backend bearer tokens at rest, which first needs a decision on
how they are encrypted and who keeps that key. Until then each replica
exchanges for itself, which costs one exchange per replica and key.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import anyio

from gateway.exchange.idjag import IssuedToken

__all__ = ["CacheKey", "CachedToken", "TokenCache"]


class CacheKey(NamedTuple):
    """Key of a cached backend token: user, agent, backend, audience and scope.

    ``upstream_client`` is the upstream client the user signed in through (a
    verified agent's own client, or empty for the gateway's), so a token
    obtained through one client is never served to a sign-in through another.
    """

    user_iss: str
    user_sub: str
    agent_id: str
    backend: str
    audience: str
    scope: str
    upstream_client: str = ""


@dataclass(frozen=True, slots=True)
class CachedToken:
    """A backend access token and when it expires, on the cache's clock.

    Attributes:
        access_token: The token, left out of ``repr`` so that it is never logged.
        expires_at: Expiry on the cache's clock (monotonic by default).
        refresh_at: When the cache stops serving it and exchanges again.
        scope: The granted scope, when the server returned one.
    """

    access_token: str = field(repr=False)
    expires_at: float
    refresh_at: float
    scope: str | None = None


class _Flight:
    """One exchange in progress and the requests waiting for it."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: CachedToken | None = None
        self.error: BaseException | None = None


class TokenCache:
    """Backend tokens by :class:`CacheKey`, with one exchange in flight per key.

    A token is served until ``refresh_before`` seconds before it expires, or
    until half its lifetime is left when that is later, so that a token
    shorter-lived than ``refresh_before`` is still reused. When it is missing
    or due, the first request runs the exchange and every other
    request for the same key waits for that one result. A failure is raised
    in every waiting request and is not cached, so the next request tries
    again. When the request running the exchange is cancelled (its client
    went away), one of the waiting requests starts a new exchange.

    Args:
        max_entries: Bound on cached tokens; the least recently used goes first.
        clock: Returns the current time in seconds; ``time.monotonic`` by default.
    """

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            msg = f"max_entries must be at least 1, got {max_entries!r}"
            raise ValueError(msg)
        self.max_entries = max_entries
        self._clock = clock
        self._tokens: OrderedDict[CacheKey, CachedToken] = OrderedDict()
        self._flights: dict[CacheKey, _Flight] = {}

    def __len__(self) -> int:
        return len(self._tokens)

    def peek(self, key: CacheKey) -> CachedToken | None:
        """Return the cached token if it is not due for refresh, else None."""
        token = self._tokens.get(key)
        if token is None:
            return None
        if token.refresh_at <= self._clock():
            return None
        self._tokens.move_to_end(key)
        return token

    async def get(
        self,
        key: CacheKey,
        fetch: Callable[[], Awaitable[IssuedToken]],
        *,
        refresh_before: float,
    ) -> tuple[CachedToken, bool]:
        """Return a token for ``key`` and whether it came without a new exchange.

        Args:
            key: The cache key.
            fetch: Runs one exchange. The cache calls it at most once at a time
                per key.
            refresh_before: Seconds before expiry at which a token is replaced.

        Returns:
            The token, and True when this call started no exchange (a cache
            hit, or a wait for an exchange another request started).

        Raises:
            Exception: Whatever ``fetch`` raised, in every waiting request.
        """
        while True:
            token = self.peek(key)
            if token is not None:
                return token, True
            flight = self._flights.get(key)
            if flight is None:
                return await self._run(key, fetch, refresh_before), False
            await flight.done.wait()
            if flight.result is not None:
                return flight.result, True
            if flight.error is not None:
                raise flight.error
            # The request that ran the exchange was cancelled: try again.

    def invalidate(self, key: CacheKey, *, access_token: str | None = None) -> bool:
        """Drop the token for ``key`` and return whether one was dropped.

        With ``access_token``, the cached token is dropped only if it is that
        one, so a request that saw a rejected token does not discard a newer
        token another request already obtained.
        """
        token = self._tokens.get(key)
        if token is None:
            return False
        if access_token is not None and not secrets.compare_digest(
            token.access_token.encode(), access_token.encode()
        ):
            return False
        del self._tokens[key]
        return True

    def clear(self) -> None:
        """Drop every cached token."""
        self._tokens.clear()

    async def _run(
        self,
        key: CacheKey,
        fetch: Callable[[], Awaitable[IssuedToken]],
        refresh_before: float,
    ) -> CachedToken:
        flight = _Flight()
        self._flights[key] = flight
        try:
            issued = await fetch()
            now = self._clock()
            margin = min(refresh_before, issued.expires_in / 2)
            token = CachedToken(
                access_token=issued.access_token,
                expires_at=now + issued.expires_in,
                refresh_at=now + issued.expires_in - margin,
                scope=issued.scope,
            )
            self._store(key, token)
            flight.result = token
            return token
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            # On cancellation neither result nor error is set, so a waiter
            # starts a new exchange instead of failing with this one.
            del self._flights[key]
            flight.done.set()

    def _store(self, key: CacheKey, token: CachedToken) -> None:
        self._tokens[key] = token
        self._tokens.move_to_end(key)
        while len(self._tokens) > self.max_entries:
            self._tokens.popitem(last=False)
