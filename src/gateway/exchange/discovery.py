"""Dynamic mode: find a backend's authorization server from its metadata.

For an ``id-jag`` backend with ``discovery: true``:

1. GET the backend's RFC 9728 protected resource metadata at the well-known
   URL derived from ``resource`` (path-aware first, then the root form). Its
   ``resource`` must equal the configured one exactly (RFC 9728 section 3.3).
2. Take the first entry of ``authorization_servers`` that is on
   ``allowed_issuers`` (exact string match).
3. GET that issuer's RFC 8414 metadata (path-inserted first, then the OpenID
   forms), check that its ``issuer`` equals the chosen issuer exactly, and
   take its ``token_endpoint``. When ``grant_types_supported`` is present it
   must list the JWT-bearer grant.

Every URL must be https; plain http and loopback hosts are accepted only with
``discovery_allow_loopback`` (development and tests). Each fetch has a time
and size limit and follows no redirects. A result is cached for
``discovery_ttl`` seconds, in a bounded cache, with one discovery in flight
per backend configuration. Failures are not cached.

Failures raise :class:`~gateway.errors.ExchangeError` with reason
``issuer_not_allowed`` or ``backend_as_discovery_failed``, or
:class:`ServerUnavailableError` with reason ``backend_as_discovery_failed``
and a ``retry_after`` when a metadata endpoint is unreachable, times out or
returns 5xx or 429.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
import msgspec
import structlog

from gateway.config import IdJagAuth
from gateway.errors import ExchangeError
from gateway.exchange._requests import DEFAULT_RETRY_AFTER, ServerUnavailableError
from gateway.oauth.redirects import is_loopback_host

__all__ = [
    "REASON_DISCOVERY_FAILED",
    "REASON_ISSUER_NOT_ALLOWED",
    "STEP_DISCOVERY",
    "AuthorizationServerDiscovery",
]

log = structlog.get_logger("gateway.exchange")

STEP_DISCOVERY = "discovery"
REASON_DISCOVERY_FAILED = "backend_as_discovery_failed"
REASON_ISSUER_NOT_ALLOWED = "issuer_not_allowed"

_GRANT_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_PRM = "/.well-known/oauth-protected-resource"
_AS_METADATA = "/.well-known/oauth-authorization-server"
_OPENID = "/.well-known/openid-configuration"
_decoder = msgspec.json.Decoder()


class _Key(NamedTuple):
    resource: str
    allowed: tuple[str, ...]
    allow_loopback: bool


class _Flight:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: tuple[str, str] | None = None
        self.error: BaseException | None = None


class AuthorizationServerDiscovery:
    """Discovers and caches the authorization server of dynamic ``id-jag`` backends.

    Args:
        http: The shared HTTP client, closed by the caller.
        timeout: Seconds allowed for each metadata fetch, in total.
        max_bytes: Largest metadata document accepted.
        max_entries: Bound on cached results; the oldest is dropped first.
        clock: Monotonic clock in seconds.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        timeout: float = 5.0,
        max_bytes: int = 64 * 1024,
        max_entries: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[_Key, tuple[str, str, float]] = OrderedDict()
        self._flights: dict[_Key, _Flight] = {}
        self.fetches = 0
        """Metadata documents requested so far, for tests and metrics."""

    async def resolve(self, auth: IdJagAuth) -> IdJagAuth:
        """Return ``auth`` with the discovered ``issuer`` and ``token_endpoint``.

        A static ``auth`` (``discovery`` off) is returned unchanged.

        Raises:
            ExchangeError: ``issuer_not_allowed`` or ``backend_as_discovery_failed``.
            ServerUnavailableError: A metadata endpoint could not be used.
        """
        if not auth.discovery:
            return auth
        key = _key(auth)
        while True:
            found = self._cached(key)
            if found is not None:
                return _static(auth, *found)
            flight = self._flights.get(key)
            if flight is None:
                return _static(auth, *await self._lead(key, auth))
            await flight.done.wait()
            if flight.result is not None:
                return _static(auth, *flight.result)
            if isinstance(flight.error, Exception):
                raise flight.error
            # The leader was cancelled: this request discovers for itself.

    def cached(self, auth: IdJagAuth) -> IdJagAuth | None:
        """Return the resolved ``auth`` if known now, without fetching anything."""
        if not auth.discovery:
            return auth
        found = self._cached(_key(auth))
        return None if found is None else _static(auth, *found)

    def clear(self) -> None:
        """Forget every discovered authorization server."""
        self._cache.clear()

    def _cached(self, key: _Key) -> tuple[str, str] | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[2] <= self._clock():
            del self._cache[key]
            return None
        return entry[0], entry[1]

    async def _lead(self, key: _Key, auth: IdJagAuth) -> tuple[str, str]:
        flight = _Flight()
        self._flights[key] = flight
        try:
            found = await self._discover(auth)
        except BaseException as exc:
            flight.error = exc
            raise
        else:
            flight.result = found
            self._cache[key] = (*found, self._clock() + auth.discovery_ttl)
            self._cache.move_to_end(key)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
            log.info(
                "exchange.as_discovered",
                resource=auth.resource,
                issuer=found[0],
                token_endpoint=found[1],
            )
            return found
        finally:
            del self._flights[key]
            flight.done.set()

    async def _discover(self, auth: IdJagAuth) -> tuple[str, str]:
        loopback = auth.discovery_allow_loopback
        _check_url("resource", auth.resource, loopback)
        prm = await self._first_document(_prm_urls(auth.resource), "resource metadata")
        if prm.get("resource") != auth.resource:
            raise _failed(
                f"the resource metadata names resource {prm.get('resource')!r}, "
                f"expected {auth.resource!r}"
            )

        servers = prm.get("authorization_servers")
        if not isinstance(servers, list) or not servers:
            raise _failed("the resource metadata lists no authorization_servers")
        allowed = [s for s in servers if s in auth.allowed_issuers]
        if not allowed:
            listed = [s for s in servers if isinstance(s, str)][:5]
            raise ExchangeError(
                f"no authorization server of the backend is allowed: {listed!r} "
                "are not in auth.allowed_issuers; add the issuer there if it is "
                "trusted",
                oauth_error=REASON_ISSUER_NOT_ALLOWED,
                step=STEP_DISCOVERY,
                reason=REASON_ISSUER_NOT_ALLOWED,
            )

        issuer: str = allowed[0]
        _check_url("issuer", issuer, loopback)
        metadata = await self._first_document(
            _as_metadata_urls(issuer), "authorization server metadata"
        )
        if metadata.get("issuer") != issuer:
            raise _failed(
                f"the authorization server metadata names issuer "
                f"{metadata.get('issuer')!r}, expected {issuer!r}"
            )

        endpoint = metadata.get("token_endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            raise _failed("the authorization server metadata has no token_endpoint")
        _check_url("token_endpoint", endpoint, loopback)
        grants = metadata.get("grant_types_supported")
        if isinstance(grants, list) and _GRANT_JWT_BEARER not in grants:
            raise _failed(
                f"the authorization server {issuer!r} does not list the JWT-bearer "
                "grant in grant_types_supported"
            )
        return issuer, endpoint

    async def _first_document(self, urls: list[str], what: str) -> dict[str, Any]:
        """Fetch ``urls`` in order and return the first 200 response, a JSON object."""
        statuses: list[int] = []
        for url in urls:
            status, body = await self._get(url, what)
            if status == 200:
                try:
                    document = _decoder.decode(body)
                except msgspec.DecodeError:
                    document = None
                if not isinstance(document, dict):
                    raise _failed(f"the {what} at {url} is not a JSON object")
                return document
            statuses.append(status)
        raise _failed(f"no {what} found (HTTP {statuses}) at {urls}")

    async def _get(self, url: str, what: str) -> tuple[int, bytes]:
        self.fetches += 1
        try:
            with anyio.fail_after(self._timeout):
                async with self._http.stream(
                    "GET",
                    url,
                    headers={"accept": "application/json"},
                    follow_redirects=False,
                ) as response:
                    status = response.status_code
                    if status >= 500 or status == 429:
                        raise _unavailable(
                            f"the {what} at {url} returned HTTP {status}"
                        )
                    if status != 200:
                        return status, b""
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > self._max_bytes:
                            raise _failed(
                                f"the {what} at {url} exceeds {self._max_bytes} bytes"
                            )
                    return status, bytes(body)
        except TimeoutError:
            raise _unavailable(f"the {what} at {url} timed out") from None
        except httpx.HTTPError as exc:
            what_failed = f"the {what} at {url} failed ({type(exc).__name__})"
            raise _unavailable(what_failed) from None


def _key(auth: IdJagAuth) -> _Key:
    return _Key(
        auth.resource, tuple(auth.allowed_issuers), auth.discovery_allow_loopback
    )


def _static(auth: IdJagAuth, issuer: str, token_endpoint: str) -> IdJagAuth:
    return msgspec.structs.replace(
        auth,
        issuer=issuer,
        token_endpoint=token_endpoint,
        discovery=False,
        allowed_issuers=[],
    )


def _prm_urls(resource: str) -> list[str]:
    """RFC 9728 section 3.1: path-aware well-known URL, then the root one."""
    parts = urlsplit(resource)
    path = parts.path.rstrip("/")
    urls = [urlunsplit((parts.scheme, parts.netloc, _PRM + path, parts.query, ""))]
    root = urlunsplit((parts.scheme, parts.netloc, _PRM, "", ""))
    if root not in urls:
        urls.append(root)
    return urls


def _as_metadata_urls(issuer: str) -> list[str]:
    """RFC 8414 section 3.1 and OpenID Connect discovery, in MCP client order."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")

    def at(p: str) -> str:
        return urlunsplit((parts.scheme, parts.netloc, p, "", ""))

    if not path:
        return [at(_AS_METADATA), at(_OPENID)]
    return [at(_AS_METADATA + path), at(_OPENID + path), at(path + _OPENID)]


def _check_url(name: str, url: str, allow_loopback: bool) -> None:
    """Require https, or a loopback host when ``allow_loopback`` (development)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise _failed(f"{name} {url!r} is not a URL") from None
    if not host or parts.fragment or parts.username or parts.password:
        raise _failed(f"{name} {url!r} is not an absolute URL without credentials")
    loopback = is_loopback_host(host)
    if loopback and not allow_loopback:
        raise _failed(f"{name} {url!r} is on a loopback host")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise _failed(f"{name} {url!r} must use https")


def _failed(message: str) -> ExchangeError:
    return ExchangeError(
        f"backend authorization server discovery failed: {message}",
        oauth_error=REASON_DISCOVERY_FAILED,
        step=STEP_DISCOVERY,
        reason=REASON_DISCOVERY_FAILED,
    )


def _unavailable(message: str) -> ServerUnavailableError:
    return ServerUnavailableError(
        f"backend authorization server discovery failed: {message}",
        reason=REASON_DISCOVERY_FAILED,
        step=STEP_DISCOVERY,
        retry_after=DEFAULT_RETRY_AFTER,
    )
