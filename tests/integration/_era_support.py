"""Calls through the gateway with the official client in a chosen protocol era."""

from __future__ import annotations

from typing import Any

import anyio
from _transport_harness import BackendControls
from mcp.client import Client

FORCED_HANDSHAKE = "legacy"
"""The official client's mode for the ``initialize`` handshake at 2025-11-25."""
FORCED_STATELESS = "2026-07-28"


def text_of(result: Any) -> str:
    """Return the text blocks of a tool result, joined."""
    return "".join(getattr(block, "text", "") for block in result.content)


async def gated_call(
    client: Client, controls: BackendControls, n: int = 3
) -> tuple[str, list[float]]:
    """Call ``gated_count`` and release its gate only once progress arrived.

    The tool reports progress 1 and then waits for the release, so the call
    finishes with ``released`` only when the first progress notification
    reached the client while the tool was still running; a buffering hop
    makes it wait for its timeout instead.
    """
    first = anyio.Event()
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, msg: str | None) -> None:
        progress.append(value)
        first.set()

    async def release_after_first() -> None:
        await first.wait()
        controls.release.set()

    async with anyio.create_task_group() as group:
        group.start_soon(release_after_first)
        result = await client.call_tool(
            "gated_count", {"n": n}, progress_callback=on_progress
        )
        group.cancel_scope.cancel()
    return text_of(result), progress


def answer_of(response: Any) -> dict[str, Any]:
    """Return the JSON-RPC response in an HTTP response: a JSON body or SSE events.

    For an event stream, the last event whose data holds an ``id`` and no
    ``method`` is the answer.
    """
    import json

    if response.headers.get("content-type", "").startswith("application/json"):
        answer: dict[str, Any] = response.json()
        return answer
    found: dict[str, Any] = {}
    for line in response.text.splitlines():
        if line.startswith("data:") and line[5:].strip():
            message = json.loads(line[5:])
            if "method" not in message and "id" in message:
                found = message
    return found
