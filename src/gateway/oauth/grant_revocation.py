"""Side effects of a grant revocation by the gateway itself.

:meth:`GrantStore.revoke <gateway.oauth.grants.GrantStore.revoke>` ends the
grant in the state store, which is enough for its tokens: the authenticate
stage rejects every access token whose grant is gone, and the token endpoint
rejects its refresh tokens. :func:`announce_revoked` then drops the backend
tokens cached for the grant's user and agent and publishes ``GrantRevoked``.

An admin revocation also withdraws the users' remembered consent
(:func:`withdraw_consents`), so that a revoked client cannot sign the user in
again without the consent page. Other revocations keep it: the user's session
at the IdP ended, not the user's approval of the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from gateway.events import (
    AgentRef,
    ConsentRevoked,
    GrantRevoked,
    GrantSelector,
    UserRef,
)
from gateway.oauth.access_tokens import agent_claim
from gateway.oauth.consents import ConsentStore
from gateway.oauth.grants import UPSTREAM_SESSION_ENDED
from gateway.oauth.resources import backend_for_resource

if TYPE_CHECKING:
    from gateway.oauth.grants import Grant
    from gateway.runtime import Runtime

__all__ = [
    "ADMIN_REVOKE",
    "UPSTREAM_SESSION_ENDED",
    "announce_revoked",
    "withdraw_consents",
]

log = structlog.get_logger("gateway.oauth")

ADMIN_REVOKE = "admin_revoke"
"""Reason of a revocation by the ``agent-proxy revoke`` command."""


async def announce_revoked(
    runtime: Runtime,
    grant: Grant,
    *,
    reason: str,
    stage: str,
    selector: GrantSelector | None = None,
    oauth_error: str | None = None,
) -> None:
    """Drop the cached backend tokens of a revoked grant and publish the event.

    Args:
        runtime: The running gateway.
        grant: The grant, already revoked in the store.
        reason: :data:`ADMIN_REVOKE`, or a reason of
            :mod:`gateway.oauth.grants` such as ``upstream_session_ended``.
        stage: The event's ``stage``, such as ``admin``, ``oauth.token`` or
            ``exchange``.
        selector: The admin command's selector.
        oauth_error: The IdP's error code that ended the grant, if any.
    """
    dropped = runtime.credentials.forget(
        user_iss=grant.user_iss, user_sub=grant.user_sub, agent_id=grant.agent_id
    )
    log.info(
        "oauth.grant_revoked",
        reason=reason,
        grant_id=grant.grant_id,
        client_id=grant.client_id,
        agent_id=grant.agent_id,
        user_sub=grant.user_sub,
        oauth_error=oauth_error,
        backend_tokens_dropped=dropped,
    )
    await runtime.publish(
        GrantRevoked(
            stage=stage,
            outcome="success" if reason == ADMIN_REVOKE else "denied",
            reason=reason,
            client_id=grant.client_id,
            grant_id=grant.grant_id,
            selector=selector,
            oauth_error=oauth_error,
            **_refs(runtime, grant),
        )
    )


async def withdraw_consents(
    runtime: Runtime,
    selector: GrantSelector,
    grants: list[Grant],
    *,
    stage: str,
) -> int:
    """Forget the remembered consents an admin revocation covers.

    These are the consents of each revoked grant's user and client and,
    when the selector names no agent, every consent that matches the
    selector's user and client, also of users whose grants had ended
    already. A consent names no agent, so a selector with an agent reaches
    only the clients of the revoked grants. Publishes ``ConsentRevoked``
    (reason ``admin_revoke``) for each.

    Returns:
        How many consents were withdrawn.
    """
    consents = ConsentStore(runtime.store)
    targets = {(grant.user_iss, grant.user_sub, grant.client_id) for grant in grants}
    if selector.agent_id is None:
        records = await consents.find(
            user_iss=selector.user_iss,
            user_sub=selector.user_sub,
            client_id=selector.client_id,
        )
        targets.update(
            (record.user_iss, record.user_sub, record.client_id) for record in records
        )
    withdrawn = 0
    for user_iss, user_sub, client_id in sorted(targets):
        if not await consents.revoke(user_iss, user_sub, client_id):
            continue
        withdrawn += 1
        log.info(
            "oauth.consent_revoked",
            reason=ADMIN_REVOKE,
            client_id=client_id,
            user_sub=user_sub,
        )
        await runtime.publish(
            ConsentRevoked(
                stage=stage,
                reason=ADMIN_REVOKE,
                user=UserRef(iss=user_iss, sub=user_sub),
                client_id=client_id,
            )
        )
    return withdrawn


def _refs(runtime: Runtime, grant: Grant) -> dict[str, Any]:
    target = backend_for_resource(runtime.config, grant.resource)
    return {
        "user": UserRef(iss=grant.user_iss, sub=grant.user_sub),
        "agent": AgentRef(**agent_claim(grant)),
        "backend": target[0] if target else None,
    }
