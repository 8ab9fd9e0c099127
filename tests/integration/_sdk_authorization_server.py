"""An official-SDK authorization server that redeems the dev IdP's ID-JAGs.

The ``mcp`` SDK's SEP-990 support (``identity_assertion_enabled``, mcp 2.3.0)
serves the token endpoint: client authentication, the JWT-bearer grant, the
confidential-client rule and the metadata that advertises the ID-JAG grant
profile. The SDK leaves the checks of the ID-JAG itself to the provider hook
``exchange_identity_assertion``. :class:`IdJagProvider` implements the checks
that the hook's docstring lists. It verifies the signature against the IdP's
JWKS, ``typ``, ``iss``, ``aud`` (this server's issuer), ``exp`` and ``sub``.
It also rejects a reused ``jti`` and a ``client_id`` other than the
authenticated client's, and binds the token to the ID-JAG's ``resource``.

The dev IdP issues ID-JAGs only for ``<issuer>/oauth2/<name>``, so the SDK
server is served under that path on the dev IdP's own port: :class:`PathMount`
sends requests under the prefix to the SDK app and the rest to the dev IdP.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import jwt
from mcp.server.auth.provider import (
    AccessToken,
    IdentityAssertionParams,
    OAuthAuthorizationServerProvider,
    TokenError,
)
from mcp.server.auth.routes import create_auth_routes
from mcp.shared.auth import (
    JWT_BEARER_GRANT_TYPE,
    OAuthClientInformationFull,
    OAuthToken,
)
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

TYP_ID_JAG = "oauth-id-jag+jwt"
TOKEN_LIFETIME = 3600


class IdJagProvider(OAuthAuthorizationServerProvider[Any, Any, AccessToken]):
    """Redeems ID-JAGs from one IdP for opaque access tokens it remembers.

    Args:
        issuer: This authorization server's issuer, the required ID-JAG ``aud``.
        idp_issuer: The IdP whose ID-JAGs are trusted, the required ``iss``.
        idp_jwks_url: The IdP's JWK Set, fetched on first use.
        client_id: The one client registered here (the gateway).
        client_secret: Its secret.
    """

    def __init__(
        self,
        *,
        issuer: str,
        idp_issuer: str,
        idp_jwks_url: str,
        client_id: str,
        client_secret: str,
    ) -> None:
        self.issuer = issuer
        self.idp_issuer = idp_issuer
        self.idp_jwks_url = idp_jwks_url
        self.client = OAuthClientInformationFull(
            client_id=client_id,
            client_secret=client_secret,
            token_endpoint_auth_method="client_secret_basic",
            grant_types=[JWT_BEARER_GRANT_TYPE],
            redirect_uris=None,
        )
        self.tokens: dict[str, AccessToken] = {}
        self.redeemed: list[dict[str, Any]] = []
        """Claims of each ID-JAG redeemed, in order."""
        self.requests: list[IdentityAssertionParams] = []
        """Parameters of each JWT-bearer request that reached the provider."""
        self._seen_jti: set[str] = set()
        self._jwks: jwt.PyJWKSet | None = None

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        """Return the registered client, or None for any other id."""
        return self.client if client_id == self.client.client_id else None

    async def exchange_identity_assertion(
        self, client: OAuthClientInformationFull, params: IdentityAssertionParams
    ) -> OAuthToken:
        """Check the ID-JAG and issue an access token for its user and resource."""
        self.requests.append(params)
        claims = await self._verify(params.assertion)
        if claims.get("client_id") != client.client_id:
            raise TokenError("invalid_grant", "the ID-JAG names another client")
        if claims["jti"] in self._seen_jti:
            raise TokenError("invalid_grant", "the ID-JAG was already used")
        self._seen_jti.add(claims["jti"])
        resource = claims.get("resource")
        if not isinstance(resource, str):
            raise TokenError("invalid_grant", "the ID-JAG has no resource")
        if params.resource is not None and params.resource != resource:
            raise TokenError("invalid_target", "resource differs from the ID-JAG's")
        granted = str(claims.get("scope", "")).split()
        if params.scopes is not None:
            granted = [scope for scope in params.scopes if scope in granted]
        token = secrets.token_urlsafe(32)
        expires_at = int(time.time()) + TOKEN_LIFETIME
        self.tokens[token] = AccessToken(
            token=token,
            client_id=client.client_id,
            scopes=granted,
            expires_at=expires_at,
            resource=resource,
            subject=claims["sub"],
            claims={"iss": self.issuer, "id_jag_iss": claims["iss"]},
        )
        self.redeemed.append(claims)
        return OAuthToken(
            access_token=token,
            expires_in=TOKEN_LIFETIME,
            scope=" ".join(granted) or None,
        )

    async def load_access_token(self, token: str) -> AccessToken | None:
        """Return a token this server issued and that has not expired."""
        found = self.tokens.get(token)
        if found is None or (found.expires_at or 0) < time.time():
            return None
        return found

    async def _verify(self, assertion: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(assertion)
            if header.get("typ") != TYP_ID_JAG:
                raise TokenError(
                    "invalid_grant", f"the ID-JAG typ must be {TYP_ID_JAG}"
                )
            key = (await self._keys())[str(header.get("kid"))]
            claims: dict[str, Any] = jwt.decode(
                assertion,
                key,
                algorithms=["RS256"],
                audience=self.issuer,
                issuer=self.idp_issuer,
                options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
            )
        except (jwt.PyJWTError, KeyError) as exc:
            msg = f"the ID-JAG is invalid ({type(exc).__name__})"
            raise TokenError("invalid_grant", msg) from exc
        return claims

    async def _keys(self) -> jwt.PyJWKSet:
        if self._jwks is None:
            async with httpx.AsyncClient(timeout=5.0) as http:
                response = await http.get(self.idp_jwks_url)
                response.raise_for_status()
            self._jwks = jwt.PyJWKSet.from_dict(response.json())
        return self._jwks


def sdk_authorization_server(provider: IdJagProvider) -> Starlette:
    """Return the SDK's authorization server routes with identity assertions on."""
    routes = create_auth_routes(
        provider,
        issuer_url=AnyHttpUrl(provider.issuer),
        identity_assertion_enabled=True,
    )
    return Starlette(routes=routes)


class PathMount:
    """Send HTTP requests under ``prefix`` to ``mounted``, the rest to ``main``.

    Lifespan events go to ``main`` only; the mounted app needs none.
    """

    def __init__(self, main: ASGIApp, prefix: str, mounted: ASGIApp) -> None:
        self.main = main
        self.prefix = prefix.rstrip("/")
        self.mounted = mounted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(self.prefix + "/"):
            inner = dict(scope)
            inner["path"] = path[len(self.prefix) :]
            inner["raw_path"] = inner["path"].encode()
            await self.mounted(inner, receive, send)
            return
        await self.main(scope, receive, send)
