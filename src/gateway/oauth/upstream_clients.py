"""Every OIDC client the gateway uses at the upstream IdP, and which one to use.

The gateway signs users in through its own client (``upstream``) unless the
agent is verified and has a client of its own (``agents.<name>.upstream``).
The client chosen at ``/oauth2/authorize`` is recorded in the grant, because
the IdP accepts the code, the refresh token and the token exchange only from
the client that the user signed in through.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx
import msgspec

from gateway.errors import ExchangeError
from gateway.oauth.grants import UpstreamTokens
from gateway.oauth.idp_metadata import IdpMetadata
from gateway.oauth.upstream import UpstreamClient

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.runtime import Runtime

__all__ = ["UnknownUpstreamClientError", "UpstreamClients", "upstream_clients"]


class UnknownUpstreamClientError(LookupError):
    """A grant or sign-in names an upstream client the config no longer has."""


class UpstreamClients:
    """The gateway's upstream client and the agents' own clients at the same IdP.

    Implements ``UpstreamRefresher``: each refresh goes to the client that
    the refresh token was issued to.

    Args:
        gateway: The gateway's own client (``upstream``).
        agents: Each agent's own client, by agent name.
    """

    def __init__(
        self,
        gateway: UpstreamClient,
        agents: Mapping[str, UpstreamClient] | None = None,
    ) -> None:
        self.gateway = gateway
        self._by_agent = dict(agents or {})
        self._by_client_id = {
            client.client_id: client for client in self._by_agent.values()
        }

    @classmethod
    def from_config(
        cls, config: GatewayConfig, *, http: httpx.AsyncClient
    ) -> UpstreamClients:
        """Build the clients of ``upstream`` and of every ``agents.<name>.upstream``.

        They share one discovery document and one JWKS cache, and the same
        issuer, scopes, leeway and redirect URI (the gateway's callback).
        """
        metadata = IdpMetadata(config.upstream.issuer, http=http)
        redirect_uri = config.server.public_url + "/oauth2/callback"
        gateway = UpstreamClient(
            config.upstream, redirect_uri=redirect_uri, http=http, metadata=metadata
        )
        agents: dict[str, UpstreamClient] = {}
        for name, agent in config.agents.items():
            own = agent.upstream
            if own is None:
                continue
            settings = msgspec.structs.replace(
                config.upstream,
                client_id=own.client_id,
                client_secret=own.client_secret,
                token_endpoint_auth_method=own.token_endpoint_auth_method,
                private_key_file=own.private_key_file,
                private_key_id=own.private_key_id,
                private_key_algorithm=own.private_key_algorithm,
            )
            agents[name] = UpstreamClient(
                settings, redirect_uri=redirect_uri, http=http, metadata=metadata
            )
        return cls(gateway, agents)

    def choose(self, agent_id: str, *, verified: bool) -> str | None:
        """Return the client that signs users in for an agent, as a grant records it.

        The agent's own client is chosen only when the agent's identity is
        verified, so a client that merely calls itself by an agent's name
        never signs users in as that agent.

        Returns:
            The agent's own client id, or None for the gateway's client.
        """
        if verified:
            own = self._by_agent.get(agent_id)
            if own is not None:
                return own.client_id
        return None

    def get(self, client_id: str | None) -> UpstreamClient:
        """Return the client recorded in a sign-in or grant.

        Args:
            client_id: An agent's upstream client id, or None for the
                gateway's own client.

        Raises:
            UnknownUpstreamClientError: No configured agent has that client.
        """
        if client_id is None:
            return self.gateway
        client = self._by_client_id.get(client_id)
        if client is None:
            msg = f"no agent is configured with the upstream client {client_id!r}"
            raise UnknownUpstreamClientError(msg)
        return client

    async def refresh(
        self, refresh_token: str, *, client_id: str | None = None
    ) -> UpstreamTokens:
        """Refresh upstream tokens through the client they were issued to.

        Raises:
            ExchangeError: The IdP rejected the refresh token, or the client
                is no longer configured (``invalid_grant``, so the user signs
                in again).
            UpstreamError: The IdP could not be reached.
        """
        try:
            client = self.get(client_id)
        except UnknownUpstreamClientError as exc:
            raise ExchangeError(
                f"the sign-in cannot be renewed: {exc}",
                oauth_error="invalid_grant",
                step="upstream_refresh",
            ) from None
        return await client.refresh(refresh_token)


def upstream_clients(runtime: Runtime) -> UpstreamClients:
    """Return the runtime's upstream clients, or only ``runtime.upstream``.

    A runtime assembled without :attr:`Runtime.upstream_clients` (as some
    tests build one) has the gateway's own client only.
    """
    clients = runtime.upstream_clients
    if clients is None:
        return UpstreamClients(runtime.upstream)
    return clients
