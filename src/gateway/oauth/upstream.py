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

import httpx
import structlog
from joserfc.errors import JoseError
from joserfc.jws import CompactSignature, extract_compact, validate_compact

from gateway.errors import ExchangeError, UpstreamError
from gateway.oauth.grants import UpstreamTokens
from gateway.oauth.idp_metadata import (
    METADATA_RETRY,
    METADATA_TTL,
    IdpMetadata,
)
from gateway.oauth.idp_metadata import read_json_object as _json_object
from gateway.oauth.idp_metadata import retry_after_seconds as _retry_after
from gateway.oauth.jwks import JwksRegistry, PublicKey

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

__all__ = ["ID_TOKEN_ALGORITHMS", "METADATA_RETRY", "METADATA_TTL", "UpstreamClient"]


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
        metadata: The IdP's discovery document and key set, shared by the
            clients of one IdP; when given, ``jwks`` is not used. When None,
            the client fetches its own.

    Raises:
        ValueError: ``metadata`` belongs to another issuer than ``config``.
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
        metadata: IdpMetadata | None = None,
    ) -> None:
        if metadata is not None and metadata.issuer != config.issuer:
            msg = (
                f"the shared metadata is for {metadata.issuer!r}, not {config.issuer!r}"
            )
            raise ValueError(msg)
        self.config = config
        self.redirect_uri = redirect_uri
        self._http = http
        self._leeway = config.leeway if leeway is None else leeway
        self._clock = clock
        self._timeout = timeout
        self._idp = metadata or IdpMetadata(
            config.issuer, http=http, timeout=timeout, jwks=jwks
        )

    @property
    def client_id(self) -> str:
        """The client id at the IdP: the ``aud`` of the ID tokens it accepts."""
        return self.config.client_id

    @property
    def issuer(self) -> str:
        """The IdP's issuer, exactly as configured."""
        return self.config.issuer

    @property
    def idp(self) -> IdpMetadata:
        """The IdP's discovery document and key set, shared with other clients."""
        return self._idp

    async def metadata(self) -> dict[str, Any]:
        """Return the IdP's OpenID Connect discovery document, cached for an hour.

        Raises:
            UpstreamError: ``idp_unavailable`` when it cannot be fetched and no
                earlier copy exists, or ``idp_misconfigured`` when its
                ``issuer`` differs from the configured one or an endpoint is
                missing.
        """
        return await self._idp.document()

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

    async def refresh(
        self, refresh_token: str, *, client_id: str | None = None
    ) -> UpstreamTokens:
        """Refresh the user's upstream tokens; the ID token is verified.

        Args:
            refresh_token: The upstream refresh token.
            client_id: The upstream client the refresh token was issued to;
                None means this client.

        Raises:
            ExchangeError: The IdP returned an OAuth error, or no ID token
                (``step="upstream_refresh"``).
            UpstreamError: ``idp_unavailable`` on a network failure or a 5xx,
                ``invalid_id_token`` when the new ID token fails verification,
                or ``idp_misconfigured`` when ``client_id`` names another
                client.
        """
        if client_id is not None and client_id != self.config.client_id:
            msg = (
                f"the refresh token belongs to the upstream client {client_id!r}, "
                f"not {self.config.client_id!r}"
            )
            raise UpstreamError(msg, reason="idp_misconfigured")
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
        jwks = await self._idp.key_set()
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
        key = await jwks.key_for(kid if isinstance(kid, str) else None, alg)
        if key is None:
            raise _invalid(f"no key of the IdP's JWKS matches kid {kid!r}")
        if not _signature_valid(obj, key, alg):
            # The IdP may have published new material under the same kid.
            replacement = await jwks.replacement_for(key, alg)
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
            issuer=claims["iss"],
            subject=claims["sub"],
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
            raise _token_endpoint_unavailable(response, body, step)
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


def _token_endpoint_unavailable(
    response: httpx.Response, body: dict[str, Any] | None, step: str
) -> UpstreamError:
    """Return the ``idp_unavailable`` error of a token endpoint 5xx or 429.

    It carries the body's OAuth ``error`` code, when it has a short printable
    one, as ``oauth_error`` for events.
    """
    # Imported here: gateway.exchange imports gateway.oauth.
    from gateway.exchange._requests import DEFAULT_RETRY_AFTER, ServerUnavailableError

    error = body.get("error") if body else None
    oauth_error = None
    if isinstance(error, str) and 0 < len(error) <= 64 and error.isprintable():
        oauth_error = error
    msg = f"the IdP token endpoint returned HTTP {response.status_code}"
    if oauth_error is not None:
        msg += f" ({oauth_error})"
    return ServerUnavailableError(
        msg,
        reason="idp_unavailable",
        step=step,
        retry_after=_retry_after(response) or DEFAULT_RETRY_AFTER,
        oauth_error=oauth_error,
    )
