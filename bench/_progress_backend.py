"""An official-SDK MCP backend whose one tool reports progress, for benchmarks.

The server responds to every POST with an event stream (the SDK's default, not
its JSON-response mode), so a ``tools/call`` that carries a progress token
gets its progress notifications as events before the response. The app
requires a static API key header, as the demo ``partners`` backend does, so
that direct calls and calls through the gateway cost the backend the same.
"""

from __future__ import annotations

from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from starlette.types import ASGIApp

from gateway.demo.backends.common import transport_security
from gateway.demo.backends.partners import ApiKeyMiddleware

API_KEY = "progress-bench-key"
API_KEY_HEADER = "X-Api-Key"
TOOL_NAME = "count_with_progress"
MAX_STEPS = 100
MAX_DELAY_MS = 1000.0


def _build_server() -> MCPServer:
    server: MCPServer = MCPServer("progress", log_level="WARNING")

    @server.tool(name=TOOL_NAME)
    async def count_with_progress(
        ctx: Context[Any, Any], steps: int = 4, delay_ms: float = 0.0
    ) -> str:
        """Report progress 1 of ``steps`` at once, the rest ``delay_ms`` apart.

        The result follows the last progress notification without a delay.
        ``steps`` is clamped to 1..100 and ``delay_ms`` to 0..1000.
        """
        steps = min(max(steps, 1), MAX_STEPS)
        delay = min(max(delay_ms, 0.0), MAX_DELAY_MS) / 1000
        await ctx.report_progress(1, steps)
        for step in range(2, steps + 1):
            if delay:
                await anyio.sleep(delay)
            await ctx.report_progress(step, steps)
        return f"counted to {steps}"

    return server


def create_progress_app() -> ASGIApp:
    """Return the progress backend as an ASGI app serving ``/mcp``.

    Requests without ``X-Api-Key: progress-bench-key`` get 401.
    """
    app = _build_server().streamable_http_app(
        transport_security=transport_security(), json_response=False
    )
    return ApiKeyMiddleware(app, api_key=API_KEY, header=API_KEY_HEADER)
