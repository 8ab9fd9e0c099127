"""The ``identify_agent`` stage: which agent is calling."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from gateway.context import RequestContext
from gateway.events import AgentIdentified, AgentRef, AgentRejected, UserRef
from gateway.facts import AGENT, PRINCIPAL, AgentIdentity, Principal
from gateway.mcp.jsonrpc import shorten
from gateway.mcp.response import GatewayResponse, jsonrpc_error_response
from pipeline import BaseStage, Next

AGENT_HEADER = "x-mcp-agent"
AGENT_CONFLICT = -32003


class IdentifyAgentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Settings of the ``identify_agent`` stage."""

    header: str = AGENT_HEADER
    """A request header that may name the agent; it can only narrow, never widen."""


class IdentifyAgentStage(BaseStage[RequestContext, GatewayResponse]):
    """Identify the agent from the verified token, never from a header alone.

    Reads the ``principal`` fact. The agent recorded in the access token at
    issuance is used when it still names a configured agent. Otherwise the
    client is matched against the current config again, and an unmatched
    client gets the ``default`` agent policy.

    An agent header that disagrees with the token's agent ends the chain with
    403 and an ``AgentRejected`` event; an empty or blank header is ignored.
    Success provides ``agent`` and publishes ``AgentIdentified``.
    """

    requires: ClassVar[frozenset[str]] = frozenset({PRINCIPAL})
    provides: ClassVar[frozenset[str]] = frozenset({AGENT})
    stability = "beta"
    Config = IdentifyAgentConfig

    async def handle(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> GatewayResponse:
        """Provide the ``agent`` fact, or return 403 on a conflicting header."""
        principal: Principal = ctx.fact(PRINCIPAL)
        agent = self._agent_for(ctx, principal)
        user = UserRef(iss=principal.iss, sub=principal.sub)
        agent_ref = AgentRef(id=agent.id, verified=agent.verified, trust=agent.trust)
        # An empty or blank header names no agent, the same as no header.
        claimed = ctx.headers.get(self.config.header.lower(), "").strip()
        if claimed and claimed != agent.id:
            detail = (
                f"the {self.config.header} header names agent {shorten(claimed)!r}, "
                f"but the access token was issued to agent {agent.id!r}"
            )
            await ctx.runtime.publish(
                AgentRejected(
                    request_id=ctx.request_id,
                    stage=self.name,
                    user=user,
                    agent=agent_ref,
                    backend=ctx.backend_name,
                    method=ctx.mcp_method,
                    tool=ctx.tool,
                    outcome="denied",
                    reason="agent_conflict",
                    detail=detail,
                )
            )
            return jsonrpc_error_response(
                403,
                ctx.message.id if ctx.message else None,
                AGENT_CONFLICT,
                f"Forbidden: {detail}",
                reason="agent_conflict",
            )
        ctx.provide(AGENT, agent)
        await ctx.runtime.publish(
            AgentIdentified(
                request_id=ctx.request_id,
                stage=self.name,
                user=user,
                agent=agent_ref,
                backend=ctx.backend_name,
                method=ctx.mcp_method,
                tool=ctx.tool,
                client_id=principal.client_id,
            )
        )
        return await call_next(ctx)

    def _agent_for(self, ctx: RequestContext, principal: Principal) -> AgentIdentity:
        claim = principal.agent_claim or {}
        agent_id = claim.get("id")
        if isinstance(agent_id, str) and agent_id in ctx.runtime.config.agents:
            verified = bool(claim.get("verified", False))
            return AgentIdentity(
                id=agent_id,
                verified=verified,
                trust="verified" if verified else "self-asserted",
                client_id=principal.client_id,
            )
        return ctx.runtime.agents.identify(
            client_id=principal.client_id, client_name=None
        )
