"""Cross App Access: an ID token for an ID-JAG, then the ID-JAG for a backend token.

The flow has two token requests:

1. RFC 8693 token exchange at the upstream IdP's token endpoint. The subject
   token is the user's upstream ID token; ``audience`` is the backend
   authorization server's issuer and ``resource`` the backend's own RFC 9728
   resource. The request authenticates as the upstream client that the ID
   token was issued to: the gateway's, or a verified agent's own client.
2. RFC 7523 JWT-bearer grant at the backend authorization server, with the
   ID-JAG as ``assertion``. It authenticates as the client that the ID-JAG
   names: the gateway's client there, or the agent's (``auth.agent_clients``)
   when the user signed in through the agent's own upstream client.

Between the two, the ID-JAG is decoded *without* verifying its signature (the
backend authorization server verifies it) and checked against the request, so
that an assertion meant for another server is never sent anywhere.

Failures raise :class:`~gateway.errors.ExchangeError` for an OAuth error
response or a malformed success response, and
:class:`ServerUnavailableError` when a server cannot be reached, times out or
returns 5xx or 429. Neither the ID token, the ID-JAG nor the access token ever
appears in a message, a log line or a span.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import httpx
import msgspec
from joserfc.errors import JoseError
from joserfc.jws import extract_compact
from opentelemetry import trace

from gateway.config import IdJagAuth
from gateway.config.model import ClientCredentialsConfig
from gateway.errors import ExchangeError, UpstreamError
from gateway.exchange._requests import (
    DEFAULT_RETRY_AFTER,
    STEP_JWT_BEARER,
    STEP_TOKEN_EXCHANGE,
    ServerUnavailableError,
    malformed,
    post_token_request,
    server_name,
    unavailable,
)
from gateway.exchange.client_assertion import ClientKeyError, authenticate_request
from gateway.tracing_attributes import BACKEND

__all__ = [
    "GRANT_JWT_BEARER",
    "GRANT_TOKEN_EXCHANGE",
    "TOKEN_TYPE_ID_JAG",
    "TOKEN_TYPE_ID_TOKEN",
    "IdJagExchanger",
    "IssuedToken",
    "ServerUnavailableError",
    "UpstreamTokenClient",
    "check_id_jag",
]

GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
GRANT_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_TYPE_ID_JAG = "urn:ietf:params:oauth:token-type:id-jag"
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
TYP_ID_JAG = "oauth-id-jag+jwt"

DEFAULT_EXPIRES_IN = 300
"""Lifetime assumed for a backend token sent without ``expires_in``.

RFC 6749 makes ``expires_in`` only RECOMMENDED. Five minutes matches the
ID-JAG lifetime, and a backend 401 replaces the token earlier if needed.
"""

_tracer = trace.get_tracer("gateway.exchange")
_decoder = msgspec.json.Decoder()


class UpstreamTokenClient(Protocol):
    """The part of the gateway's upstream OIDC client that the exchange uses."""

    async def token_endpoint(self) -> str:
        """Return the IdP's token endpoint URL (from its discovery document)."""
        ...

    def client_auth(
        self, data: dict[str, str], *, token_endpoint: str | None = None
    ) -> tuple[dict[str, str], httpx.Auth | None]:
        """Return the form with client authentication added, and an httpx auth.

        ``token_endpoint`` is the URL the request goes to, the ``aud`` of a
        ``private_key_jwt`` assertion; the IdP's discovered one when None.
        """
        ...


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A backend access token from the JWT-bearer grant.

    Attributes:
        access_token: The token, left out of ``repr`` so that it is never logged.
        expires_in: Its lifetime in seconds, as the server stated it.
        scope: The granted scope, when the server returned one.
    """

    access_token: str = field(repr=False)
    expires_in: int
    scope: str | None = None


class IdJagExchanger:
    """Runs the two token requests of Cross App Access for one backend.

    Args:
        upstream: The gateway's client at the upstream IdP.
        http: A shared, pooled HTTP client with timeouts, which the caller closes.
    """

    def __init__(self, upstream: UpstreamTokenClient, http: httpx.AsyncClient) -> None:
        self._upstream = upstream
        self._http = http

    async def exchange(
        self,
        *,
        backend: str,
        auth: IdJagAuth,
        id_token: str,
        upstream: UpstreamTokenClient | None = None,
        backend_client: ClientCredentialsConfig | None = None,
    ) -> IssuedToken:
        """Return a backend access token for the user of ``id_token``.

        Args:
            backend: The backend name, for spans.
            auth: The backend's ``id-jag`` settings.
            id_token: The user's upstream ID token.
            upstream: The upstream client the ID token was issued to; the
                gateway's own when None.
            backend_client: The client that redeems the ID-JAG; ``auth``'s
                own client when None.

        Raises:
            ExchangeError: A server rejected a request or returned a
                malformed response.
            ServerUnavailableError: A server could not be reached, timed out
                or returned 5xx or 429.
        """
        with _tracer.start_as_current_span(
            "idjag token_exchange",
            attributes={BACKEND: backend, "oauth.audience": auth.issuer},
        ):
            assertion = await self.request_id_jag(auth, id_token, upstream=upstream)
        with _tracer.start_as_current_span(
            "idjag jwt_bearer",
            attributes={BACKEND: backend, "oauth.audience": auth.issuer},
        ):
            return await self.redeem(auth, assertion, client=backend_client)

    async def request_id_jag(
        self,
        auth: IdJagAuth,
        id_token: str,
        *,
        upstream: UpstreamTokenClient | None = None,
    ) -> str:
        """Exchange the user's ID token for an ID-JAG and check it (step 1).

        ``upstream`` is the client the ID token was issued to; the gateway's
        own when None.

        Raises:
            ExchangeError: See :meth:`exchange`.
            ServerUnavailableError: See :meth:`exchange`.
        """
        form = {
            "grant_type": GRANT_TOKEN_EXCHANGE,
            "requested_token_type": TOKEN_TYPE_ID_JAG,
            "subject_token": id_token,
            "subject_token_type": TOKEN_TYPE_ID_TOKEN,
            "audience": auth.issuer,
            "resource": auth.resource,
        }
        if auth.scopes:
            form["scope"] = " ".join(auth.scopes)
        upstream = upstream or self._upstream
        try:
            url = await upstream.token_endpoint()
        except httpx.HTTPError as exc:
            what = f"its discovery document could not be fetched ({type(exc).__name__})"
            raise unavailable(STEP_TOKEN_EXCHANGE, what) from exc
        except UpstreamError as exc:
            if (
                isinstance(exc, ServerUnavailableError)
                or exc.reason != "idp_unavailable"
            ):
                raise
            raise ServerUnavailableError(
                str(exc),
                reason=exc.reason,
                step=STEP_TOKEN_EXCHANGE,
                retry_after=exc.retry_after or DEFAULT_RETRY_AFTER,
                oauth_error=getattr(exc, "oauth_error", None),
            ) from exc
        form, client_auth = upstream.client_auth(form, token_endpoint=url)
        body = await post_token_request(
            self._http, STEP_TOKEN_EXCHANGE, url, form, client_auth
        )

        issued_type = body.get("issued_token_type")
        if issued_type != TOKEN_TYPE_ID_JAG:
            raise malformed(
                STEP_TOKEN_EXCHANGE,
                f"issued_token_type is {issued_type!r}, expected {TOKEN_TYPE_ID_JAG!r}",
            )
        assertion = body.get("access_token")
        if not isinstance(assertion, str) or not assertion:
            raise malformed(STEP_TOKEN_EXCHANGE, "the response has no access_token")
        check_id_jag(assertion, auth)
        return assertion

    async def redeem(
        self,
        auth: IdJagAuth,
        assertion: str,
        *,
        client: ClientCredentialsConfig | None = None,
    ) -> IssuedToken:
        """Redeem an ID-JAG at the backend authorization server (step 2).

        ``client`` is the client that the ID-JAG names, which must
        authenticate; ``auth``'s own client when None.

        Raises:
            ExchangeError: See :meth:`exchange`.
            ServerUnavailableError: See :meth:`exchange`.
        """
        form = {"grant_type": GRANT_JWT_BEARER, "assertion": assertion}
        if auth.scopes:
            form["scope"] = " ".join(auth.scopes)
        credentials: IdJagAuth | ClientCredentialsConfig = client or auth
        try:
            form, client_auth = authenticate_request(
                form,
                method=credentials.token_endpoint_auth_method,
                client_id=credentials.client_id,
                client_secret=credentials.client_secret,
                token_endpoint=auth.token_endpoint,
                key_file=credentials.private_key_file,
                key_id=credentials.private_key_id,
                algorithm=credentials.private_key_algorithm,
            )
        except ClientKeyError as exc:
            raise ExchangeError(
                f"the gateway cannot authenticate at {server_name(STEP_JWT_BEARER)}: "
                f"{exc}",
                oauth_error="client_key_unavailable",
                step=STEP_JWT_BEARER,
                reason="client_key_unavailable",
            ) from None
        body = await post_token_request(
            self._http, STEP_JWT_BEARER, auth.token_endpoint, form, client_auth
        )

        access_token = body.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise malformed(STEP_JWT_BEARER, "the response has no access_token")
        token_type = body.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            # Backend tokens are sent as bearer tokens only; DPoP-bound
            # tokens are listed as not built in docs/design.md.
            raise malformed(
                STEP_JWT_BEARER, f"token_type is {token_type!r}, expected 'Bearer'"
            )
        expires_in = body.get("expires_in", DEFAULT_EXPIRES_IN)
        if (
            isinstance(expires_in, bool)
            or not isinstance(expires_in, int | float)
            or not math.isfinite(expires_in)
            or expires_in <= 0
        ):
            raise malformed(
                STEP_JWT_BEARER, f"expires_in is {expires_in!r}, expected seconds > 0"
            )
        scope = body.get("scope")
        return IssuedToken(
            access_token=access_token,
            expires_in=int(expires_in),
            scope=scope if isinstance(scope, str) else None,
        )


def check_id_jag(assertion: str, auth: IdJagAuth, *, now: float | None = None) -> None:
    """Check an ID-JAG against the request before sending it anywhere.

    The signature is not verified: the backend authorization server does that
    with the IdP's keys. These checks make sure the gateway never forwards an
    assertion for another audience or resource, or one that has expired.

    Raises:
        ExchangeError: ``invalid_response`` naming the failed check.
    """
    try:
        compact = extract_compact(assertion.encode("ascii"))
        claims = _decoder.decode(compact.payload)
    except (JoseError, UnicodeEncodeError, ValueError, msgspec.DecodeError) as exc:
        msg = f"the ID-JAG is not a readable JWT ({type(exc).__name__})"
        raise malformed(STEP_TOKEN_EXCHANGE, msg) from None
    if not isinstance(claims, dict):
        raise malformed(STEP_TOKEN_EXCHANGE, "the ID-JAG payload is not a JSON object")

    typ = compact.headers().get("typ")
    # RFC 7515 section 4.1.9: typ is case-insensitive and may omit "application/".
    if (
        not isinstance(typ, str)
        or typ.lower().removeprefix("application/") != TYP_ID_JAG
    ):
        raise malformed(
            STEP_TOKEN_EXCHANGE, f"the ID-JAG typ is {typ!r}, expected {TYP_ID_JAG!r}"
        )
    aud = claims.get("aud")
    if aud != auth.issuer and aud != [auth.issuer]:
        raise malformed(
            STEP_TOKEN_EXCHANGE, f"the ID-JAG aud is {aud!r}, expected {auth.issuer!r}"
        )
    if "resource" in claims:
        resource = claims["resource"]
        if resource != auth.resource and resource != [auth.resource]:
            raise malformed(
                STEP_TOKEN_EXCHANGE,
                f"the ID-JAG resource is {resource!r}, expected {auth.resource!r}",
            )
    exp = claims.get("exp")
    current = time.time() if now is None else now
    if isinstance(exp, bool) or not isinstance(exp, int | float) or exp <= current:
        raise malformed(
            STEP_TOKEN_EXCHANGE, f"the ID-JAG exp {exp!r} is not in the future"
        )
