"""An example custom stage: every MCP request must name its tenant in a header.

Reference it in the YAML ``pipeline`` as
``examples.stages.require_tenant_header:RequireTenantHeaderStage`` (the
module must be importable by the gateway process), after ``authenticate`` so
that rejections name the user, and give it settings under the same key in
``stages``. ``docs/writing-a-stage.md`` walks through this file.
"""

from __future__ import annotations

import re
from typing import ClassVar

import msgspec
from opentelemetry import trace

from gateway.context import RequestContext
from gateway.events import AgentRef, GatewayEvent, UserRef
from gateway.facts import AGENT, PRINCIPAL, AgentIdentity, Principal
from gateway.mcp.jsonrpc import INVALID_REQUEST
from gateway.mcp.response import GatewayResponse, jsonrpc_error_response
from pipeline import BaseStage, Event, Next

TENANT = "tenant"
"""The fact this stage provides: the tenant named by the request."""

FORBIDDEN = -32003
"""JSON-RPC code of a rejected tenant, the one the ``authorize`` stage uses."""

_TITLES = {400: "Bad Request", 403: "Forbidden"}

# RFC 9110 section 5.1: a field name is a token.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class TenantRejected(GatewayEvent, frozen=True, kw_only=True):
    """A request was rejected because its tenant header was missing or not allowed.

    Attributes:
        header: The header the stage reads.
        tenant: The value sent, or None when the header was missing.
        detail: A sentence saying what was wrong.
    """

    header: str
    tenant: str | None = None
    detail: str


class RequireTenantHeaderConfig(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True
):
    """Settings of the stage, under ``stages.<reference>`` in YAML."""

    header: str = "X-Tenant-Id"
    """The request header that names the tenant."""
    allowed: list[str] = msgspec.field(default_factory=list)
    """Tenants accepted; an empty list accepts any non-empty value."""

    def __post_init__(self) -> None:
        if not _HEADER_NAME.fullmatch(self.header):
            msg = f"header {self.header!r} is not a valid HTTP header name"
            raise ValueError(msg)


class RequireTenantHeaderStage(BaseStage[RequestContext, GatewayResponse]):
    """Require a tenant header on every request to the backend.

    Reads the ``principal`` fact, and ``agent`` when an earlier stage
    provided it, to name them in its event. A request without the header
    ends the chain with HTTP 400 and a JSON-RPC error whose ``data.reason``
    is ``missing_tenant``. A value not in ``allowed`` ends it with HTTP 403
    and ``tenant_not_allowed``. Both publish ``TenantRejected``.

    Otherwise the stage provides the ``tenant`` fact, records it on its span
    as ``gateway.tenant`` and calls the rest of the chain. It does not
    change the response.

    It must run after ``audit``, so that audit records its rejections, and
    before ``exchange``, so that a rejected request costs no token exchange.
    """

    requires: ClassVar[frozenset[str]] = frozenset({PRINCIPAL})
    provides: ClassVar[frozenset[str]] = frozenset({TENANT})
    after: ClassVar[frozenset[str]] = frozenset({"audit"})
    before: ClassVar[frozenset[str]] = frozenset({"exchange"})
    events: ClassVar[tuple[type[Event], ...]] = (TenantRejected,)
    stability = "alpha"
    Config = RequireTenantHeaderConfig

    async def handle(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> GatewayResponse:
        """Provide ``tenant``, or end the chain with 400 or 403."""
        header = self.config.header
        tenant = ctx.headers.get(header.lower(), "").strip()
        if not tenant:
            detail = f"the {header} header is missing; send the tenant in it"
            return await self._reject(
                ctx, 400, INVALID_REQUEST, "missing_tenant", None, detail
            )
        if self.config.allowed and tenant not in self.config.allowed:
            detail = f"tenant {tenant!r} in the {header} header is not allowed"
            return await self._reject(
                ctx, 403, FORBIDDEN, "tenant_not_allowed", tenant, detail
            )

        ctx.provide(TENANT, tenant)
        trace.get_current_span().set_attribute("gateway.tenant", tenant)
        return await call_next(ctx)

    async def _reject(
        self,
        ctx: RequestContext,
        status: int,
        code: int,
        reason: str,
        tenant: str | None,
        detail: str,
    ) -> GatewayResponse:
        principal: Principal = ctx.fact(PRINCIPAL)
        agent: AgentIdentity | None = ctx.get_fact(AGENT)
        await ctx.runtime.publish(
            TenantRejected(
                request_id=ctx.request_id,
                stage=self.name,
                user=UserRef(iss=principal.iss, sub=principal.sub),
                agent=AgentRef(id=agent.id, verified=agent.verified, trust=agent.trust)
                if agent is not None
                else None,
                backend=ctx.backend_name,
                method=ctx.mcp_method,
                tool=ctx.tool,
                outcome="denied",
                reason=reason,
                header=self.config.header,
                tenant=tenant,
                detail=detail,
            )
        )
        return jsonrpc_error_response(
            status,
            ctx.message.id if ctx.message is not None else None,
            code,
            f"{_TITLES[status]}: {detail}",
            reason=reason,
        )
