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

__all__ = ["CacheKey", "CachedToken", "ForgetLog", "TokenCache"]


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
    went away), or its result is not to be kept, one of the waiting requests
    starts a new exchange.

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
        keep: Callable[[], bool] | None = None,
    ) -> tuple[CachedToken, bool]:
        """Return a token for ``key`` and whether it came without a new exchange.

        Args:
            key: The cache key.
            fetch: Runs one exchange. The cache calls it at most once at a time
                per key.
            refresh_before: Seconds before expiry at which a token is replaced.
            keep: Called when an exchange this call started returns. When it
                returns False, the token goes to this caller only: it is not
                cached, and requests waiting for it run a new exchange.

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
                return await self._run(key, fetch, refresh_before, keep), False
            await flight.done.wait()
            if flight.result is not None:
                return flight.result, True
            if flight.error is not None:
                raise flight.error
            # The request that ran the exchange was cancelled, or its token
            # was not kept: try again.

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
        keep: Callable[[], bool] | None,
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
            if keep is None or keep():
                self._store(key, token)
                flight.result = token
            return token
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            # On cancellation, or when the token is not kept, neither result
            # nor error is set, so a waiter starts a new exchange instead.
            del self._flights[key]
            flight.done.set()

    def _store(self, key: CacheKey, token: CachedToken) -> None:
        self._tokens[key] = token
        self._tokens.move_to_end(key)
        while len(self._tokens) > self.max_entries:
            self._tokens.popitem(last=False)


class ForgetLog:
    """The epochs at which each user and agent's cached tokens were last forgotten.

    An exchange records :meth:`now` when it starts, and its token is cached
    only if :meth:`unchanged_since` still holds when it returns, so that an
    exchange in flight while the user's grants were revoked cannot cache a
    token afterwards.

    Args:
        max_entries: Bound on the users and agents remembered. When the
            oldest is dropped, every exchange that started before its
            forget counts as stale, which at worst costs those exchanges
            their caching.
    """

    def __init__(self, *, max_entries: int = 10_000) -> None:
        self._epoch = 0
        self._floor = 0
        self._forgotten: OrderedDict[tuple[str, str, str], int] = OrderedDict()
        self._max_entries = max_entries

    def now(self) -> int:
        """Return the current epoch, to pass to :meth:`unchanged_since` later."""
        return self._epoch

    def forget(self, identity: tuple[str, str, str]) -> None:
        """Record that the tokens of ``identity`` were dropped.

        Args:
            identity: The user's issuer and subject, and the agent id.
        """
        self._epoch += 1
        self._forgotten[identity] = self._epoch
        self._forgotten.move_to_end(identity)
        while len(self._forgotten) > self._max_entries:
            _, epoch = self._forgotten.popitem(last=False)
            self._floor = max(self._floor, epoch)

    def unchanged_since(self, identity: tuple[str, str, str], started: int) -> bool:
        """Return whether ``identity`` was not forgotten after epoch ``started``."""
        return started >= max(self._floor, self._forgotten.get(identity, 0))
