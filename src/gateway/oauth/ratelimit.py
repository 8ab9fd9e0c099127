"""Per-address token-bucket rate limits of the OAuth endpoints.

Each endpoint group (``register``, ``token``, ``authorize``) has its own
buckets, keyed by client address; ``token`` also has buckets keyed by the
``client_id`` the request sends. Discovery (``/.well-known/*``) and
``/oauth2/jwks`` are never limited.

The buckets live in this process. Several replicas behind one load balancer
each enforce the limits on their own share of the traffic, so a shared store
(Redis) would be needed to enforce them across replicas.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote_plus

import structlog
from litestar import Request
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware

from gateway.oauth.flow import MAX_FORM_BYTES
from gateway.oauth.pages import error_page
from gateway.oauth.responses import html_response, oauth_error

if TYPE_CHECKING:
    from litestar import Response
    from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

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

MAX_CLIENT_ID_LENGTH = 200


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
    """Reject OAuth requests over their group's limit with 429 and ``Retry-After``.

    Reads the path, the client address and, for ``POST /oauth2/token``, the
    ``client_id`` from the form body or the Basic credentials; the body is
    passed on unchanged. Ends the request early with 429 when a bucket is
    empty: an RFC 6749 ``temporarily_unavailable`` JSON error, or the HTML
    error page for the browser endpoints. Logs ``oauth.rate_limited`` with
    the group and a hash of the address, at most once a minute per key.
    """

    scopes = (ScopeType.HTTP,)

    def __init__(self, limiter: OAuthRateLimiter) -> None:
        self.limiter = limiter

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp
    ) -> None:
        """Take a token from the request's buckets, then pass it on or send 429."""
        group = GROUPS.get(scope["path"])
        if group is None or scope.get("method") == "OPTIONS":
            await next_app(scope, receive, send)
            return
        address = address_key(client_address(scope, self.limiter.trusted_proxies))
        buckets = self.limiter.by_address[group]
        wait = buckets.acquire(address)
        if wait > 0:
            self._log(buckets, address, group, wait)
            await self._reject(scope, receive, send, group, wait, "this address")
            return
        if group == "token":
            receive, client_id = await _read_client_id(scope, receive)
            if client_id is not None:
                wait = self.limiter.by_client_id.acquire(client_id)
                if wait > 0:
                    self._log(self.limiter.by_client_id, client_id, group, wait)
                    await self._reject(scope, receive, send, group, wait, "this client")
                    return
        await next_app(scope, receive, send)

    def _log(self, buckets: TokenBucket, key: str, group: str, wait: float) -> None:
        if buckets.should_log(key):
            log.warning(
                "oauth.rate_limited",
                group=group,
                key_hash=hashlib.sha256(key.encode()).hexdigest()[:16],
                by="client_id" if buckets is self.limiter.by_client_id else "address",
                retry_after=retry_after(wait),
            )

    async def _reject(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        group: str,
        wait: float,
        source: str,
    ) -> None:
        seconds = retry_after(wait)
        description = f"too many requests from {source}; retry after {seconds} s"
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


async def _read_client_id(scope: Scope, receive: Receive) -> tuple[Receive, str | None]:
    """Read the ``client_id`` of a token request without consuming its body.

    Returns a ``receive`` that replays the messages read, then the client id
    from Basic credentials or the form body, or None when there is none. A
    body larger than the token endpoint accepts is not parsed.
    """
    headers = dict(scope["headers"])
    client_id = _basic_client_id(headers.get(b"authorization", b""))
    media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if client_id is None and media_type == b"application/x-www-form-urlencoded":
        messages, body = await _buffer_body(receive)
        receive = _replay(messages, receive)
        if body is not None:
            client_id = _form_client_id(body)
    if not client_id or len(client_id) > MAX_CLIENT_ID_LENGTH:
        return receive, None
    return receive, client_id


def _form_client_id(body: bytes) -> str | None:
    try:
        fields = parse_qsl(body.decode("utf-8", "replace"), max_num_fields=100)
    except ValueError:
        # More fields than any token request has: the endpoint rejects it.
        return None
    return dict(fields).get("client_id")


def _basic_client_id(authorization: bytes) -> str | None:
    scheme, _, credentials = authorization.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return unquote_plus(decoded.partition(":")[0]) or None


async def _buffer_body(receive: Receive) -> tuple[list[ReceiveMessage], bytes | None]:
    """Read body messages up to :data:`MAX_FORM_BYTES`.

    Returns the messages read and the whole body, or None for the body when
    it is larger or the client disconnected.
    """
    messages: list[ReceiveMessage] = []
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if size > MAX_FORM_BYTES:
            return messages, None
        if not message.get("more_body", False):
            return messages, b"".join(chunks)


def _replay(messages: list[ReceiveMessage], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> ReceiveMessage:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
