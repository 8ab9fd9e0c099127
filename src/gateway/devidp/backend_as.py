"""Backend authorization servers that redeem ID-JAGs, laid out like Okta custom servers.

Each backend in the settings gets an issuer ``<issuer>/oauth2/<name>`` with:

- ``GET /oauth2/<name>/.well-known/oauth-authorization-server`` and the RFC 8414
  path-inserted form ``/.well-known/oauth-authorization-server/oauth2/<name>``;
- ``POST /oauth2/<name>/v1/token``: the RFC 7523 JWT-bearer grant with an ID-JAG;
- ``GET /oauth2/<name>/v1/keys``: the JWK Set of its access tokens.

It trusts one IdP, the org server of the same dev IdP. It checks an ID-JAG as
the ID-JAG draft (section 4.4.1) and the MCP Enterprise-Managed Authorization
extension require. The checks cover ``typ``, the signature, exact ``iss`` and
``aud``, ``client_id`` bound to the authenticated client, ``resource``, the
lifetime and ``jti`` replay.
Every failed check is ``invalid_grant`` (RFC 7523 section 3.1). Access tokens are
RFC 9068 JWTs whose ``aud`` is the backend's resource. No refresh token is
issued.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import structlog
from joserfc.jwk import KeySet
from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler

from ._http import (
    NO_STORE,
    OAuthError,
    Params,
    json_response,
    oauth_error_response,
    read_form,
)
from ._store import ExpiringStore, StoreFullError
from ._urns import GRANT_JWT_BEARER, GRANT_PROFILE_ID_JAG, TYP_ACCESS_TOKEN, TYP_ID_JAG
from .client_auth import ClientAuthenticator
from .keys import (
    JwtRejectedError,
    SigningKey,
    jwks_document,
    read_unverified_header,
    verify_jwt,
)
from .settings import DevBackendAS, DevIdpSettings, DevRasClient

__all__ = ["BackendAuthorizationServer"]

logger = structlog.get_logger(__name__)

# Okta issues ID-JAGs for 5 minutes; one hour is far above any honest lifetime.
_MAX_ID_JAG_LIFETIME = 3600
_ID_JAG_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "jti", "client_id")


def _invalid_grant(description: str) -> OAuthError:
    return OAuthError("invalid_grant", description)


def _media_type(typ: object) -> str:
    """Return a JOSE ``typ`` in lowercase without ``application/`` (RFC 7515 4.1.9)."""
    if not isinstance(typ, str):
        return ""
    lowered = typ.lower()
    return lowered.removeprefix("application/")


class BackendAuthorizationServer:
    """One backend authorization server.

    Args:
        settings: The dev IdP settings.
        backend: The backend this server protects.
        key: The key that signs its access tokens.
        org_keys: Public keys of the org server, which sign ID-JAGs.
        clock: Returns the current time in seconds.
    """

    def __init__(
        self,
        settings: DevIdpSettings,
        backend: DevBackendAS,
        *,
        key: SigningKey,
        org_keys: KeySet,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._key = key
        self._org_keys = org_keys
        self._clock = clock
        self.issuer = settings.backend_issuer(backend)
        self.token_endpoint = f"{self.issuer}/v1/token"
        self.jwks_uri = f"{self.issuer}/v1/keys"
        self._clients = ClientAuthenticator(
            {client.client_id: client for client in backend.clients},
            token_endpoint=self.token_endpoint,
            clock=clock,
            leeway=settings.clock_skew,
            max_assertions=settings.max_pending_grants,
        )
        self._used_jtis: ExpiringStore[bool] = ExpiringStore(
            max_entries=settings.max_pending_grants, clock=clock
        )

    def metadata(self) -> dict[str, Any]:
        """Return the RFC 8414 metadata.

        There is no authorization endpoint, because users never visit this
        server, so ``response_types_supported`` is empty.
        """
        return {
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint,
            "jwks_uri": self.jwks_uri,
            "response_types_supported": [],
            "grant_types_supported": [GRANT_JWT_BEARER],
            "authorization_grant_profiles_supported": [GRANT_PROFILE_ID_JAG],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
            ],
            "scopes_supported": list(self._backend.scopes),
        }

    def route_handlers(self) -> list[HTTPRouteHandler]:
        """Return the Litestar handlers of this server's endpoints."""
        name = self._backend.name
        return [
            get(
                f"/oauth2/{name}/.well-known/oauth-authorization-server",
                name=f"{name}-metadata",
            )(self._metadata),
            get(
                f"/.well-known/oauth-authorization-server/oauth2/{name}",
                name=f"{name}-metadata-path-inserted",
            )(self._metadata),
            post(f"/oauth2/{name}/v1/token", name=f"{name}-token", status_code=200)(
                self._token
            ),
            get(f"/oauth2/{name}/v1/keys", name=f"{name}-keys")(self._keys),
        ]

    async def _metadata(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        return json_response(self.metadata())

    async def _keys(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        return json_response(jwks_document([self._key]))

    async def _token(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        client_id: str | None = None
        try:
            params = await read_form(request)
            client = self._clients.authenticate(
                request.headers.get("authorization"), params
            )
            client_id = client.client_id
            grant_type = params.require("grant_type")
            if grant_type != GRANT_JWT_BEARER:
                description = f"grant_type must be {GRANT_JWT_BEARER}"
                raise OAuthError("unsupported_grant_type", description)
            body = self._redeem(client, params)
        except OAuthError as exc:
            logger.info(
                "devidp.token_rejected",
                server=self._backend.name,
                grant_type="jwt_bearer",
                client_id=client_id,
                error=exc.error,
                reason=exc.description,
            )
            return oauth_error_response(exc, realm=self.issuer)
        return json_response(body, headers=NO_STORE)

    def _redeem(self, client: DevRasClient, params: Params) -> dict[str, Any]:
        assertion = params.require("assertion")
        claims = self._verify_id_jag(assertion, client)
        scopes = self._grant_scopes(claims, params.get("scope"))

        jti_key = f"{claims['iss']}\n{claims['jti']}"
        if self._used_jtis.get(jti_key) is not None:
            raise _invalid_grant("the ID-JAG was already used; request a new one")
        try:
            expires_at = float(claims["exp"]) + self._settings.clock_skew
            self._used_jtis.put(jti_key, True, expires_at=expires_at)
        except StoreFullError as exc:
            raise OAuthError("temporarily_unavailable", str(exc)) from exc

        now = int(self._clock())
        ttl = self._settings.backend_token_ttl
        token_claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": claims["sub"],
            "aud": self._backend.resource,
            "client_id": client.client_id,
            "jti": f"AT.{secrets.token_urlsafe(16)}",
            "iat": now,
            "exp": now + ttl,
            "scope": " ".join(scopes),
        }
        for optional in ("email", "auth_time"):
            if optional in claims:
                token_claims[optional] = claims[optional]

        logger.info(
            "devidp.token_issued",
            server=self._backend.name,
            grant_type="jwt_bearer",
            token="access_token",
            client_id=client.client_id,
            sub=claims["sub"],
            audience=self._backend.resource,
            scope=token_claims["scope"],
            id_jag_jti=claims["jti"],
        )
        return {
            "access_token": self._key.sign(token_claims, typ=TYP_ACCESS_TOKEN),
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": token_claims["scope"],
        }

    def _verify_id_jag(self, assertion: str, client: DevRasClient) -> dict[str, Any]:
        try:
            header = read_unverified_header(assertion)
        except JwtRejectedError as exc:
            raise _invalid_grant(f"the assertion is invalid: {exc}") from exc
        if _media_type(header.get("typ")) != TYP_ID_JAG:
            raise _invalid_grant(f"the assertion typ must be {TYP_ID_JAG!r}")

        try:
            _, claims = verify_jwt(
                assertion,
                self._org_keys,
                now=int(self._clock()),
                leeway=self._settings.clock_skew,
                required_claims=_ID_JAG_CLAIMS,
            )
        except JwtRejectedError as exc:
            raise _invalid_grant(f"the ID-JAG is invalid: {exc}") from exc

        if claims["iss"] != self._settings.issuer:
            raise _invalid_grant("the ID-JAG issuer is not trusted")
        audience = claims["aud"]
        if audience != self.issuer and audience != [self.issuer]:
            raise _invalid_grant(f"the ID-JAG aud must be exactly {self.issuer!r}")
        if claims["client_id"] != client.client_id:
            raise _invalid_grant("the ID-JAG was issued to another client")
        if not isinstance(claims["jti"], str):
            raise _invalid_grant("the ID-JAG jti must be a string")
        if claims["exp"] - claims["iat"] > _MAX_ID_JAG_LIFETIME:
            raise _invalid_grant("the ID-JAG lifetime exceeds one hour")

        resource = claims.get("resource")
        if resource != self._backend.resource and resource != [self._backend.resource]:
            description = f"the ID-JAG resource must be {self._backend.resource!r}"
            raise _invalid_grant(description)
        if "cnf" in claims:
            # A key-bound ID-JAG needs a DPoP proof, which this server does not verify.
            raise _invalid_grant("sender-constrained (cnf) ID-JAGs are not supported")
        return claims

    def _grant_scopes(self, claims: dict[str, Any], requested: str | None) -> list[str]:
        granted_claim = claims.get("scope", "")
        if not isinstance(granted_claim, str):
            raise _invalid_grant("the ID-JAG scope must be a space-delimited string")
        offered = [
            scope for scope in granted_claim.split() if scope in self._backend.scopes
        ]
        if requested is None:
            return offered
        requested_scopes = list(dict.fromkeys(requested.split()))
        extra = [scope for scope in requested_scopes if scope not in offered]
        if extra:
            description = f"scopes {extra!r} were not granted by the ID-JAG"
            raise OAuthError("invalid_scope", description)
        return requested_scopes
