"""Parts shared by the demo MCP backends: transport security, caller, log messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.connection import allowed_log_levels
from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import (
    LoggingLevel,
    LoggingMessageNotification,
    LoggingMessageNotificationParams,
)

__all__ = ["caller_of", "send_log", "transport_security"]

_LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*")
_LOOPBACK_ORIGINS = ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*")


def transport_security(extra_hosts: Sequence[str] = ()) -> TransportSecuritySettings:
    """Return DNS-rebinding protection that accepts loopback on any port.

    Args:
        extra_hosts: More ``Host`` values to accept, such as ``employees:8001``
            when the backend runs in a container; ``name:*`` accepts any port.
    """
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*_LOOPBACK_HOSTS, *extra_hosts],
        allowed_origins=list(_LOOPBACK_ORIGINS),
    )


def caller_of(ctx: Context[Any, Any]) -> dict[str, Any]:
    """Return who sent the current request, as the bearer token states it.

    A backend without token authentication returns ``{"sub": None}``.
    """
    request = ctx.request_context.request
    scope = getattr(request, "scope", None)
    user = scope.get("user") if isinstance(scope, dict) else None
    if not isinstance(user, AuthenticatedUser):
        return {"sub": None}
    token = user.access_token
    claims = token.claims or {}
    return {
        "sub": token.subject,
        "email": claims.get("email"),
        "client_id": token.client_id,
        "scopes": list(token.scopes),
    }


async def send_log(ctx: Context[Any, Any], level: LoggingLevel, message: str) -> None:
    """Send an MCP log message on the current request's stream.

    The SDK marks its logging helpers deprecated because protocol 2026-07-28
    deprecates the logging capability. Handshake-era clients (2025-11-25 and
    before) still receive log messages, and 2026-07-28 clients receive them
    only when the request opts in; ``allowed_log_levels`` applies that rule.
    """
    levels = allowed_log_levels(ctx.protocol_version or "", ctx.request_context.meta)
    if level not in levels:
        return
    notification = LoggingMessageNotification(
        params=LoggingMessageNotificationParams(level=level, data=message)
    )
    await ctx.request_context.session.send_notification(
        notification, related_request_id=ctx.request_context.request_id
    )
