"""Client ID Metadata Documents: a ``client_id`` that is an https URL.

The authorization server fetches the document at the ``client_id`` URL and
uses it as the client's registration (draft-ietf-oauth-client-id-metadata-
document). Fetching a URL that a client chose is a server-side request
forgery risk, so the fetch:

- accepts only https URLs with a path, without user information, fragment or
  dot segments; plain http is accepted only for loopback hosts in development
  (``oauth.client_metadata.allow_loopback``);
- resolves the host first and connects only when every address is a global
  unicast address, also the IPv4 address inside an IPv6 form such as NAT64
  (:mod:`gateway.oauth.public_addresses`; loopback ones too in development),
  then connects to the address it checked, so a second DNS answer cannot
  redirect it;
- follows no redirects, reads at most :data:`MAX_DOCUMENT_BYTES`, and gives up
  after :data:`FETCH_TIMEOUT` seconds.

A valid document is cached in the state store for the lifetime its
``Cache-Control: max-age`` gives, bounded by :data:`MIN_CACHE_SECONDS` and
:data:`MAX_CACHE_SECONDS`.

A document's ``token_endpoint_auth_method`` is ``none`` (a public client) or
``private_key_jwt`` with exactly one of ``jwks`` and ``jwks_uri``. A
``jwks_uri`` is fetched with the same protections, and its key set is cached
with the document.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import httpx
import msgspec
import structlog

from gateway.oauth.client_keys import document_key_set
from gateway.oauth.clients import (
    ClientRecord,
    ClientRegistry,
    RegistrationError,
    validate_metadata,
)
from gateway.oauth.public_addresses import is_public_address
from gateway.oauth.redirects import display_uri, has_dot_segment, is_loopback_host
from gateway.store import Store, TypedStore

if TYPE_CHECKING:
    from litestar import Request

    from gateway.config.model import ClientMetadataConfig
    from gateway.runtime import Runtime

log = structlog.get_logger("gateway.oauth")

MAX_DOCUMENT_BYTES = 64 * 1024
FETCH_TIMEOUT = 5.0
"""Seconds for resolving, connecting and reading one document."""
MIN_CACHE_SECONDS = 60
MAX_CACHE_SECONDS = 24 * 3600
DEFAULT_CACHE_SECONDS = 600
"""Cache lifetime of a document whose response gives no ``max-age``."""
MAX_URL_LENGTH = 2000

STATE_KEY = "client_metadata_resolver"
"""The ``app.state`` key under which a :class:`ClientMetadataResolver` is kept."""

_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|$)", re.IGNORECASE)


class ClientMetadataError(Exception):
    """A ``client_id`` URL whose document cannot be used.

    Attributes:
        reason: A stable code for events and logs, such as ``fetch_failed``.
    """

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


def looks_like_document_url(client_id: str) -> bool:
    """Return whether ``client_id`` is meant as a metadata document URL."""
    return client_id.startswith(("https://", "http://"))


class ClientMetadataResolver:
    """Fetches, validates and caches Client ID Metadata Documents.

    Args:
        store: The state store; documents are cached in namespace
            ``client_metadata``.
        allow_loopback: Accept loopback hosts (http or https); development only.
        verify: TLS verification for the fetch: True for the system's CA
            bundle, or an ``ssl.SSLContext`` that trusts other roots.
        timeout: Seconds one fetch may take in total.
        max_bytes: Largest document accepted.
    """

    NAMESPACE = "client_metadata"

    def __init__(
        self,
        store: Store,
        *,
        allow_loopback: bool = False,
        verify: ssl.SSLContext | bool = True,
        timeout: float = FETCH_TIMEOUT,
        max_bytes: int = MAX_DOCUMENT_BYTES,
    ) -> None:
        self._cache = TypedStore(store, self.NAMESPACE, ClientRecord)
        self.allow_loopback = allow_loopback
        self._verify = verify
        self._timeout = timeout
        self._max_bytes = max_bytes

    async def resolve(self, url: str) -> ClientRecord:
        """Return the client described by the document at ``url``.

        A cached document is used while its cache lifetime lasts.

        Raises:
            ClientMetadataError: The URL is not allowed, the fetch failed, or
                the document is invalid.
        """
        key = hashlib.sha256(url.encode()).hexdigest()
        cached = await self._cache.get(key)
        if cached is not None:
            return cached
        target = self._check_url(url)
        body, cache_control = await self._fetch(url, target)
        record, document = self._parse(url, body)
        if record.token_endpoint_auth_method == "private_key_jwt":
            try:
                record.jwks = await document_key_set(document, self._fetch_key_set)
            except ValueError as exc:
                raise ClientMetadataError(
                    "invalid_document",
                    f"the client metadata document {display_uri(url[:200])}: {exc}",
                ) from None
        ttl = cache_seconds(cache_control)
        await self._cache.set(key, record, ttl)
        log.info(
            "oauth.client_metadata_fetched",
            client_id=display_uri(url),
            cache_seconds=ttl,
            verified=record.document_redirects_verified,
        )
        return record

    async def _fetch_key_set(self, url: str) -> bytes:
        """Fetch a document's ``jwks_uri`` as the document itself was fetched."""
        target = self._check_url(url, name="jwks_uri")
        body, _ = await self._fetch(url, target, document_name="the jwks_uri document")
        return body

    def _check_url(self, url: str, *, name: str = "client_id") -> httpx.URL:
        safe_url = display_uri(url[:200])
        if len(url) > MAX_URL_LENGTH:
            raise ClientMetadataError(
                "invalid_url", f"{name} is longer than {MAX_URL_LENGTH} characters"
            )
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ClientMetadataError(
                "invalid_url", f"{name} {safe_url} is not a valid URL"
            ) from None
        host = parts.hostname
        loopback = is_loopback_host(host)
        if parts.scheme != "https" and not (
            parts.scheme == "http" and loopback and self.allow_loopback
        ):
            raise ClientMetadataError(
                "invalid_url", f"{name} {safe_url} must be an https URL"
            )
        if not host or "@" in parts.netloc:
            raise ClientMetadataError(
                "invalid_url", f"{name} {safe_url} must name a host and no user"
            )
        if parts.fragment or "#" in url:
            raise ClientMetadataError(
                "invalid_url", f"{name} {safe_url} must not have a fragment"
            )
        if parts.path in ("", "/") or has_dot_segment(parts.path):
            raise ClientMetadataError(
                "invalid_url",
                f"{name} {safe_url} must have a path without '.' or '..' segments",
            )
        del port  # read above only to reject an invalid port
        try:
            return httpx.URL(url)
        except httpx.InvalidURL:
            raise ClientMetadataError(
                "invalid_url", f"{name} {safe_url} is not a valid URL"
            ) from None

    async def _fetch(
        self,
        url: str,
        target: httpx.URL,
        *,
        document_name: str = "the client metadata document",
    ) -> tuple[bytes, str]:
        safe_url = display_uri(url[:200])
        try:
            with anyio.fail_after(self._timeout):
                addresses = await self._checked_addresses(target.host, target.port)
                for address in addresses[:-1]:
                    try:
                        return await self._get(target, address, document_name)
                    except httpx.ConnectError:
                        continue
                return await self._get(target, addresses[-1], document_name)
        except TimeoutError:
            raise ClientMetadataError(
                "fetch_timeout", f"fetching {document_name} {safe_url} timed out"
            ) from None
        except httpx.HTTPError as exc:
            log.info(
                "oauth.client_metadata_fetch_failed",
                client_id=safe_url,
                error=type(exc).__name__,
            )
            raise ClientMetadataError(
                "fetch_failed",
                f"fetching {document_name} {safe_url} failed ({type(exc).__name__})",
            ) from None

    async def _checked_addresses(self, host: str, port: int | None) -> list[str]:
        """Resolve ``host`` and return its addresses, in the resolver's order.

        Raises:
            ClientMetadataError: A resolved address is not allowed, or the
                host does not resolve.
        """
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = await anyio.getaddrinfo(
                    host, port or 443, type=socket.SOCK_STREAM
                )
            except OSError:
                raise ClientMetadataError(
                    "fetch_failed", f"the host {host!r} does not resolve"
                ) from None
            addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not addresses:
            raise ClientMetadataError(
                "fetch_failed", f"the host {host!r} does not resolve"
            )
        for address in addresses:
            if not is_public_address(address, allow_loopback=self.allow_loopback):
                raise ClientMetadataError(
                    "forbidden_address",
                    f"the host {host!r} resolves to a private, "
                    "loopback, link-local or reserved address",
                )
        return list(dict.fromkeys(str(address) for address in addresses))

    async def _get(
        self, target: httpx.URL, address: str, document_name: str
    ) -> tuple[bytes, str]:
        # Connect to the checked address, but present the URL's host in the
        # Host header and in TLS (SNI and certificate verification).
        pinned = target.copy_with(host=address)
        headers = {"host": target.netloc.decode("ascii"), "accept": "application/json"}
        extensions: dict[str, Any] = {}
        if target.scheme == "https":
            extensions["sni_hostname"] = target.host
        async with (
            httpx.AsyncClient(
                verify=self._verify, follow_redirects=False, trust_env=False
            ) as http,
            http.stream("GET", pinned, headers=headers, extensions=extensions) as resp,
        ):
            if resp.status_code != 200:
                raise ClientMetadataError(
                    "fetch_failed",
                    f"{document_name} answered HTTP {resp.status_code}, not 200 "
                    "(redirects are not followed)",
                )
            declared = resp.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self._max_bytes:
                raise _too_large(self._max_bytes)
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body.extend(chunk)
                if len(body) > self._max_bytes:
                    raise _too_large(self._max_bytes)
            return bytes(body), resp.headers.get("cache-control", "")

    def _parse(self, url: str, body: bytes) -> tuple[ClientRecord, dict[str, Any]]:
        """Validate a document; return the client record and the decoded document.

        A ``private_key_jwt`` record has no key set yet; :meth:`resolve` adds it.
        """
        safe_url = display_uri(url[:200])
        try:
            document = msgspec.json.decode(body)
        except (msgspec.DecodeError, RecursionError):
            raise ClientMetadataError(
                "invalid_document",
                f"the client metadata document {safe_url} is not valid JSON",
            ) from None
        if not isinstance(document, dict):
            raise ClientMetadataError(
                "invalid_document",
                f"the client metadata document {safe_url} is not a JSON object",
            )
        if document.get("client_id") != url:
            raise ClientMetadataError(
                "invalid_document",
                f"the client_id in the document {safe_url} differs from its URL",
            )
        if "client_secret" in document or "client_secret_expires_at" in document:
            raise ClientMetadataError(
                "invalid_document",
                "a client metadata document must not contain a client secret",
            )
        method = document.get("token_endpoint_auth_method", "none")
        if method not in ("none", "private_key_jwt"):
            raise ClientMetadataError(
                "invalid_document",
                f"token_endpoint_auth_method {method!r} is not supported for a "
                "client metadata document; use 'none', or 'private_key_jwt' with "
                "jwks or jwks_uri",
            )
        try:
            record = validate_metadata(
                {**document, "token_endpoint_auth_method": "none"}
            )
        except RegistrationError as exc:
            raise ClientMetadataError("invalid_document", exc.description) from None
        document_host = urlsplit(url).hostname
        record.client_id = url
        record.metadata_document = True
        record.document_redirects_verified = all(
            urlsplit(uri).scheme == "https" and urlsplit(uri).hostname == document_host
            for uri in record.redirect_uris
        )
        record.created_at = int(time.time())
        if method == "private_key_jwt":
            record.token_endpoint_auth_method = "private_key_jwt"
        return record, document


def cache_seconds(cache_control: str) -> int:
    """Return how long to cache a document, from its ``Cache-Control`` header.

    ``no-store`` and ``no-cache`` give :data:`MIN_CACHE_SECONDS`, because the
    gateway needs the document again at the token endpoint moments later.
    ``max-age`` is bounded to [:data:`MIN_CACHE_SECONDS`,
    :data:`MAX_CACHE_SECONDS`], and a missing one gives
    :data:`DEFAULT_CACHE_SECONDS`.
    """
    if _NO_CACHE.search(cache_control):
        return MIN_CACHE_SECONDS
    match = _MAX_AGE.search(cache_control)
    if match is None:
        return DEFAULT_CACHE_SECONDS
    return max(MIN_CACHE_SECONDS, min(MAX_CACHE_SECONDS, int(match.group(1))))


def resolver_for(request: Request[Any, Any, Any]) -> ClientMetadataResolver:
    """Return the app's resolver, creating it from the config on first use.

    An app may put its own resolver in ``app.state`` under :data:`STATE_KEY`,
    for example one whose TLS context trusts a test CA.
    """
    state = request.app.state
    resolver = state.get(STATE_KEY)
    if isinstance(resolver, ClientMetadataResolver):
        return resolver
    runtime: Runtime = state.runtime
    settings: ClientMetadataConfig = runtime.config.oauth.client_metadata
    resolver = ClientMetadataResolver(
        runtime.store, allow_loopback=settings.allow_loopback
    )
    state[STATE_KEY] = resolver
    return resolver


def _too_large(limit: int) -> ClientMetadataError:
    return ClientMetadataError(
        "document_too_large",
        f"the client metadata document is larger than {limit} bytes",
    )


async def lookup_client(
    request: Request[Any, Any, Any], client_id: str
) -> ClientRecord | None:
    """Return a registered client, or the client its metadata document describes.

    A ``client_id`` that is an http(s) URL is resolved as a metadata document
    when ``oauth.client_metadata.enabled`` is set; any other id is looked up
    in the registry.

    Returns:
        The client, or None when a registry id is unknown or expired.

    Raises:
        ClientMetadataError: The id is a document URL that cannot be used.
    """
    runtime: Runtime = request.app.state.runtime
    if (
        looks_like_document_url(client_id)
        and runtime.config.oauth.client_metadata.enabled
    ):
        return await resolver_for(request).resolve(client_id)
    return await ClientRegistry(runtime.store).get(client_id)
