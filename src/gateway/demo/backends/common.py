"""Parts shared by the demo MCP backends: transport security, caller, log messages."""

from __future__ import annotations

import json
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
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "HandshakeOnly",
    "StatelessOnly",
    "caller_of",
    "send_log",
    "transport_security",
]

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


class HandshakeOnly:
    """Serve an MCP app as a server from before 2026-07-28 would.

    The official SDK serves both protocol eras. Many servers in use only know
    the ``initialize`` handshake, so a request whose ``MCP-Protocol-Version``
    is not a handshake revision gets what such a server answers: 400 with
    JSON-RPC error -32022 listing the revisions it supports.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse non-handshake protocol versions; pass everything else on."""
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            version = headers.get(b"mcp-protocol-version")
            if version is not None and version.decode("latin-1") not in (
                HANDSHAKE_PROTOCOL_VERSIONS
            ):
                await _refuse_version(version.decode("latin-1"), send)
                return
        await self.app(scope, receive, send)


class StatelessOnly:
    """Serve an MCP app as a server that knows only 2026-07-28 would.

    A request without a 2026-07-28 ``MCP-Protocol-Version`` (``initialize``,
    a session's GET stream or DELETE) gets 400 with JSON-RPC error -32022
    naming 2026-07-28 as the only supported revision.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse handshake-era requests; pass 2026-07-28 ones on."""
        if scope["type"] == "http":
            raw = dict(scope["headers"]).get(b"mcp-protocol-version", b"")
            version = raw.decode("latin-1")
            if version not in MODERN_PROTOCOL_VERSIONS:
                await _refuse_version(version, send, supported=MODERN_PROTOCOL_VERSIONS)
                return
        await self.app(scope, receive, send)


async def _refuse_version(
    requested: str,
    send: Send,
    supported: Sequence[str] = HANDSHAKE_PROTOCOL_VERSIONS,
) -> None:
    error = {
        "code": -32022,
        "message": "Unsupported protocol version",
        "data": {"supported": list(supported), "requested": requested},
    }
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
