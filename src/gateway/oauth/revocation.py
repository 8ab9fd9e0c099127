"""``POST /oauth2/revoke``: RFC 7009 token revocation.

A client revokes one of its own tokens:

- a refresh token ends its whole grant, so every refresh and access token of
  that sign-in stops working (RFC 7009 section 2.1 lets the server revoke
  the grant's access tokens too);
- an access token is remembered as revoked until it expires; the grant and
  its other tokens stay valid.

The client authenticates as at the token endpoint, and a confidential client
is then charged to its per-client rate limit. A public client is limited per
address only: without a secret, anyone can send its ``client_id``.

An unknown, expired or malformed token gets 200 as well, as section 2.2
requires, so the answer does not tell whether a token existed. A token
issued to another client is rejected with ``unauthorized_client`` and left
alone.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog
from litestar import Request, Response, post

from gateway.events import TokenRevoked, UserRef
from gateway.oauth.client_auth import TokenError, authenticate_client, charge_client
from gateway.oauth.clients import ClientRecord
from gateway.oauth.flow import FormError, read_form
from gateway.oauth.keys import SUPPORTED_ALGORITHMS, TokenVerificationError
from gateway.oauth.responses import NO_STORE, oauth_error
from gateway.oauth.revoked_tokens import REVOCATION_MARGIN, revoke_access_token
from gateway.oauth.transactions import FlowState

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = structlog.get_logger("gateway.oauth")

_STAGE = "oauth.revoke"


@post("/oauth2/revoke", status_code=200)
async def revoke(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Revoke a refresh token's grant or one access token.

    Returns 200 with an empty body, also for tokens the gateway does not know.
    Publishes ``TokenRevoked`` when a token of the client was revoked.
    """
    runtime: Runtime = request.app.state.runtime
    try:
        try:
            form = await read_form(request)
        except FormError as exc:
            raise TokenError("invalid_request", str(exc)) from None
        client = await authenticate_client(runtime, request, form)
        if not client.is_public:
            charge_client(request, client)
        token = form.get("token")
        if not token:
            raise TokenError("invalid_request", "token is missing")
        # token_type_hint only orders the look-ups (RFC 7009 section 2.1), so
        # an unknown hint is ignored rather than rejected.
        if form.get("token_type_hint") == "access_token":
            done = await _revoke_access_token(runtime, client, token)
            done = done or await _revoke_refresh_token(runtime, client, token)
        else:
            done = await _revoke_refresh_token(runtime, client, token)
            done = done or await _revoke_access_token(runtime, client, token)
        if not done:
            log.info("oauth.revocation_unknown_token", client_id=client.client_id)
    except TokenError as exc:
        log.info(
            "oauth.revocation_rejected", oauth_error=exc.error, detail=exc.description
        )
        return oauth_error(
            exc.error, exc.description, status=exc.status, headers=exc.headers
        )
    return Response(b"", status_code=200, headers=dict(NO_STORE))


async def _revoke_refresh_token(
    runtime: Runtime, client: ClientRecord, token: str
) -> bool:
    """Revoke the grant of a refresh token; return False when it is unknown."""
    record = await FlowState(runtime.store).find_refresh_token(token)
    if record is None:
        return False
    if record.client_id != client.client_id:
        raise _other_client(client)
    grant = await runtime.grants.get(record.grant_id)
    await runtime.grants.revoke(record.grant_id)
    log.info(
        "oauth.token_revoked",
        client_id=client.client_id,
        token_type="refresh_token",
        grant_id=record.grant_id,
    )
    await runtime.publish(
        TokenRevoked(
            stage=_STAGE,
            user=UserRef(iss=grant.user_iss, sub=grant.user_sub) if grant else None,
            client_id=client.client_id,
            token_type="refresh_token",
            grant_id=record.grant_id,
        )
    )
    return True


async def _revoke_access_token(
    runtime: Runtime, client: ClientRecord, token: str
) -> bool:
    """Mark an access token revoked; return False when it is not a live one."""
    if token.count(".") != 2:
        return False
    try:
        # Every algorithm the gateway may have signed with, because the
        # configured one may have changed since this token was issued.
        _, claims = runtime.keys.verify(token, algorithms=sorted(SUPPORTED_ALGORITHMS))
    except TokenVerificationError:
        return False
    token_id = claims.get("jti")
    grant_id = claims.get("grant_id")
    exp = claims.get("exp")
    if (
        claims.get("iss") != runtime.issuer
        or not isinstance(token_id, str)
        or not isinstance(grant_id, str)
        or not isinstance(exp, int | float)
        or isinstance(exp, bool)
    ):
        return False
    if claims.get("client_id") != client.client_id:
        raise _other_client(client)
    # Until exp plus the largest leeway a verifier accepts, the token still
    # passes verification, so its revocation must be recorded until then.
    if exp + REVOCATION_MARGIN <= time.time():
        return True
    await revoke_access_token(runtime.store, token_id, exp)
    log.info(
        "oauth.token_revoked",
        client_id=client.client_id,
        token_type="access_token",
        grant_id=grant_id,
        token_id=token_id,
    )
    sub, user_iss = claims.get("sub"), claims.get("user_iss")
    user = (
        UserRef(iss=user_iss, sub=sub)
        if isinstance(sub, str) and isinstance(user_iss, str)
        else None
    )
    await runtime.publish(
        TokenRevoked(
            stage=_STAGE,
            user=user,
            client_id=client.client_id,
            token_type="access_token",
            grant_id=grant_id,
            token_id=token_id,
        )
    )
    return True


def _other_client(client: ClientRecord) -> TokenError:
    log.warning("oauth.revocation_other_client", client_id=client.client_id)
    return TokenError("unauthorized_client", "the token was issued to another client")
