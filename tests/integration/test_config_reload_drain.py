"""What a stream in flight gets when a reload's drain timeout closes its pool.

The gateway's MCP data path runs in this process (see
:mod:`_transport_harness`); the test closes the backend's connection pool
directly, as :class:`gateway.draining.RuntimeDrainer` does once its timeout
has passed.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx2
import pytest
from _transport_harness import BackendControls, running_backend, running_gateway
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.anyio

ENDED_WITHIN = 3.0
"""Seconds the client may wait for its stream to end once the pool closed."""


@pytest.mark.xfail(
    strict=True,
    reason="the gateway keeps the client's event stream open when the backend "
    "pool closes under it, so the call waits for the client's own timeout",
)
async def test_backend_pool_closed_mid_stream_ends_call() -> None:
    """A call whose backend pool closes mid-stream ends instead of hanging."""
    controls = BackendControls()
    progressed = anyio.Event()
    outcome: list[Any] = []

    async def on_progress(value: float, total: float | None, text: str | None) -> None:
        progressed.set()

    async with (
        running_backend(controls) as backend_url,
        running_gateway(backend_url) as gateway,
    ):

        async def call() -> None:
            async with httpx2.AsyncClient(timeout=20.0) as http:
                transport = streamable_http_client(gateway.mcp_url, http_client=http)
                async with Client(transport, mode="legacy") as client:
                    await client.list_tools()
                    try:
                        outcome.append(
                            await client.call_tool(
                                "gated_count", {"n": 3}, progress_callback=on_progress
                            )
                        )
                    except Exception as exc:
                        outcome.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(call)
            with anyio.fail_after(10):
                await progressed.wait()
            await gateway.runtime.backends["employees"].client.aclose()
            with anyio.move_on_after(ENDED_WITHIN):
                while not outcome:
                    await anyio.sleep(0.05)
            controls.release.set()
            group.cancel_scope.cancel()

    assert outcome, "the call was still waiting after its backend pool closed"
