"""The ``partners`` demo MCP server, protected by a static API key header."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec
import structlog
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.asgi_tracing import ServerSpanMiddleware

from .common import HandshakeOnly, send_log, transport_security

__all__ = ["ApiKeyMiddleware", "create_partners_app"]

logger = structlog.get_logger(__name__)

_STATUS_CHECKS = ("contract", "billing", "integration", "support")
_STATUS_STEP_DELAY = 0.05


class ApiKeyMiddleware:
    """Reject HTTP requests whose API key header is missing or wrong with 401.

    WebSocket connections without the key are closed before they are accepted.
    Lifespan messages pass through untouched.

    Args:
        app: The application to protect.
        api_key: The one accepted key.
        header: Name of the header carrying the key.
    """

    def __init__(self, app: ASGIApp, *, api_key: str, header: str) -> None:
        if not api_key:
            msg = "api_key must not be empty"
            raise ValueError(msg)
        self._app = app
        self._expected = api_key.encode("utf-8")
        self._header = header.lower().encode("latin-1")
        self._header_name = header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or send 401 without reading its body."""
        if scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        presented = [value for name, value in scope["headers"] if name == self._header]
        # Exactly one header with exactly the key; compare_digest resists timing.
        if len(presented) == 1 and hmac.compare_digest(presented[0], self._expected):
            await self._app(scope, receive, send)
            return

        if not presented:
            reason = "missing"
        elif len(presented) == 1:
            reason = "invalid"
        else:
            reason = "repeated"
        logger.info("demo.api_key_rejected", header=self._header_name, reason=reason)
        if scope["type"] == "websocket":
            # Closing before accepting makes the server reject the handshake with 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        description = f"send a valid API key in the {self._header_name} header"
        body = msgspec.json.encode(
            {"error": "invalid_api_key", "error_description": description}
        )
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode("ascii")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _partners() -> dict[str, dict[str, Any]]:
    return {
        "P-100": {
            "partner_id": "P-100",
            "name": "Northwind Logistics",
            "tier": "gold",
            "region": "EMEA",
            "contact": "ops@northwind.example",
        },
        "P-200": {
            "partner_id": "P-200",
            "name": "Contoso Payments",
            "tier": "silver",
            "region": "AMER",
            "contact": "partners@contoso.example",
        },
        "P-300": {
            "partner_id": "P-300",
            "name": "Fabrikam Analytics",
            "tier": "bronze",
            "region": "APAC",
            "contact": "alliances@fabrikam.example",
        },
    }


def _build_server() -> MCPServer:
    server: MCPServer = MCPServer(
        "partners",
        instructions="Browse the demo partner directory and check partner health.",
        log_level="WARNING",
    )
    partners = _partners()

    def lookup(partner_id: str) -> dict[str, Any]:
        partner = partners.get(partner_id)
        if partner is None:
            msg = f"no partner has the id {partner_id!r}"
            raise ToolError(msg)
        return partner

    @server.tool()
    def list_partners(region: str | None = None) -> dict[str, Any]:
        """List partners, optionally only those of one region."""
        rows = [
            partner
            for partner in partners.values()
            if region is None or partner["region"].lower() == region.lower()
        ]
        return {"partners": rows}

    @server.tool()
    def get_partner(partner_id: str) -> dict[str, Any]:
        """Return one partner's record."""
        return {"partner": lookup(partner_id)}

    @server.tool()
    async def partner_status(ctx: Context[Any, Any], partner_id: str) -> dict[str, Any]:
        """Run the partner health checks, reporting progress after each."""
        partner = lookup(partner_id)
        total = len(_STATUS_CHECKS)
        await send_log(ctx, "info", f"checking partner {partner_id}")
        results: dict[str, str] = {}
        for step, check in enumerate(_STATUS_CHECKS, start=1):
            await anyio.sleep(_STATUS_STEP_DELAY)
            results[check] = "ok"
            await ctx.report_progress(step, total, f"{check} ok")
        return {"partner_id": partner["partner_id"], "checks": results, "healthy": True}

    @server.tool()
    def sync_partner_feed(partner_id: str) -> dict[str, Any]:
        """Pull the partner's product feed, whose upstream is always unavailable."""
        lookup(partner_id)
        msg = f"the product feed of partner {partner_id!r} answered 503; try later"
        raise ToolError(msg)

    return server


def create_partners_app(
    *,
    api_key: str,
    header: str = "X-Api-Key",
    allowed_hosts: Sequence[str] = (),
    json_response: bool = False,
    handshake_only: bool = True,
) -> ASGIApp:
    """Return the partners MCP server as an ASGI app serving ``/mcp``.

    It plays a server that predates 2026-07-28 unless ``handshake_only`` is
    False, so the demo shows the gateway bridging the two protocol eras.

    Args:
        api_key: The API key every HTTP request must carry.
        header: Name of the header carrying the key.
        allowed_hosts: ``Host`` values to accept besides loopback.
        json_response: Answer each POST with one JSON body instead of an event
            stream. Progress and log messages are then not sent.
        handshake_only: Refuse 2026-07-28 requests (see :class:`HandshakeOnly`).
    """
    app: ASGIApp = _build_server().streamable_http_app(
        transport_security=transport_security(allowed_hosts),
        json_response=json_response,
    )
    if handshake_only:
        app = HandshakeOnly(app)
    app = ApiKeyMiddleware(app, api_key=api_key, header=header)
    return ServerSpanMiddleware(app, component="partners", routes=("/mcp",))
