"""ID-JAG issuance by RFC 8693 token exchange at the org authorization server.

The checks follow draft-ietf-oauth-identity-assertion-authz-grant (section 4.3)
and the MCP Enterprise-Managed Authorization extension:

- the subject token is an ID token this IdP issued, still valid, whose ``aud``
  is the authenticated client (``invalid_grant`` otherwise);
- ``audience`` is the issuer of one backend authorization server, and
  ``resource``, when sent, is that backend's resource (``invalid_target``);
- the client has a client_id mapping at that backend (``unauthorized_client``);
- requested scopes are a subset of the backend's scopes (``invalid_scope``).

The ID-JAG looks like Okta's: ``typ`` ``oauth-id-jag+jwt``, RS256 with ``kid``,
``jti`` starting ``IDAAG.``, ``client_id`` set to the mapped backend client.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import structlog
from joserfc.jwk import KeySet

from ._http import OAuthError, Params
from ._urns import TOKEN_TYPE_ID_JAG, TOKEN_TYPE_ID_TOKEN, TYP_ID_JAG, TYP_ID_TOKEN
from .keys import JwtRejectedError, SigningKey, verify_jwt
from .settings import DevBackendAS, DevClient, DevIdpSettings

__all__ = ["IdJagIssuer"]

logger = structlog.get_logger(__name__)


class IdJagIssuer:
    """Exchange a user's ID token for an ID-JAG addressed to one backend.

    Args:
        settings: The dev IdP settings.
        key: The org signing key, which signs ID-JAGs.
        org_keys: Public keys that verify the org's ID tokens.
        clock: Returns the current time in seconds.
    """

    def __init__(
        self,
        settings: DevIdpSettings,
        *,
        key: SigningKey,
        org_keys: KeySet,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._key = key
        self._org_keys = org_keys
        self._clock = clock
        self._backends = {
            settings.backend_issuer(backend): backend for backend in settings.backends
        }
        self._subjects = {user.sub: user for user in settings.users.values()}

    def exchange(self, client: DevClient, params: Params) -> dict[str, Any]:
        """Return the token exchange response body carrying a new ID-JAG.

        Raises:
            OAuthError: The request is invalid; see the module docstring.
        """
        requested = params.require("requested_token_type")
        if requested != TOKEN_TYPE_ID_JAG:
            description = f"requested_token_type must be {TOKEN_TYPE_ID_JAG}"
            raise OAuthError("invalid_request", description)
        if params.require("subject_token_type") != TOKEN_TYPE_ID_TOKEN:
            description = f"subject_token_type must be {TOKEN_TYPE_ID_TOKEN}"
            raise OAuthError("invalid_request", description)
        if "actor_token" in params or "actor_token_type" in params:
            raise OAuthError("invalid_request", "actor_token is not supported")
        subject = self._verify_subject_token(params.require("subject_token"), client)
        backend = self._target(params)
        ras_client_id = backend.client_mapping.get(client.client_id)
        if ras_client_id is None:
            description = (
                f"client {client.client_id!r} may not request ID-JAGs for "
                f"{self._settings.backend_issuer(backend)!r}"
            )
            raise OAuthError("unauthorized_client", description)
        scopes = _grant_scopes(params.get("scope"), backend)
        now = int(self._clock())
        audience = self._settings.backend_issuer(backend)
        user = self._subjects[subject["sub"]]
        jti = f"IDAAG.{secrets.token_urlsafe(24)}"
        claims: dict[str, Any] = {
            "iss": self._settings.issuer,
            "sub": user.sub,
            "aud": audience,
            "client_id": ras_client_id,
            "jti": jti,
            "iat": now,
            "exp": now + self._settings.idjag_ttl,
            "resource": backend.resource,
            "email": user.email,
        }
        if scopes:
            claims["scope"] = " ".join(scopes)
        if isinstance(subject.get("auth_time"), int):
            claims["auth_time"] = subject["auth_time"]
        assertion = self._key.sign(claims, typ=TYP_ID_JAG)
        logger.info(
            "devidp.token_issued",
            grant_type="token_exchange",
            token="id_jag",
            client_id=client.client_id,
            sub=user.sub,
            audience=audience,
            resource=backend.resource,
            scope=claims.get("scope"),
            jti=jti,
        )
        body: dict[str, Any] = {
            "issued_token_type": TOKEN_TYPE_ID_JAG,
            "access_token": assertion,
            "token_type": "N_A",
            "expires_in": self._settings.idjag_ttl,
        }
        if scopes:
            body["scope"] = claims["scope"]
        return body

    def _verify_subject_token(self, token: str, client: DevClient) -> dict[str, Any]:
        try:
            header, claims = verify_jwt(
                token,
                self._org_keys,
                now=int(self._clock()),
                leeway=self._settings.clock_skew,
            )
        except JwtRejectedError as exc:
            raise OAuthError(
                "invalid_grant", f"subject_token is invalid: {exc}"
            ) from exc
        if header.get("typ", TYP_ID_TOKEN) != TYP_ID_TOKEN:
            raise OAuthError("invalid_grant", "subject_token is not an ID token")
        if claims["iss"] != self._settings.issuer:
            raise OAuthError(
                "invalid_grant", "subject_token was issued by another issuer"
            )
        audience = claims["aud"]
        if audience != client.client_id and audience != [client.client_id]:
            description = "subject_token was issued to another client"
            raise OAuthError("invalid_grant", description)
        if claims["sub"] not in self._subjects:
            raise OAuthError("invalid_grant", "subject_token names an unknown user")
        return claims

    def _target(self, params: Params) -> DevBackendAS:
        audiences = params.get_all("audience")
        if not audiences:
            raise OAuthError("invalid_request", "the parameter 'audience' is missing")
        if len(audiences) > 1:
            raise OAuthError("invalid_target", "send exactly one audience")
        backend = self._backends.get(audiences[0])
        if backend is None:
            description = "audience is not the issuer of a known authorization server"
            raise OAuthError("invalid_target", description)
        resources = params.get_all("resource")
        if len(resources) > 1:
            raise OAuthError("invalid_target", "send at most one resource")
        if resources and resources[0] != backend.resource:
            description = (
                "resource does not belong to the audience authorization server"
            )
            raise OAuthError("invalid_target", description)
        return backend


def _grant_scopes(requested: str | None, backend: DevBackendAS) -> list[str]:
    if requested is None:
        return list(backend.scopes)
    scopes = list(dict.fromkeys(requested.split()))
    unknown = [scope for scope in scopes if scope not in backend.scopes]
    if unknown:
        description = f"scopes {unknown!r} are not offered by backend {backend.name!r}"
        raise OAuthError("invalid_scope", description)
    return scopes
