"""The clients that serve the exchange of one grant, at the IdP and the backend.

The IdP accepts a token exchange only from the client that the subject ID
token was issued to, so a grant signed in through a verified agent's own
upstream client exchanges through that client. The IdP then names the
agent's client at the backend authorization server in the ID-JAG, and that
client must redeem it (``auth.agent_clients``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from gateway.config import GatewayConfig, IdJagAuth
from gateway.config.model import ClientCredentialsConfig
from gateway.exchange.idjag import UpstreamTokenClient
from gateway.oauth.grants import UPSTREAM_CLIENT_REMOVED, GrantEndedError, GrantStore

__all__ = [
    "GrantClients",
    "UpstreamClientSet",
    "backend_client",
    "upstream_client_ids",
]


class UpstreamClientSet(Protocol):
    """The upstream clients that grants may name (``UpstreamClients``)."""

    def get(self, client_id: str | None) -> UpstreamTokenClient:
        """Return the client with this id; the gateway's own for None.

        Raises:
            LookupError: No such client is configured.
        """
        ...


class GrantClients:
    """The upstream client of each grant, remembered, and the matching clients.

    A grant's upstream client never changes, so it is read from the grant
    once and then kept in a bounded map, and the hot path does not read the
    grant again.

    Args:
        grants: Where the grants are kept.
        upstream_clients: Every upstream client a grant may name; with None,
            only the gateway's own client is known.
        max_entries: Bound on remembered grants; the least recently used
            goes first.
    """

    def __init__(
        self,
        grants: GrantStore,
        upstream_clients: UpstreamClientSet | None,
        *,
        max_entries: int,
    ) -> None:
        self._grants = grants
        self._upstream_clients = upstream_clients
        self._known: OrderedDict[str, str | None] = OrderedDict()
        self._max_entries = max_entries

    async def client_id_of(self, grant_id: str) -> str | None:
        """Return the upstream client a grant records; None for the gateway's."""
        if grant_id in self._known:
            self._known.move_to_end(grant_id)
            return self._known[grant_id]
        grant = await self._grants.get(grant_id)
        if grant is None:
            # The exchange reports the ended sign-in; nothing to remember.
            return None
        self._known[grant_id] = grant.upstream_client_id
        if len(self._known) > self._max_entries:
            self._known.popitem(last=False)
        return grant.upstream_client_id

    def remembered(self, grant_id: str) -> str | None:
        """Return the upstream client of a grant seen by :meth:`client_id_of`."""
        return self._known.get(grant_id)

    async def upstream_for(
        self, grant_id: str, client_id: str | None
    ) -> UpstreamTokenClient | None:
        """Return the upstream client that exchanges; None for the gateway's own.

        Raises:
            GrantEndedError: The client is no longer configured; the grant is
                revoked first.
        """
        if client_id is None:
            return None
        try:
            if self._upstream_clients is None:
                raise LookupError(client_id)
            return self._upstream_clients.get(client_id)
        except LookupError:
            raise GrantEndedError(
                f"the upstream client {client_id!r} of this sign-in is no longer "
                "configured; sign in again",
                oauth_error="invalid_grant",
                revocation_reason=UPSTREAM_CLIENT_REMOVED,
                revoked=await self._grants.revoke(grant_id),
            ) from None


def backend_client(
    config: GatewayConfig, auth: IdJagAuth, upstream_client_id: str | None
) -> ClientCredentialsConfig | None:
    """Return the agent's client at the backend authorization server, if any.

    Only a user who signed in through an agent's own upstream client gets
    ID-JAGs that name the agent, so only then is the agent's client used.
    None means ``auth``'s own client.
    """
    if upstream_client_id is None:
        return None
    for name, agent in config.agents.items():
        if agent.upstream is not None and agent.upstream.client_id == (
            upstream_client_id
        ):
            return auth.agent_clients.get(name)
    return None


def upstream_client_ids(config: GatewayConfig) -> list[str | None]:
    """Return None (the gateway's client) and every agent's upstream client id."""
    ids: list[str | None] = [None]
    for agent in config.agents.values():
        if agent.upstream is not None:
            ids.append(agent.upstream.client_id)
    return ids
