"""Telling a handshake-era backend that the gateway gave up on a request."""

from __future__ import annotations

from typing import Any

import anyio
import httpx

from gateway.mcp.backend import BackendClient
from gateway.mcp.jsonrpc import encode


async def send_cancelled(
    client: BackendClient,
    headers: dict[str, str],
    request_id: Any,
    *,
    reason: str,
    timeout: float,
) -> str | None:
    """POST ``notifications/cancelled`` for ``request_id`` and close the answer.

    The backend's status is not checked: a backend that no longer knows the
    request ignores the notification, as MCP allows. Waits at most
    ``timeout`` seconds.

    Returns:
        None once the backend answered, else what went wrong.
    """
    notification = {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": request_id, "reason": reason},
    }
    with anyio.move_on_after(timeout):
        try:
            upstream = await client.send("POST", headers, encode(notification))
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        await upstream.aclose()
        return None
    return f"no answer within {timeout:g} seconds"
