"""A client that closes its GET (listen) stream ends the request normally.

Closing the GET stream is how a client stops listening for server messages,
so the ``ResponseCompleted`` of that GET has outcome ``success``, and a
client that left has ``completed`` false and the reason code
``client_disconnected``, never an error outcome or a free-text reason.
The stack is the case backend (official MCP SDK server) behind the gateway's
MCP endpoint, with the ``audit`` stage in front of the transport harness's
stages.
"""

from __future__ import annotations

import re
from typing import Any

import anyio
import httpx
import pytest
from _case_support import case_stack, open_session
from _transport_harness import GatewayHarness, default_stages

from gateway.audit.config import AuditConfig
from gateway.events import ResponseCompleted
from gateway.runtime import Runtime
from gateway.stages.audit import AuditStage

pytestmark = pytest.mark.anyio

EVENT_STREAM = {"accept": "text/event-stream"}
REASON_CODE = re.compile(r"[a-z][a-z0-9_]*")


def audited_stages(runtime: Runtime) -> list[Any]:
    audit = AuditStage(name="audit", config=AuditConfig(sinks=[]), resources=runtime)
    return [audit, *default_stages(runtime)]


async def get_completion(gateway: GatewayHarness) -> ResponseCompleted:
    """Return the ``ResponseCompleted`` of the one GET, waiting up to 5 s."""
    with anyio.fail_after(5):
        while True:
            await gateway.settle()
            found = [
                event
                for event in gateway.events_of(ResponseCompleted)
                if event.streamed and event.method is None
            ]
            if found:
                [event] = found
                return event


async def open_get_stream(client: httpx.AsyncClient, url: str, headers: Any) -> None:
    """Open the GET stream, wait for its status, and close it from the client."""
    async with client.stream(
        "GET", url, headers={**headers, **EVENT_STREAM}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")


async def test_audit_client_closes_get_stream_success() -> None:
    """A GET stream the client closes is a success with client_disconnected."""
    async with case_stack(chain_factory=audited_stages) as (gateway, client, _):
        headers = await open_session(client, gateway.mcp_url)
        await open_get_stream(client, gateway.mcp_url, headers)
        event = await get_completion(gateway)
    assert event.outcome == "success"
    assert event.status == 200
    assert event.completed is False
    assert event.reason == "client_disconnected"


async def test_audit_get_stream_session_deleted_not_error() -> None:
    """A GET stream ended by the session's DELETE is never an error outcome."""
    async with case_stack(chain_factory=audited_stages) as (gateway, client, _):
        headers = await open_session(client, gateway.mcp_url)
        async with client.stream(
            "GET", gateway.mcp_url, headers={**headers, **EVENT_STREAM}
        ) as response:
            assert response.status_code == 200
            deleted = await client.delete(gateway.mcp_url, headers=headers)
            assert deleted.status_code in (200, 202, 204)
        event = await get_completion(gateway)
    assert event.outcome == "success"
    assert event.status == 200
    assert event.reason is None or REASON_CODE.fullmatch(event.reason)
