"""Which requests the backend deadline applies to."""

from __future__ import annotations

from typing import Any

from gateway.config import BackendConfig
from gateway.context import RequestContext
from gateway.mcp.answers import request_deadline
from gateway.mcp.jsonrpc import encode, parse_message


def context(method: str, http_method: str = "POST") -> RequestContext:
    backend = BackendConfig(path="/b/mcp", url="http://127.0.0.1:9/mcp", deadline=5.0)
    body = encode({"jsonrpc": "2.0", "id": 1, "method": method})
    runtime: Any = None
    return RequestContext(
        runtime=runtime,
        request_id="r",
        http_method=http_method,
        backend_name="b",
        backend=backend,
        resource="http://gw/b/mcp",
        headers={},
        body=body,
        message=parse_message(body) if http_method == "POST" else None,
    )


def test_deadline_applies_to_tool_calls() -> None:
    """A POSTed tools/call must end within the deadline."""
    ctx = context("tools/call")
    assert request_deadline(ctx) == ctx.started + 5.0


def test_deadline_spares_listen_and_get_streams() -> None:
    """subscriptions/listen and GET streams are meant to stay open."""
    assert request_deadline(context("subscriptions/listen")) is None
    assert request_deadline(context("", http_method="GET")) is None
