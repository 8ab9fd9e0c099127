"""The ``authorize`` stage: may this agent and user use this backend and tool."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import msgspec

from gateway.agents import DEFAULT_AGENT
from gateway.context import RequestContext
from gateway.events import AccessDenied, AccessGranted, ToolsFiltered
from gateway.facts import AGENT, DECISION, PRINCIPAL, AgentIdentity, Decision, Principal
from gateway.mcp.jsonrpc import INVALID_PARAMS, MAX_NAME_LENGTH
from gateway.mcp.response import GatewayResponse, jsonrpc_error_response
from gateway.mcp.sse import transform_messages
from gateway.oauth.metadata import SUPPORTED_SCOPES, resource_metadata_url
from pipeline import BaseStage, Next

ACCESS_DENIED = -32003

_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")
"""An RFC 6749 scope token: printable ASCII without space, quote or backslash."""


class AuthorizeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Settings of the ``authorize`` stage."""

    filter_tools_list: bool = True
    """Remove tools the agent may not call from ``tools/list`` results."""
    require_verified_agent: list[str] = msgspec.field(default_factory=list)
    """Backends that only verified agents may use."""
    tool_scopes: dict[str, dict[str, list[str]]] = msgspec.field(default_factory=dict)
    """Scopes a token needs per backend and tool, beyond the base ``mcp`` scope.

    A client may request these scopes at sign-in; a ``tools/call`` of a listed
    tool without all of them gets a 403 ``insufficient_scope`` challenge.
    """

    def __post_init__(self) -> None:
        """Reject empty scope lists and scopes that are not RFC 6749 tokens.

        Raises:
            ValueError: A tool lists no scope or a malformed one.
        """
        for backend, tools in self.tool_scopes.items():
            for tool, scopes in tools.items():
                where = f"tool_scopes.{backend}.{tool}"
                if not scopes:
                    msg = f"{where}: list at least one scope, or remove the tool"
                    raise ValueError(msg)
                for scope in scopes:
                    if not _SCOPE_TOKEN.fullmatch(scope):
                        msg = (
                            f"{where}: {scope!r} is not a scope token (1 to 128 "
                            "printable ASCII characters without space, quote or "
                            "backslash)"
                        )
                        raise ValueError(msg)


def known_scopes(
    stage_settings: Mapping[str, Any], backend: str | None = None
) -> list[str]:
    """Return the scopes the gateway may issue, ``mcp`` first.

    Args:
        stage_settings: The config's ``stages`` mapping; every ``authorize``
            reference (``authorize`` or ``authorize/<variant>``) counts.
        backend: Only the scopes of this backend's tools; all backends when
            ``None``.

    Returns:
        The base scopes, then the configured tool scopes, sorted and unique.
        Settings that do not validate are skipped (chain planning reports
        them).
    """
    found: set[str] = set()
    for ref, settings in stage_settings.items():
        if ref.split("/", 1)[0] != "authorize":
            continue
        try:
            config = msgspec.convert(settings or {}, AuthorizeConfig)
        except msgspec.ValidationError:
            continue
        for name, tools in config.tool_scopes.items():
            if backend is None or name == backend:
                for scopes in tools.values():
                    found.update(scopes)
    found.difference_update(SUPPORTED_SCOPES)
    return [*SUPPORTED_SCOPES, *sorted(found)]


class AuthorizeStage(BaseStage[RequestContext, GatewayResponse]):
    """Apply agent policy: allowed backends and per-tool allow/deny rules.

    Reads ``principal`` and ``agent``; provides ``decision``. A backend the
    agent may not use gets HTTP 403 (sign-in refuses such a token, so this
    only happens after a policy change). A denied ``tools/call`` gets HTTP
    200 and a JSON-RPC error naming the tool and the rule, or HTTP 403 when
    it was sent as a notification. A ``tools/call`` without a valid tool name
    gets -32602. A ``tools/call`` of a tool whose ``tool_scopes`` the token
    lacks gets HTTP 403 with a ``WWW-Authenticate`` ``insufficient_scope``
    challenge naming every scope the call needs (granted ones included) and
    the backend's protected resource metadata, so the client can sign in
    again with more scope; ``tools/list`` still lists that tool. Each of
    these publishes ``AccessDenied`` and ends the chain.
    Allowed requests publish ``AccessGranted``. ``tools/list`` results are
    filtered on the way back, with a ``ToolsFiltered`` event when tools were
    removed.
    """

    requires: ClassVar[frozenset[str]] = frozenset({PRINCIPAL, AGENT})
    provides: ClassVar[frozenset[str]] = frozenset({DECISION})
    stability = "beta"
    Config = AuthorizeConfig

    async def handle(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> GatewayResponse:
        """Provide ``decision``, or end the chain with a denial."""
        principal: Principal = ctx.fact(PRINCIPAL)
        agent: AgentIdentity = ctx.fact(AGENT)
        agents = ctx.runtime.agents
        backend = ctx.backend_name
        request_id = ctx.message.id if ctx.message else None

        if not agents.allows_backend(agent.id, backend):
            detail = (
                f"agent {agent.id!r} is not allowed to use backend {backend!r}; "
                "the gateway config may have changed since the token was issued"
            )
            if agent.id == DEFAULT_AGENT:
                detail = (
                    f"no agent in the gateway config matches client "
                    f"{agent.client_id!r}, so it may not use backend {backend!r}"
                )
            await self._deny(ctx, principal, agent, "backend_not_allowed", detail)
            return jsonrpc_error_response(
                403,
                request_id,
                ACCESS_DENIED,
                f"Forbidden: {detail}",
                reason="backend_not_allowed",
            )
        if backend in self.config.require_verified_agent and not agent.verified:
            detail = (
                f"backend {backend!r} requires a verified agent; "
                f"{agent.id!r} is {agent.trust}"
            )
            await self._deny(ctx, principal, agent, "agent_not_verified", detail)
            return jsonrpc_error_response(
                403,
                request_id,
                ACCESS_DENIED,
                f"Forbidden: {detail}",
                reason="agent_not_verified",
            )

        if ctx.mcp_method == "tools/call":
            name = ctx.message.tool_name if ctx.message else None
            if name is None or not name or len(name) > MAX_NAME_LENGTH:
                detail = (
                    "Invalid params: tools/call needs params.name, a non-empty "
                    f"string of at most {MAX_NAME_LENGTH} characters"
                )
                await self._deny(ctx, principal, agent, "invalid_tool_name", detail)
                is_request = ctx.message is not None and ctx.message.kind == "request"
                return jsonrpc_error_response(
                    200 if is_request else 400,
                    request_id,
                    INVALID_PARAMS,
                    detail,
                    reason="invalid_tool_name",
                )

        rule = f"agents.{agent.id}.backends"
        if ctx.tool is not None:
            allowed, rule = agents.check_tool(agent.id, backend, ctx.tool)
            if not allowed:
                detail = (
                    f"tool {ctx.tool!r} on backend {backend!r} is denied for agent "
                    f"{agent.id!r} by {rule}"
                )
                await self._deny(ctx, principal, agent, "tool_denied", detail)
                # A notification has no id for the error, so only an HTTP
                # error status shows its sender that it was not accepted.
                is_request = ctx.message is not None and ctx.message.kind == "request"
                return jsonrpc_error_response(
                    200 if is_request else 403,
                    request_id,
                    ACCESS_DENIED,
                    f"Access denied: {detail}",
                    reason="tool_denied",
                    data={"tool": ctx.tool, "rule": rule},
                    denied=True,
                )
            needed = self.config.tool_scopes.get(backend, {}).get(ctx.tool, [])
            missing = [scope for scope in needed if scope not in principal.scopes]
            if missing:
                return await self._insufficient_scope(
                    ctx, principal, agent, needed, missing
                )

        ctx.provide(
            DECISION, Decision(allowed=True, backend=backend, tool=ctx.tool, rule=rule)
        )
        await ctx.runtime.publish(
            AccessGranted(
                **ctx.event_fields(self.name),
                rule=rule,
            )
        )
        response = await call_next(ctx)
        if ctx.mcp_method == "tools/list" and self.config.filter_tools_list:
            return self._filter_tools(ctx, principal, agent, response)
        return response

    async def _insufficient_scope(
        self,
        ctx: RequestContext,
        principal: Principal,
        agent: AgentIdentity,
        needed: list[str],
        missing: list[str],
    ) -> GatewayResponse:
        """Answer 403 with a step-up challenge for the scopes the call needs."""
        scope = " ".join(dict.fromkeys([*principal.scopes, *needed]))
        detail = (
            f"tool {ctx.tool!r} on backend {ctx.backend_name!r} needs scope "
            f"{' '.join(missing)!r}, which the token lacks; sign in again with "
            f"scope {scope!r}"
        )
        await self._deny(ctx, principal, agent, "insufficient_scope", detail)
        metadata = resource_metadata_url(ctx.runtime.issuer, ctx.backend.path)
        challenge = (
            f'Bearer error="insufficient_scope", scope="{scope}", '
            f'resource_metadata="{metadata}"'
        )
        return jsonrpc_error_response(
            403,
            ctx.message.id if ctx.message else None,
            ACCESS_DENIED,
            f"Forbidden: {detail}",
            reason="insufficient_scope",
            data={"tool": ctx.tool, "scope": scope},
            headers={"www-authenticate": challenge},
        )

    async def _deny(
        self,
        ctx: RequestContext,
        principal: Principal,
        agent: AgentIdentity,
        reason: str,
        detail: str,
    ) -> None:
        await ctx.runtime.publish(
            AccessDenied(
                **ctx.event_fields(self.name),
                outcome="denied",
                reason=reason,
                detail=detail,
            )
        )

    def _filter_tools(
        self,
        ctx: RequestContext,
        principal: Principal,
        agent: AgentIdentity,
        response: GatewayResponse,
    ) -> GatewayResponse:
        agents = ctx.runtime.agents
        removed: list[str] = []

        def keep_allowed(message: dict[str, Any]) -> dict[str, Any]:
            result = message.get("result")
            if not isinstance(result, dict) or not isinstance(
                result.get("tools"), list
            ):
                return message
            kept = []
            for tool in result["tools"]:
                name = tool.get("name") if isinstance(tool, dict) else None
                if (
                    isinstance(name, str)
                    and not agents.check_tool(agent.id, ctx.backend_name, name)[0]
                ):
                    removed.append(name)
                    continue
                kept.append(tool)
            return {**message, "result": {**result, "tools": kept}}

        async def report(_outcome: Any) -> None:
            if removed:
                await ctx.runtime.publish(
                    ToolsFiltered(
                        **ctx.event_fields(self.name),
                        removed=sorted(set(removed)),
                    )
                )

        filtered = transform_messages(response, keep_allowed)
        filtered.on_close.append(report)
        return filtered
