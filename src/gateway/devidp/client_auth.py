"""Client authentication at a token endpoint (RFC 6749 2.3, RFC 7523 2.2).

Three methods are implemented: ``client_secret_basic``, ``client_secret_post``
and ``private_key_jwt``. A request must use exactly one. Every failure is
``invalid_client`` with status 401, except a request that mixes methods, which
is ``invalid_request``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar
from urllib.parse import unquote_plus

import msgspec
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ._http import OAuthError, Params
from ._store import ExpiringStore, StoreFullError
from ._urns import CLIENT_ASSERTION_JWT_BEARER
from .keys import JwtRejectedError, read_unverified_header, verify_jwt
from .settings import DevClient, DevRasClient, TokenEndpointAuthMethod

__all__ = ["ClientAuthenticator"]

ClientT = TypeVar("ClientT", DevClient, DevRasClient)

_ASSERTION_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "ES512")
# Okta rejects a client assertion whose exp lies more than one hour ahead.
_MAX_ASSERTION_LIFETIME = 3600


def _failed(description: str = "client authentication failed") -> OAuthError:
    return OAuthError("invalid_client", description, status_code=401)


class ClientAuthenticator(Generic[ClientT]):
    """Authenticate the clients registered at one token endpoint.

    Args:
        clients: Registered clients by ``client_id``.
        token_endpoint: This endpoint's URL, the required ``aud`` of assertions.
        clock: Returns the current time in seconds.
        leeway: Allowed clock skew in seconds.
        max_assertions: Bound on remembered assertion ``jti`` values.
    """

    def __init__(
        self,
        clients: Mapping[str, ClientT],
        *,
        token_endpoint: str,
        clock: Callable[[], float],
        leeway: int,
        max_assertions: int,
    ) -> None:
        self._clients: Mapping[str, ClientT] = dict(clients)
        self._token_endpoint = token_endpoint
        self._clock = clock
        self._leeway = leeway
        self._used_jtis: ExpiringStore[bool] = ExpiringStore(
            max_entries=max_assertions, clock=clock
        )
        self._key_sets: dict[str, KeySet] = {}

    def authenticate(self, authorization: str | None, form: Params) -> ClientT:
        """Return the client that the request authenticates as.

        Args:
            authorization: The ``Authorization`` header, if any.
            form: The token request parameters.

        Raises:
            OAuthError: ``invalid_client`` (401) or ``invalid_request`` (400).
        """
        basic = authorization is not None and authorization[:6].lower() == "basic "
        methods = [
            name
            for name, used in (
                ("client_secret_basic", basic),
                ("client_secret_post", "client_secret" in form),
                ("private_key_jwt", "client_assertion" in form),
            )
            if used
        ]
        if len(methods) > 1:
            msg = f"use exactly one client authentication method, not {methods!r}"
            raise OAuthError("invalid_request", msg)
        if not methods:
            raise _failed("client authentication is required")
        if basic:
            assert authorization is not None
            client_id, secret = _parse_basic(authorization[6:])
            form_client_id = form.get("client_id")
            if form_client_id is not None and form_client_id != client_id:
                msg = "client_id in the body differs from the authenticated client"
                raise OAuthError("invalid_request", msg)
            client = self._find(client_id, "client_secret_basic")
            _check_secret(client, secret)
            return client
        if methods[0] == "client_secret_post":
            client = self._find(form.require("client_id"), "client_secret_post")
            _check_secret(client, form.require("client_secret"))
            return client
        return self._authenticate_assertion(form)

    def _find(self, client_id: str, method: TokenEndpointAuthMethod) -> ClientT:
        client = self._clients.get(client_id)
        if client is None:
            raise _failed()
        pinned = client.token_endpoint_auth_method
        if pinned is not None and pinned != method:
            raise _failed(f"this client must authenticate with {pinned}")
        return client

    def _authenticate_assertion(self, form: Params) -> ClientT:
        if form.get("client_assertion_type") != CLIENT_ASSERTION_JWT_BEARER:
            msg = f"client_assertion_type must be {CLIENT_ASSERTION_JWT_BEARER}"
            raise _failed(msg)
        assertion = form.require("client_assertion")
        try:
            read_unverified_header(assertion)
            claimed = _unverified_issuer(assertion)
        except JwtRejectedError as exc:
            raise _failed(f"the client assertion is invalid: {exc}") from exc

        form_client_id = form.get("client_id")
        if form_client_id is not None and form_client_id != claimed:
            msg = "client_id differs from the client assertion issuer"
            raise OAuthError("invalid_request", msg)
        client = self._find(claimed, "private_key_jwt")
        if client.jwks is None:
            raise _failed("this client has no registered keys")

        now = int(self._clock())
        try:
            _, claims = verify_jwt(
                assertion,
                self._key_set(client),
                algorithms=_ASSERTION_ALGORITHMS,
                now=now,
                leeway=self._leeway,
                required_claims=("iss", "sub", "aud", "exp"),
            )
        except JwtRejectedError as exc:
            raise _failed(f"the client assertion is invalid: {exc}") from exc

        if claims["iss"] != client.client_id or claims["sub"] != client.client_id:
            raise _failed("the client assertion iss and sub must be the client_id")
        audience = claims["aud"]
        audiences = audience if isinstance(audience, list) else [audience]
        if self._token_endpoint not in audiences:
            msg = f"the client assertion aud must be {self._token_endpoint!r}"
            raise _failed(msg)
        expires_at = claims["exp"]
        if expires_at > now + _MAX_ASSERTION_LIFETIME + self._leeway:
            raise _failed("the client assertion must expire within one hour")

        jti = claims.get("jti")
        if jti is not None:
            key = f"{client.client_id}\n{jti}"
            if self._used_jtis.get(key) is not None:
                raise _failed("the client assertion was already used")
            try:
                self._used_jtis.put(key, True, expires_at=float(expires_at))
            except StoreFullError as exc:
                raise OAuthError(
                    "temporarily_unavailable", "too many client assertions in use"
                ) from exc
        return client

    def _key_set(self, client: ClientT) -> KeySet:
        key_set = self._key_sets.get(client.client_id)
        if key_set is None:
            assert client.jwks is not None
            try:
                key_set = KeySet.import_key_set(client.jwks)  # type: ignore[arg-type]
            except (JoseError, ValueError, TypeError) as exc:
                raise _failed("the registered client keys cannot be loaded") from exc
            self._key_sets[client.client_id] = key_set
        return key_set


def _parse_basic(credentials: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise _failed("the Basic credentials are not valid base64") from exc
    client_id, separator, secret = decoded.partition(":")
    if not separator:
        raise _failed("the Basic credentials lack a ':'")
    # RFC 6749 section 2.3.1: both parts are form-encoded before base64.
    return unquote_plus(client_id), unquote_plus(secret)


def _check_secret(client: DevClient | DevRasClient, secret: str) -> None:
    expected = client.client_secret
    if expected is None or not hmac.compare_digest(
        expected.encode("utf-8"), secret.encode("utf-8")
    ):
        raise _failed()


def _unverified_issuer(assertion: str) -> str:
    """Return the ``iss`` of a JWS payload, before its signature is checked."""
    try:
        payload_segment = assertion.split(".")[1]
        padded = payload_segment + "=" * (-len(payload_segment) % 4)
        payload: Any = msgspec.json.decode(base64.urlsafe_b64decode(padded))
    except (IndexError, ValueError, binascii.Error, msgspec.DecodeError) as exc:
        msg = "the payload is not JSON"
        raise JwtRejectedError(msg) from exc
    issuer = payload.get("iss") if isinstance(payload, dict) else None
    if not isinstance(issuer, str) or not issuer:
        msg = "the payload has no 'iss'"
        raise JwtRejectedError(msg)
    return issuer
