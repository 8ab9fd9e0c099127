"""Token-bucket rate limits of the OAuth endpoints, per address and per client.

Each endpoint group (``register``, ``token``, ``authorize``) has its own
buckets, keyed by client address, which :class:`RateLimitMiddleware`
charges before the endpoint runs. The ``token`` group also has buckets keyed
by client id, which the token and revocation endpoints charge through
:func:`client_retry_after` only once the request has proven its client: a
confidential client after its authentication, a public client after its code
or refresh token was found valid for it. Anyone can send a known
``client_id``, so charging that bucket earlier would let a stranger lock the
client out. Discovery (``/.well-known/*``) and ``/oauth2/jwks`` are never
limited.

The buckets live in this process. Several replicas behind one load balancer
each enforce the limits on their own share of the traffic, so a shared store
(Redis) would be needed to enforce them across replicas.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from litestar import Request
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware

from gateway.oauth.pages import error_page
from gateway.oauth.responses import html_response, oauth_error

if TYPE_CHECKING:
    from litestar import Response
    from litestar.types import ASGIApp, Receive, Scope, Send

    from gateway.config.model import RateLimit, RateLimitsConfig

log = structlog.get_logger("gateway.oauth")

Clock = Callable[[], float]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

GROUPS = {
    "/oauth2/register": "register",
    "/oauth2/token": "token",
    "/oauth2/revoke": "token",
    "/oauth2/authorize": "authorize",
    "/oauth2/consent": "authorize",
    "/oauth2/callback": "authorize",
}
"""The endpoint group of each limited path; other paths are not limited."""

BROWSER_GROUPS = frozenset({"authorize"})
"""Groups whose endpoints a browser shows, so they get an HTML error page."""

LOG_INTERVAL = 60.0
"""Seconds between two ``oauth.rate_limited`` warnings for one key."""

_LIMITER_STATE_KEY = "oauth_rate_limiter"
"""The key under which the middleware puts its limiter in the ASGI scope state."""


class TokenBucket:
    """Token buckets for many keys with one rate, bounded in the keys they track.

    A key starts with ``burst`` tokens; each request takes one, and tokens
    come back at ``per_minute / 60`` per second up to ``burst``. When more
    than ``max_keys`` keys are tracked, the least recently used one is
    dropped, which gives that key a full bucket again. Each call is O(1).
    """

    def __init__(
        self,
        per_minute: int,
        burst: int,
        *,
        max_keys: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        if per_minute < 1 or burst < 1 or max_keys < 1:
            msg = (
                f"per_minute ({per_minute}), burst ({burst}) and max_keys "
                f"({max_keys}) must each be at least 1"
            )
            raise ValueError(msg)
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self._clock = clock
        # key -> [tokens, time of the last update, time of the last warning]
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str) -> float:
        """Take one token for ``key``.

        Returns:
            0.0 when the request is allowed, else the seconds until the key
            has a token again.
        """
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = [self.burst, now, -math.inf]
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket[1])
            bucket[0] = min(self.burst, bucket[0] + elapsed * self.rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.rate

    def should_log(self, key: str) -> bool:
        """Return whether a rejection of ``key`` should be logged now.

        True at most once per :data:`LOG_INTERVAL` per key, so a flood writes
        one warning a minute per key instead of one per request.
        """
        bucket = self._buckets.get(key)
        if bucket is None:
            return True
        now = self._clock()
        if now - bucket[2] < LOG_INTERVAL:
            return False
        bucket[2] = now
        return True


def retry_after(wait: float) -> int:
    """Return a ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait))


def parse_trusted_proxies(entries: Sequence[str]) -> list[IPNetwork]:
    """Parse proxy addresses and CIDR networks.

    Raises:
        ValueError: An entry is neither; the message names it.
    """
    networks: list[IPNetwork] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            msg = f"{entry!r} is not an IP address or CIDR network"
            raise ValueError(msg) from None
    return networks


def address_key(host: str) -> str:
    """Return the bucket key of a client address.

    An IPv6 address is keyed by its /64 network, because one host usually
    controls a whole /64 and could otherwise get a fresh bucket per address.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return host


def client_address(scope: Scope, trusted: Sequence[IPNetwork]) -> str:
    """Return the address of the client that sent a request.

    This is the ASGI ``client`` host. Only when that host is a trusted proxy
    is ``X-Forwarded-For`` read: its rightmost entry that is not a trusted
    proxy is the client. An entry that is not an IP address stops the walk,
    and the last trusted hop is used.
    """
    peer = scope.get("client")
    host: str = peer[0] if peer else "unknown"
    if not trusted or not _is_trusted(host, trusted):
        return host
    forwarded = [
        part.strip()
        for name, value in scope["headers"]
        if name == b"x-forwarded-for"
        for part in value.decode("latin-1").split(",")
    ]
    for entry in reversed(forwarded):
        if not _is_trusted(entry, trusted):
            try:
                ipaddress.ip_address(entry)
            except ValueError:
                return host
            return entry
        host = entry
    return host


def _is_trusted(host: str, trusted: Sequence[IPNetwork]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in trusted)


class OAuthRateLimiter:
    """The buckets of every endpoint group, built from ``oauth.rate_limits``."""

    def __init__(self, config: RateLimitsConfig, *, clock: Clock = time.monotonic):
        """Build the buckets.

        Raises:
            ValueError: A ``trusted_proxies`` entry is invalid.
        """
        self.trusted_proxies = parse_trusted_proxies(config.trusted_proxies)

        def bucket(limit: RateLimit) -> TokenBucket:
            return TokenBucket(
                limit.per_minute,
                limit.burst,
                max_keys=config.max_tracked_keys,
                clock=clock,
            )

        self.by_address = {
            "register": bucket(config.register),
            "token": bucket(config.token),
            "authorize": bucket(config.authorize),
        }
        self.by_client_id = bucket(config.token)


class RateLimitMiddleware(ASGIMiddleware):
    """Reject OAuth requests over their address's limit with 429 and ``Retry-After``.

    Reads the path and the client address, never the body. Ends the request
    early with 429 when the address's bucket is empty: an RFC 6749
    ``temporarily_unavailable`` JSON error, or the HTML error page for the
    browser endpoints. Logs ``oauth.rate_limited`` with the group and a hash
    of the address, at most once a minute per key. Puts the limiter in the
    scope's state, where :func:`client_retry_after` finds the per-client
    buckets.
    """

    scopes = (ScopeType.HTTP,)

    def __init__(self, limiter: OAuthRateLimiter) -> None:
        self.limiter = limiter

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp
    ) -> None:
        """Take a token from the address's bucket, then pass it on or send 429."""
        group = GROUPS.get(scope["path"])
        if group is None or scope.get("method") == "OPTIONS":
            await next_app(scope, receive, send)
            return
        address = address_key(client_address(scope, self.limiter.trusted_proxies))
        buckets = self.limiter.by_address[group]
        wait = buckets.acquire(address)
        if wait > 0:
            _log_limited(buckets, address, group, wait, by="address")
            await self._reject(scope, receive, send, group, wait)
            return
        if group == "token":
            scope.setdefault("state", {})[_LIMITER_STATE_KEY] = self.limiter
        await next_app(scope, receive, send)

    async def _reject(
        self, scope: Scope, receive: Receive, send: Send, group: str, wait: float
    ) -> None:
        seconds = retry_after(wait)
        description = f"too many requests from this address; retry after {seconds} s"
        response: Response[bytes]
        if group in BROWSER_GROUPS:
            response = html_response(
                error_page("Too many requests", f"There were {description}."),
                status=429,
            )
            response.headers["retry-after"] = str(seconds)
        else:
            response = oauth_error(
                "temporarily_unavailable",
                description,
                status=429,
                headers={"retry-after": str(seconds)},
            )
        request: Request[Any, Any, Any] = Request(scope, receive)
        await response.to_asgi_response(app=None, request=request)(scope, receive, send)


def client_retry_after(scope: Scope, client_id: str) -> int | None:
    """Take a token from the per-client bucket of a proven client.

    Call this only for a request that has proven ``client_id``: see the
    module docstring. Logs ``oauth.rate_limited`` as the middleware does.

    Returns:
        None when the request may go on, or when rate limits are disabled
        (no middleware put a limiter in the scope); else the ``Retry-After``
        seconds for the 429 response.
    """
    limiter = scope.get("state", {}).get(_LIMITER_STATE_KEY)
    if not isinstance(limiter, OAuthRateLimiter):
        return None
    wait = limiter.by_client_id.acquire(client_id)
    if wait <= 0:
        return None
    _log_limited(limiter.by_client_id, client_id, "token", wait, by="client_id")
    return retry_after(wait)


def _log_limited(
    buckets: TokenBucket, key: str, group: str, wait: float, *, by: str
) -> None:
    if buckets.should_log(key):
        log.warning(
            "oauth.rate_limited",
            group=group,
            key_hash=hashlib.sha256(key.encode()).hexdigest()[:16],
            by=by,
            retry_after=retry_after(wait),
        )
