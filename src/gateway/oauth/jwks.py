"""A cache of a remote JWK Set that follows key rotation.

The policy (OpenID Connect Core section 10.1.1 expects relying parties to
re-fetch on an unfamiliar ``kid``):

- the set is fetched on first use and again after ``ttl`` seconds;
- an unknown ``kid`` triggers one immediate re-fetch, at most once per
  ``min_refetch_interval`` seconds, shared by concurrent callers;
- so does a known ``kid`` whose key fails the signature, in case the IdP
  reused the ``kid`` for new key material (:meth:`RemoteJwks.replacement_for`);
- a failed fetch keeps the last good set, and the next try waits
  ``min_refetch_interval`` seconds; only a cache that never loaded raises.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from gateway.errors import UpstreamError

if TYPE_CHECKING:
    import httpx

log = structlog.get_logger("gateway.oauth.jwks")

PublicKey = ECKey | RSAKey

MAX_JWKS_BYTES = 512 * 1024


class RemoteJwks:
    """The public keys published at one ``jwks_uri``.

    Args:
        http: The client used for fetches.
        uri: The JWK Set URL.
        ttl: Seconds after which the set is fetched again on the next use.
        min_refetch_interval: Minimum seconds between fetches caused by an
            unknown ``kid``.
        timeout: Seconds allowed for one fetch.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        uri: str,
        *,
        ttl: float = 3600.0,
        min_refetch_interval: float = 30.0,
        timeout: float = 10.0,
    ) -> None:
        self.uri = uri
        self._http = http
        self._ttl = ttl
        self._min_refetch_interval = min_refetch_interval
        self._timeout = timeout
        self._keys: list[PublicKey] | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._forced_at: float | None = None
        self._lock = anyio.Lock()

    async def key_for(self, kid: str | None, alg: str) -> PublicKey | None:
        """Return the key for a JWS header's ``kid`` and ``alg``, or None.

        Without a ``kid`` the key is found only when exactly one key of the
        set can verify ``alg``.

        Raises:
            UpstreamError: ``idp_unavailable`` when the set was never loaded
                and cannot be fetched now.
        """
        if self._keys is None or self._is_stale():
            await self._refresh(forced=False)
        key = self._find(kid, alg)
        if key is None and self._may_force():
            await self._refresh(forced=True)
            key = self._find(kid, alg)
        return key

    async def load(self) -> int:
        """Fetch the set unless a fresh copy is cached; return its number of keys.

        Raises:
            UpstreamError: ``idp_unavailable`` when the set was never loaded
                and cannot be fetched now.
        """
        if self._keys is None or self._is_stale():
            await self._refresh(forced=False)
        return len(self._keys or [])

    async def replacement_for(self, failed: PublicKey, alg: str) -> PublicKey | None:
        """Return a new key for a ``kid`` whose cached key failed a signature.

        Re-fetches the set under the same limit as an unknown ``kid``, and
        returns the key now published under ``failed.kid`` when its material
        differs from ``failed``.

        Raises:
            UpstreamError: ``idp_unavailable`` when the set was never loaded
                and cannot be fetched now.
        """
        if not self._may_force():
            return None
        await self._refresh(forced=True)
        key = self._find(failed.kid, alg)
        if key is None or key.thumbprint() == failed.thumbprint():
            return None
        return key

    def _is_stale(self) -> bool:
        now = time.monotonic()
        if now - self._fetched_at < self._ttl:
            return False
        # After a failed fetch, wait before the next try rather than make
        # every verification wait for an endpoint that is down.
        attempted = self._attempted_at
        return attempted is None or now - attempted >= self._min_refetch_interval

    def _may_force(self) -> bool:
        if self._forced_at is None:
            return True
        return time.monotonic() - self._forced_at >= self._min_refetch_interval

    def _find(self, kid: str | None, alg: str) -> PublicKey | None:
        candidates = [key for key in self._keys or [] if _can_verify(key, alg)]
        if kid is None:
            return candidates[0] if len(candidates) == 1 else None
        for key in candidates:
            if key.kid == kid:
                return key
        return None

    async def _refresh(self, *, forced: bool) -> None:
        started = time.monotonic()
        async with self._lock:
            # Another caller fetched while this one waited: use its result.
            if self._attempted_at is not None and self._attempted_at >= started:
                return
            if forced:
                if not self._may_force():
                    return
                self._forced_at = time.monotonic()
            self._attempted_at = time.monotonic()
            try:
                keys = await self._fetch()
            except UpstreamError as exc:
                if self._keys is None:
                    raise
                log.warning(
                    "jwks.refresh_failed",
                    uri=self.uri,
                    error=str(exc),
                    kept=len(self._keys),
                )
                return
            self._keys = keys
            self._fetched_at = time.monotonic()
            log.info("jwks.refreshed", uri=self.uri, keys=len(keys), forced=forced)

    async def _fetch(self) -> list[PublicKey]:
        import httpx

        try:
            response = await self._http.get(
                self.uri, headers={"accept": "application/json"}, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            msg = f"fetching the JWK Set {self.uri} failed: {exc.__class__.__name__}"
            raise UpstreamError(msg, reason="idp_unavailable") from exc
        if response.status_code != 200 or len(response.content) > MAX_JWKS_BYTES:
            msg = (
                f"fetching the JWK Set {self.uri} returned HTTP {response.status_code}"
            )
            raise UpstreamError(msg, reason="idp_unavailable")
        try:
            document = response.json()
        except (ValueError, RecursionError):
            # The standard json module raises RecursionError on deep nesting.
            document = None
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            msg = f"the JWK Set at {self.uri} has no 'keys' array"
            raise UpstreamError(msg, reason="idp_unavailable")
        return [key for key in map(_import_public_key, entries) if key is not None]


class JwksRegistry:
    """One :class:`RemoteJwks` per ``jwks_uri``, shared by every client of an issuer.

    Several relying parties of one IdP (the gateway's own client and, for
    example, one client per verified agent) then share one cache and one
    re-fetch limit, so the limit applies per issuer rather than per client.

    Args:
        http: The client used for fetches.
        min_refetch_interval: Passed to every :class:`RemoteJwks` created.
    """

    def __init__(
        self, http: httpx.AsyncClient, *, min_refetch_interval: float = 30.0
    ) -> None:
        self._http = http
        self._min_refetch_interval = min_refetch_interval
        self._sets: dict[str, RemoteJwks] = {}

    def get(self, uri: str) -> RemoteJwks:
        """Return the key set of ``uri``, created on first use."""
        jwks = self._sets.get(uri)
        if jwks is None:
            jwks = RemoteJwks(
                self._http, uri, min_refetch_interval=self._min_refetch_interval
            )
            self._sets[uri] = jwks
        return jwks


def _import_public_key(entry: Any) -> PublicKey | None:
    """Import one verification key; skip encryption keys and unusable entries."""
    if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
        return None
    public = {name: value for name, value in entry.items() if name not in _PRIVATE}
    try:
        if public.get("kty") == "RSA":
            return RSAKey.import_key(public)
        if public.get("kty") == "EC" and public.get("crv") == "P-256":
            return ECKey.import_key(public)
    except (JoseError, ValueError, TypeError):
        log.warning("jwks.key_skipped", kid=entry.get("kid"), kty=entry.get("kty"))
    return None


# Private members of RSA and EC JWKs (RFC 7518 section 6); a JWKS must not
# carry them, and they are dropped if it does.
_PRIVATE = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})


def _can_verify(key: PublicKey, alg: str) -> bool:
    if key.alg is not None and key.alg != alg:
        return False
    if alg == "RS256":
        return isinstance(key, RSAKey)
    if alg == "ES256":
        return isinstance(key, ECKey)
    return False
