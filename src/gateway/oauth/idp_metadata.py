"""The upstream IdP's discovery document and key set, shared by all its clients.

The gateway's own upstream client and each verified agent's client sign users
in at the same issuer. They share one :class:`IdpMetadata`, so the discovery
document is fetched once for all of them, and one JWKS cache with one re-fetch
limit (see :class:`~gateway.oauth.jwks.JwksRegistry`).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import structlog

from gateway.errors import UpstreamError
from gateway.oauth.jwks import JwksRegistry, RemoteJwks

__all__ = [
    "METADATA_RETRY",
    "METADATA_TTL",
    "IdpMetadata",
    "read_json_object",
    "retry_after_seconds",
]

log = structlog.get_logger("gateway.oauth.upstream")

METADATA_TTL = 3600.0
"""Seconds the IdP's discovery document is cached."""

METADATA_RETRY = 30.0
"""Seconds before another try after a failed refresh of the discovery document."""

MAX_RESPONSE_BYTES = 256 * 1024
"""Largest IdP response body read as JSON; a larger one counts as unusable."""


class IdpMetadata:
    """The OpenID Connect discovery document and JWKS of one issuer.

    Args:
        issuer: The IdP issuer, exactly as configured.
        http: The client used for every fetch.
        timeout: Seconds allowed for one fetch.
        jwks: The registry of key sets; one is created when None.
    """

    def __init__(
        self,
        issuer: str,
        *,
        http: httpx.AsyncClient,
        timeout: float = 10.0,
        jwks: JwksRegistry | None = None,
    ) -> None:
        self.issuer = issuer
        self._http = http
        self._timeout = timeout
        self._document: dict[str, Any] | None = None
        self._fetched_at = 0.0
        self._lock = anyio.Lock()
        self._jwks: RemoteJwks | None = None
        self._jwks_registry = jwks or JwksRegistry(http)

    async def document(self) -> dict[str, Any]:
        """Return the discovery document, cached for :data:`METADATA_TTL` seconds.

        When a refresh fails because the IdP is unreachable, the last good
        document is kept and the next try waits :data:`METADATA_RETRY` seconds.

        Raises:
            UpstreamError: ``idp_unavailable`` when it cannot be fetched and no
                earlier copy exists, or ``idp_misconfigured`` when its
                ``issuer`` differs from the configured one or an endpoint is
                missing.
        """
        if self._document is not None and self._fresh():
            return self._document
        async with self._lock:
            if self._document is not None and self._fresh():
                return self._document
            try:
                document = await self._fetch()
            except UpstreamError as exc:
                if self._document is None or exc.reason != "idp_unavailable":
                    raise
                log.warning("upstream.metadata_refresh_failed", error=str(exc))
                self._fetched_at = time.monotonic() - METADATA_TTL + METADATA_RETRY
                return self._document
            self._document = document
            self._fetched_at = time.monotonic()
            if self._jwks is None or self._jwks.uri != document["jwks_uri"]:
                self._jwks = self._jwks_registry.get(document["jwks_uri"])
            return document

    async def key_set(self) -> RemoteJwks:
        """Return the cache of the key set that the discovery document names.

        Raises:
            UpstreamError: See :meth:`document`.
        """
        await self.document()
        assert self._jwks is not None  # set by document()
        return self._jwks

    def _fresh(self) -> bool:
        return time.monotonic() - self._fetched_at < METADATA_TTL

    async def _fetch(self) -> dict[str, Any]:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            response = await self._http.get(
                url, headers={"accept": "application/json"}, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            msg = (
                f"the IdP discovery document {url} could not be fetched: "
                f"{exc.__class__.__name__}"
            )
            raise UpstreamError(msg, reason="idp_unavailable") from exc
        document = read_json_object(response)
        if response.status_code != 200 or document is None:
            msg = (
                f"the IdP discovery document {url} returned HTTP {response.status_code}"
            )
            raise UpstreamError(
                msg, reason="idp_unavailable", retry_after=retry_after_seconds(response)
            )
        if document.get("issuer") != self.issuer:
            msg = (
                f"the IdP discovery document names issuer {document.get('issuer')!r}, "
                f"but upstream.issuer is {self.issuer!r}; they must be equal"
            )
            raise UpstreamError(msg, reason="idp_misconfigured")
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = document.get(name)
            if not isinstance(value, str) or urlsplit(value).scheme not in (
                "http",
                "https",
            ):
                msg = f"the IdP discovery document has no usable {name}"
                raise UpstreamError(msg, reason="idp_misconfigured")
        return document


def read_json_object(response: httpx.Response) -> dict[str, Any] | None:
    """Return a response body that is a JSON object, or None for anything else."""
    if len(response.content) > MAX_RESPONSE_BYTES:
        return None
    try:
        body = response.json()
    except (ValueError, RecursionError):
        # The standard json module raises RecursionError on deep nesting.
        return None
    return body if isinstance(body, dict) else None


def retry_after_seconds(response: httpx.Response) -> int | None:
    """Return a ``Retry-After`` given in seconds, or None."""
    value = response.headers.get("retry-after", "")
    return int(value) if value.isdigit() else None
