"""The gateway's OIDC client at the upstream IdP (Okta, or the dev IdP).

It signs users in with the authorization code flow and PKCE, verifies their
ID tokens and refreshes them. The tokens it gets stay on the server: the
callback stores them in a :class:`~gateway.oauth.grants.Grant`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeGuard
from urllib.parse import quote, urlencode, urlsplit

import anyio
import httpx
import structlog
from joserfc.errors import JoseError
from joserfc.jws import CompactSignature, extract_compact, validate_compact

from gateway.errors import ExchangeError, UpstreamError
from gateway.oauth.grants import UpstreamTokens
from gateway.oauth.jwks import JwksRegistry, PublicKey, RemoteJwks

if TYPE_CHECKING:
    from gateway.config import UpstreamConfig

log = structlog.get_logger("gateway.oauth.upstream")

ID_TOKEN_ALGORITHMS = frozenset({"RS256", "ES256"})
"""Signature algorithms accepted on upstream ID tokens."""

NOT_ID_TOKEN_TYPES = frozenset(
    {
        "at+jwt",
        "oauth-id-jag+jwt",
        "logout+jwt",
        "secevent+jwt",
        "token-introspection+jwt",
    }
)
"""``typ`` values (RFC 8725 section 3.11) that mark a JWT as another kind of token.

OpenID Connect requires no ``typ`` on ID tokens, so any other value, or
none, is accepted.
"""

METADATA_TTL = 3600.0
"""Seconds the IdP's discovery document is cached."""

METADATA_RETRY = 30.0
"""Seconds before another try after a failed refresh of the discovery document."""

_MAX_RESPONSE_BYTES = 256 * 1024


class UpstreamClient:
    """The OIDC relying party of the upstream IdP; implements ``UpstreamRefresher``.

    Args:
        config: The ``upstream`` config section.
        redirect_uri: The gateway's callback URL registered at the IdP.
        http: The client used for every call to the IdP.
        leeway: Seconds of clock skew tolerated on ID token times;
            ``config.leeway`` when None.
        timeout: Seconds allowed for one call to the IdP.
        clock: Returns the current time in seconds, for the ID token times.
        jwks: The cache of the IdP's key set. Clients of one IdP that get the
            same registry share one cache and one re-fetch limit. When None,
            the client creates a registry of its own.
    """

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        redirect_uri: str,
        http: httpx.AsyncClient,
        leeway: int | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        jwks: JwksRegistry | None = None,
    ) -> None:
        self.config = config
        self.redirect_uri = redirect_uri
        self._http = http
        self._leeway = config.leeway if leeway is None else leeway
        self._clock = clock
        self._timeout = timeout
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._metadata_lock = anyio.Lock()
        self._jwks: RemoteJwks | None = None
        self._jwks_registry = jwks or JwksRegistry(http)

    @property
    def issuer(self) -> str:
        """The IdP's issuer, exactly as configured."""
        return self.config.issuer

    async def metadata(self) -> dict[str, Any]:
        """Return the IdP's OpenID Connect discovery document, cached for an hour.

        Raises:
            UpstreamError: ``idp_unavailable`` when it cannot be fetched and no
                earlier copy exists, or ``idp_misconfigured`` when its
                ``issuer`` differs from the configured one or an endpoint is
                missing.
        """
        fresh = time.monotonic() - self._metadata_at < METADATA_TTL
        if self._metadata is not None and fresh:
            return self._metadata
        async with self._metadata_lock:
            fresh = time.monotonic() - self._metadata_at < METADATA_TTL
            if self._metadata is not None and fresh:
                return self._metadata
            try:
                document = await self._fetch_metadata()
            except UpstreamError as exc:
                if self._metadata is None or exc.reason != "idp_unavailable":
                    raise
                log.warning("upstream.metadata_refresh_failed", error=str(exc))
                # Keep the old document and try again in METADATA_RETRY seconds.
                self._metadata_at = time.monotonic() - METADATA_TTL + METADATA_RETRY
                return self._metadata
            self._metadata = document
            self._metadata_at = time.monotonic()
            if self._jwks is None or self._jwks.uri != document["jwks_uri"]:
                self._jwks = self._jwks_registry.get(document["jwks_uri"])
            return document

    async def token_endpoint(self) -> str:
        """Return the IdP's token endpoint from its discovery document."""
        endpoint: str = (await self.metadata())["token_endpoint"]
        return endpoint

    def client_auth(
        self, data: dict[str, str], *, token_endpoint: str | None = None
    ) -> tuple[dict[str, str], httpx.Auth | None]:
        """Add the gateway's client authentication to a token request.

        Args:
            data: The token request parameters.
            token_endpoint: The URL the request goes to, the ``aud`` of a
                ``private_key_jwt`` assertion; required for that method.

        Returns:
            The form data (with ``client_id`` and, for ``client_secret_post``,
            ``client_secret``, for ``private_key_jwt`` the client assertion)
            and the ``httpx.Auth`` to send it with (HTTP Basic for
            ``client_secret_basic``, else None).

        Raises:
            UpstreamError: ``idp_misconfigured`` when the private key cannot
                be used.
        """
        if self.config.token_endpoint_auth_method == "private_key_jwt":
            return self._private_key_jwt(data, token_endpoint)
        form = dict(data)
        form["client_id"] = self.config.client_id
        if self.config.token_endpoint_auth_method == "client_secret_post":
            form["client_secret"] = self.config.client_secret
            return form, None
        # RFC 6749 section 2.3.1: form-encode both parts before Basic encoding.
        auth = httpx.BasicAuth(
            _form_encode(self.config.client_id), _form_encode(self.config.client_secret)
        )
        return form, auth

    def _private_key_jwt(
        self, data: dict[str, str], token_endpoint: str | None
    ) -> tuple[dict[str, str], httpx.Auth | None]:
        # Imported here: gateway.exchange imports gateway.oauth.
        from gateway.exchange.client_assertion import (
            ClientKeyError,
            authenticate_request,
        )

        if token_endpoint is None:
            msg = "private_key_jwt needs the token endpoint URL"
            raise UpstreamError(msg, reason="idp_misconfigured")
        try:
            return authenticate_request(
                data,
                method="private_key_jwt",
                client_id=self.config.client_id,
                client_secret="",
                token_endpoint=token_endpoint,
                key_file=self.config.private_key_file,
                key_id=self.config.private_key_id,
                algorithm=self.config.private_key_algorithm,
            )
        except ClientKeyError as exc:
            msg = f"the upstream client key cannot be used: {exc}"
            raise UpstreamError(msg, reason="idp_misconfigured") from None

    async def authorization_url(
        self, *, state: str, nonce: str, code_challenge: str, login_hint: str | None
    ) -> str:
        """Return the IdP authorization URL that starts a user's sign-in."""
        endpoint = (await self.metadata())["authorization_endpoint"]
        params = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(self.config.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        if login_hint:
            params["login_hint"] = login_hint
        separator = "&" if urlsplit(endpoint).query else "?"
        return f"{endpoint}{separator}{urlencode(params)}"

    async def exchange_code(
        self, code: str, code_verifier: str, *, nonce: str
    ) -> tuple[dict[str, Any], UpstreamTokens]:
        """Redeem an authorization code and verify the ID token that comes back.

        Returns:
            The verified ID token claims and the upstream tokens.

        Raises:
            ExchangeError: The IdP rejected the code (``step="authorization_code"``).
            UpstreamError: ``idp_unavailable`` on a network failure or a 5xx, or
                ``invalid_id_token`` when the ID token fails verification.
        """
        body = await self._token_request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.redirect_uri,
                "code_verifier": code_verifier,
            },
            step="authorization_code",
        )
        return await self._tokens_from(body, nonce=nonce)

    async def refresh(self, refresh_token: str) -> UpstreamTokens:
        """Refresh the user's upstream tokens; the ID token is verified.

        Raises:
            ExchangeError: The IdP returned an OAuth error, or no ID token
                (``step="upstream_refresh"``).
            UpstreamError: ``idp_unavailable`` on a network failure or a 5xx, or
                ``invalid_id_token`` when the new ID token fails verification.
        """
        body = await self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token},
            step="upstream_refresh",
        )
        _, tokens = await self._tokens_from(body, nonce=None)
        return tokens

    async def verify_id_token(
        self, id_token: str, *, nonce: str | None
    ) -> dict[str, Any]:
        """Verify an ID token of this IdP issued to the gateway's client.

        Checks the signature against the IdP's JWKS (RS256 or ES256 only, so
        never ``none`` or HMAC), ``iss`` exactly, ``aud`` (and ``azp`` when there
        are several audiences), ``exp``, ``iat`` and ``nbf`` with the leeway,
        ``sub``, and ``nonce`` when one is given. A ``typ`` header that marks
        another kind of token, such as ``at+jwt``, is rejected. A ``kid`` the
        cached JWKS lacks, or a known ``kid`` whose key fails the signature,
        makes the JWKS be fetched again (see :class:`RemoteJwks`).

        Raises:
            UpstreamError: ``invalid_id_token`` naming the failed check, or
                ``idp_unavailable`` when the JWKS cannot be loaded.
        """
        await self.metadata()
        assert self._jwks is not None  # set by metadata()
        try:
            obj = extract_compact(id_token.encode("ascii"))
        except (JoseError, ValueError, TypeError, UnicodeError):
            raise _invalid("it is not a compact JWS") from None
        header = obj.headers()
        alg = header.get("alg")
        if alg not in ID_TOKEN_ALGORITHMS or "crit" in header or "b64" in header:
            raise _invalid(f"its algorithm {alg!r} is not one of RS256, ES256")
        typ = header.get("typ")
        if isinstance(typ, str) and (
            typ.lower().removeprefix("application/") in NOT_ID_TOKEN_TYPES
        ):
            raise _invalid(f"its typ {typ!r} marks another kind of token")
        kid = header.get("kid")
        key = await self._jwks.key_for(kid if isinstance(kid, str) else None, alg)
        if key is None:
            raise _invalid(f"no key of the IdP's JWKS matches kid {kid!r}")
        if not _signature_valid(obj, key, alg):
            # The IdP may have published new material under the same kid.
            replacement = await self._jwks.replacement_for(key, alg)
            if replacement is None or not _signature_valid(obj, replacement, alg):
                raise _invalid("its signature is invalid")
        try:
            claims = json.loads(obj.payload or b"")
        except ValueError:
            claims = None
        if not isinstance(claims, dict):
            raise _invalid("its payload is not a JSON object")
        self._check_id_token_claims(claims, nonce)
        return claims

    def _check_id_token_claims(self, claims: dict[str, Any], nonce: str | None) -> None:
        now = self._clock()
        if claims.get("iss") != self.config.issuer:
            raise _invalid(
                f"its iss {claims.get('iss')!r} is not {self.config.issuer!r}"
            )
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if self.config.client_id not in audiences:
            raise _invalid("its aud does not name the gateway's client")
        if len(audiences) > 1 and claims.get("azp") != self.config.client_id:
            raise _invalid(
                "it has several audiences and azp is not the gateway's client"
            )
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise _invalid("it has no sub")
        exp = claims.get("exp")
        if not _is_number(exp) or exp + self._leeway <= now:
            raise _invalid("it has expired or has no exp")
        iat = claims.get("iat")
        if not _is_number(iat) or iat - self._leeway > now:
            raise _invalid("its iat is missing or in the future")
        nbf = claims.get("nbf")
        if nbf is not None and (not _is_number(nbf) or nbf - self._leeway > now):
            raise _invalid("it is not valid yet (nbf)")
        if nonce is not None and claims.get("nonce") != nonce:
            raise _invalid("its nonce does not match the sign-in request")

    async def _tokens_from(
        self, body: dict[str, Any], *, nonce: str | None
    ) -> tuple[dict[str, Any], UpstreamTokens]:
        id_token = body.get("id_token")
        step = "authorization_code" if nonce is not None else "upstream_refresh"
        if not isinstance(id_token, str) or not id_token:
            raise ExchangeError(
                "the IdP's token response has no id_token",
                oauth_error="invalid_response",
                step=step,
            )
        claims = await self.verify_id_token(id_token, nonce=nonce)
        refresh_token = body.get("refresh_token")
        tokens = UpstreamTokens(
            id_token=id_token,
            id_token_expires_at=int(claims["exp"]),
            refresh_token=refresh_token if isinstance(refresh_token, str) else None,
        )
        return claims, tokens

    async def _token_request(
        self, data: dict[str, str], *, step: str
    ) -> dict[str, Any]:
        endpoint = await self.token_endpoint()
        form, auth = self.client_auth(data, token_endpoint=endpoint)
        try:
            response = await self._http.post(
                endpoint,
                data=form,
                auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
                headers={"accept": "application/json"},
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            msg = (
                f"the IdP token endpoint could not be reached: {exc.__class__.__name__}"
            )
            raise UpstreamError(msg, reason="idp_unavailable") from exc
        body = _json_object(response)
        if response.status_code >= 500 or response.status_code == 429:
            msg = f"the IdP token endpoint returned HTTP {response.status_code}"
            raise UpstreamError(
                msg, reason="idp_unavailable", retry_after=_retry_after(response)
            )
        if response.status_code != 200:
            error = body.get("error") if body else None
            oauth_error = error if isinstance(error, str) else "invalid_response"
            log.info(
                "upstream.token_request_rejected",
                step=step,
                status=response.status_code,
                oauth_error=oauth_error,
            )
            raise ExchangeError(
                f"the IdP rejected the {step} request with {oauth_error!r}",
                oauth_error=oauth_error,
                step=step,
            )
        if body is None:
            raise ExchangeError(
                "the IdP's token response is not a JSON object",
                oauth_error="invalid_response",
                step=step,
            )
        return body

    async def _fetch_metadata(self) -> dict[str, Any]:
        url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
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
        document = _json_object(response)
        if response.status_code != 200 or document is None:
            msg = (
                f"the IdP discovery document {url} returned HTTP {response.status_code}"
            )
            raise UpstreamError(
                msg, reason="idp_unavailable", retry_after=_retry_after(response)
            )
        if document.get("issuer") != self.config.issuer:
            msg = (
                f"the IdP discovery document names issuer {document.get('issuer')!r}, "
                f"but upstream.issuer is {self.config.issuer!r}; they must be equal"
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


def _signature_valid(obj: CompactSignature, key: PublicKey, alg: str) -> bool:
    try:
        return bool(validate_compact(obj, key, algorithms=[alg]))
    except (JoseError, ValueError):
        return False


def _invalid(problem: str) -> UpstreamError:
    return UpstreamError(
        f"the upstream ID token is invalid: {problem}", reason="invalid_id_token"
    )


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _form_encode(value: str) -> str:
    return quote(value, safe="")


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    if len(response.content) > _MAX_RESPONSE_BYTES:
        return None
    try:
        body = response.json()
    except (ValueError, RecursionError):
        # The standard json module raises RecursionError on deep nesting.
        return None
    return body if isinstance(body, dict) else None


def _retry_after(response: httpx.Response) -> int | None:
    value = response.headers.get("retry-after", "")
    return int(value) if value.isdigit() else None
