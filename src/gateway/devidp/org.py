"""The org authorization server of the dev IdP, laid out like an Okta org.

Endpoints, all under the issuer:

- ``GET /.well-known/openid-configuration`` and
  ``GET /.well-known/oauth-authorization-server``: discovery metadata;
- ``GET /oauth2/v1/authorize`` (and its sign-in form): see :mod:`.authorize`;
- ``POST /oauth2/v1/token``: the ``authorization_code``, ``refresh_token`` and
  token exchange (ID-JAG, see :mod:`.exchange`) grants;
- ``GET /oauth2/v1/keys``: the JWK Set that verifies its tokens.

ID tokens carry ``email``, ``name`` and ``preferred_username`` whatever the
scope, so the gateway always learns who signed in.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import structlog
from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler

from ._grants import GrantStore, RefreshGrant
from ._http import (
    NO_STORE,
    OAuthError,
    Params,
    json_response,
    oauth_error_response,
    read_form,
)
from ._urns import (
    GRANT_AUTHORIZATION_CODE,
    GRANT_REFRESH_TOKEN,
    GRANT_TOKEN_EXCHANGE,
    TOKEN_TYPE_ID_JAG,
    TYP_ACCESS_TOKEN,
    TYP_ID_TOKEN,
)
from .authorize import SUPPORTED_SCOPES, AuthorizationEndpoint
from .client_auth import ClientAuthenticator
from .exchange import IdJagIssuer
from .faults import SubjectSwap, TokenHold, TokenOutage
from .keys import SIGNING_ALGORITHM, SigningKey, jwks_document, public_key_set
from .settings import DevClient, DevIdpSettings

__all__ = ["OrgAuthorizationServer"]

logger = structlog.get_logger(__name__)


class OrgAuthorizationServer:
    """The org server: OIDC sign-in, rotating refresh tokens, ID-JAG issuance.

    Args:
        settings: The dev IdP settings.
        key: The key that signs ID tokens, access tokens and ID-JAGs.
        clock: Returns the current time in seconds.
    """

    def __init__(
        self, settings: DevIdpSettings, *, key: SigningKey, clock: Callable[[], float]
    ) -> None:
        self._settings = settings
        self._key = key
        self._retired: list[SigningKey] = []
        self._clock = clock
        issuer = settings.issuer
        self.token_endpoint = f"{issuer}/oauth2/v1/token"
        self._grants = GrantStore(
            code_ttl=settings.authorization_code_ttl,
            refresh_ttl=settings.refresh_token_ttl,
            max_entries=settings.max_pending_grants,
            clock=clock,
        )
        self._authorization = AuthorizationEndpoint(settings, self._grants, clock)
        self._clients = ClientAuthenticator(
            {client.client_id: client for client in settings.clients},
            token_endpoint=self.token_endpoint,
            clock=clock,
            leeway=settings.clock_skew,
            max_assertions=settings.max_pending_grants,
        )
        self.public_keys = public_key_set([key])
        self._id_jag = IdJagIssuer(
            settings, key=key, org_keys=self.public_keys, clock=clock
        )
        self.token_outage: TokenOutage | None = None
        """When set, matching token requests fail as it describes (tests only)."""
        self.token_hold: TokenHold | None = None
        """When set, matching token requests wait for its release (tests only)."""
        self.refresh_subject: SubjectSwap | None = None
        """When set, refreshed ID tokens name its user instead (tests only)."""

    def rotate_key(self, key: SigningKey | None = None) -> SigningKey:
        """Sign with a new key from now on, as an IdP's routine key rotation does.

        The previous keys stay in the JWK Set, so tokens they signed keep
        verifying. The org's own checks of its ID tokens use the new set at
        once.

        Args:
            key: The new key; a new RSA 2048 key when None.

        Returns:
            The key that now signs.
        """
        new = key or SigningKey.generate()
        self._retired.insert(0, self._key)
        self._key = new
        self._id_jag._key = new
        self.public_keys.keys[:] = public_key_set([new, *self._retired]).keys
        logger.info("devidp.key_rotated", kid=new.kid, published=1 + len(self._retired))
        return new

    def end_sessions(self, user: str) -> int:
        """End a user's sessions, as an admin signing the user out everywhere does.

        Every refresh token issued to the user is revoked, so the next refresh
        gets ``invalid_grant``. ID tokens already issued stay valid until they
        expire, as at a real IdP.

        Args:
            user: Key of the user in the settings, such as ``alice``.

        Returns:
            How many refresh token families were revoked.

        Raises:
            KeyError: The user is not in the settings.
        """
        if user not in self._settings.users:
            msg = f"unknown user {user!r}; known: {sorted(self._settings.users)!r}"
            raise KeyError(msg)
        ended = self._grants.revoke_user(user)
        logger.info("devidp.sessions_ended", user=user, refresh_families=ended)
        return ended

    def metadata(self) -> dict[str, Any]:
        """Return the RFC 8414 / OpenID Connect Discovery metadata."""
        issuer = self._settings.issuer
        return {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/oauth2/v1/authorize",
            "token_endpoint": self.token_endpoint,
            "jwks_uri": f"{issuer}/oauth2/v1/keys",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": [
                GRANT_AUTHORIZATION_CODE,
                GRANT_REFRESH_TOKEN,
                GRANT_TOKEN_EXCHANGE,
            ],
            "subject_types_supported": ["public"],
            "scopes_supported": list(SUPPORTED_SCOPES),
            "claims_supported": [
                "iss",
                "sub",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "email",
                "name",
                "preferred_username",
            ],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
            ],
            "token_endpoint_auth_signing_alg_values_supported": [
                "RS256",
                "RS384",
                "RS512",
                "PS256",
                "ES256",
                "ES384",
                "ES512",
            ],
            "id_token_signing_alg_values_supported": [SIGNING_ALGORITHM],
            "authorization_response_iss_parameter_supported": True,
            "identity_chaining_requested_token_types_supported": [TOKEN_TYPE_ID_JAG],
            "request_parameter_supported": False,
        }

    def route_handlers(self) -> list[HTTPRouteHandler]:
        """Return the Litestar handlers of every org endpoint."""
        return [
            get("/.well-known/openid-configuration", name="org-oidc-metadata")(
                self._metadata
            ),
            get("/.well-known/oauth-authorization-server", name="org-oauth-metadata")(
                self._metadata
            ),
            get("/oauth2/v1/authorize", name="org-authorize")(
                self._authorization.authorize
            ),
            post(
                "/oauth2/v1/authorize/login",
                name="org-authorize-login",
                status_code=302,
            )(self._authorization.login),
            post("/oauth2/v1/token", name="org-token", status_code=200)(self._token),
            get("/oauth2/v1/keys", name="org-keys")(self._keys),
        ]

    async def _metadata(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        return json_response(self.metadata())

    async def _keys(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        return json_response(jwks_document([self._key, *self._retired]))

    async def _token(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        client_id: str | None = None
        grant_type: str | None = None
        try:
            params = await read_form(request)
            authenticated = self._clients.authenticate(
                request.headers.get("authorization"), params
            )
            client_id = authenticated.client_id
            grant_type = params.require("grant_type")
            outage = self.token_outage
            if outage is not None and outage.applies_to(grant_type):
                logger.info("devidp.token_outage", grant_type=grant_type)
                return outage.response()
            hold = self.token_hold
            if hold is not None and hold.applies_to(grant_type):
                logger.info("devidp.token_held", grant_type=grant_type)
                await hold.wait()
            if grant_type == GRANT_AUTHORIZATION_CODE:
                body = self._redeem_code(authenticated, params)
            elif grant_type == GRANT_REFRESH_TOKEN:
                body = self._refresh(authenticated, params)
            elif grant_type == GRANT_TOKEN_EXCHANGE:
                body = self._id_jag.exchange(authenticated, params)
            else:
                description = f"grant_type {grant_type!r} is not supported"
                raise OAuthError("unsupported_grant_type", description)
        except OAuthError as exc:
            logger.info(
                "devidp.token_rejected",
                server="org",
                grant_type=grant_type,
                client_id=client_id,
                error=exc.error,
                reason=exc.description,
            )
            return oauth_error_response(exc, realm=self._settings.issuer)
        return json_response(body, headers=NO_STORE)

    def _redeem_code(self, client: DevClient, params: Params) -> dict[str, Any]:
        sign_in, family = self._grants.redeem_code(
            params.require("code"),
            client_id=client.client_id,
            redirect_uri=params.get("redirect_uri"),
            verifier=params.require("code_verifier"),
        )
        return self._issue_tokens(
            RefreshGrant(
                family=family,
                client_id=client.client_id,
                user=sign_in.user,
                scopes=sign_in.scopes,
                auth_time=sign_in.auth_time,
            ),
            scopes=sign_in.scopes,
            nonce=sign_in.nonce,
            grant_type=GRANT_AUTHORIZATION_CODE,
        )

    def _refresh(self, client: DevClient, params: Params) -> dict[str, Any]:
        grant = self._grants.rotate_refresh_token(
            params.require("refresh_token"), client_id=client.client_id
        )
        scopes = grant.scopes
        requested = params.get("scope")
        if requested is not None:
            narrowed = tuple(dict.fromkeys(requested.split()))
            extra = [scope for scope in narrowed if scope not in grant.scopes]
            if extra:
                description = f"scopes {extra!r} exceed the original grant"
                raise OAuthError("invalid_scope", description)
            scopes = narrowed
        # OpenID Connect Core section 12.2: a refreshed ID token carries no nonce.
        return self._issue_tokens(
            grant, scopes=scopes, nonce=None, grant_type=GRANT_REFRESH_TOKEN
        )

    def _issue_tokens(
        self,
        grant: RefreshGrant,
        *,
        scopes: tuple[str, ...],
        nonce: str | None,
        grant_type: str,
    ) -> dict[str, Any]:
        settings = self._settings
        swap = self.refresh_subject
        if swap is not None and grant_type == GRANT_REFRESH_TOKEN:
            user = settings.users[swap.user]
        else:
            user = settings.users[grant.user]
        now = int(self._clock())
        id_claims: dict[str, Any] = {
            "iss": settings.issuer,
            "sub": user.sub,
            "aud": grant.client_id,
            "iat": now,
            "exp": now + settings.id_token_ttl,
            "auth_time": grant.auth_time,
            "jti": f"ID.{secrets.token_urlsafe(16)}",
            "email": user.email,
            "email_verified": True,
            "name": user.name,
            "preferred_username": user.preferred_username,
        }
        if nonce is not None:
            id_claims["nonce"] = nonce
        access_claims: dict[str, Any] = {
            "iss": settings.issuer,
            "sub": user.sub,
            "aud": settings.issuer,
            "client_id": grant.client_id,
            "scope": " ".join(scopes),
            "jti": f"AT.{secrets.token_urlsafe(16)}",
            "iat": now,
            "exp": now + settings.access_token_ttl,
        }
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": self._key.sign(access_claims, typ=TYP_ACCESS_TOKEN),
            "expires_in": settings.access_token_ttl,
            "scope": " ".join(scopes),
            "id_token": self._key.sign(id_claims, typ=TYP_ID_TOKEN),
        }
        if "offline_access" in grant.scopes:
            body["refresh_token"] = self._grants.issue_refresh_token(grant)
        logger.info(
            "devidp.token_issued",
            grant_type=grant_type,
            token="id_token",
            client_id=grant.client_id,
            sub=user.sub,
            scope=body["scope"],
            refresh_family=grant.family.family_id if "refresh_token" in body else None,
        )
        return body
