"""The ``rate_limit`` stage in a running gateway, driven by the official client.

The demo stack serves ``partners`` from an official-SDK backend behind a
chain with ``rate_limit`` after ``identify_agent`` (see :mod:`_stage_support`).
Tokens are signed in without MCP requests, so the tests count every request
that reaches the stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from _audit_support import jsonl_events
from _stage_support import BACKEND, access_token, sdk_client, stage_stack
from mcp import MCPError

from gateway.demo.runner import DemoStack
from gateway.stages.rate_limit import RATE_LIMITED

pytestmark = pytest.mark.anyio

PIPELINE = [
    "audit",
    "authenticate",
    "identify_agent",
    "rate_limit",
    "authorize",
    "exchange",
    "session",
    "forward",
]
MCP_HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
}


async def audit_events(stack: DemoStack, kind: str) -> list[dict[str, Any]]:
    """Wait for the audit sinks, then return the events of one type."""
    bus = stack.gateway.runtime.bus
    with anyio.fail_after(10):
        while any(bus.pending().values()):
            await anyio.sleep(0.02)
    return [e for e in jsonl_events(stack.audit_path) if e["type"] == kind]


async def open_raw_session(
    http: httpx.AsyncClient, url: str, token: str
) -> dict[str, str]:
    """Send ``initialize``; return the headers of the session's later requests."""
    headers = {**MCP_HEADERS, "authorization": f"Bearer {token}"}
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }
    opened = await http.post(url, json=initialize, headers=headers)
    assert opened.status_code == 200, opened.text
    return {
        **headers,
        "mcp-session-id": opened.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-06-18",
    }


async def call_echo(client: Any, text: str) -> MCPError | None:
    """Call ``echo``; return the error it raised, or None when it succeeded."""
    try:
        result = await client.call_tool("echo", {"text": text})
    except MCPError as exc:
        return exc
    assert result.content[0].text == text
    return None


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_rate_limit_over_burst_gets_429_then_refills(
    tmp_path: Path, mode: str
) -> None:
    """The call past the burst fails with 429 and Retry-After; waiting refills."""
    settings = {"per_minute": 60, "burst": 3, "methods": ["tools/call"]}
    responses: list[httpx2.Response] = []
    async with stage_stack(tmp_path, PIPELINE, {"rate_limit": settings}) as stack:
        token = await access_token(stack, agent="cursor")
        async with sdk_client(
            stack.mcp_url(BACKEND), token, responses, mode=mode
        ) as client:
            allowed = [await call_echo(client, f"call {n}") for n in range(3)]
            limited = await call_echo(client, "one too many")
            rejected = [r for r in responses if r.status_code == 429]
            assert len(rejected) == 1
            await anyio.sleep(int(rejected[0].headers["retry-after"]) + 0.05)
            refilled = await call_echo(client, "after the wait")
        limited_events = await audit_events(stack, "RateLimited")
        completed = await audit_events(stack, "ResponseCompleted")
        audit_text = stack.audit_path.read_text()

    assert allowed == [None, None, None]
    assert limited is not None
    assert limited.code == RATE_LIMITED
    assert limited.data["reason"] == "rate_limited"
    assert limited.data["retry_after"] == 1
    assert "retry after 1 s" in limited.message
    assert rejected[0].headers["retry-after"] == "1"
    assert rejected[0].headers["content-type"] == "application/json"
    assert refilled is None
    assert len(limited_events) == 1
    event = limited_events[0]
    assert event["outcome"] == "denied"
    assert event["reason"] == "rate_limited"
    assert event["retry_after"] == 1
    assert (event["per_minute"], event["burst"]) == (60, 3)
    assert event["user"]["sub"] == "00u_alice"
    assert event["agent"]["id"] == "cursor"
    assert event["tool"] == "echo"
    assert event["stage"] == "rate_limit"
    rejected_completions = [e for e in completed if e["status"] == 429]
    assert len(rejected_completions) == 1
    assert rejected_completions[0]["outcome"] == "denied"
    assert rejected_completions[0]["reason"] == "rate_limited"
    assert token not in audit_text


async def test_rate_limit_agents_and_users_have_own_buckets(tmp_path: Path) -> None:
    """Each user and agent has its own bucket; an agent override sets its size."""
    settings = {
        "per_minute": 60,
        "burst": 2,
        "methods": ["tools/call"],
        "agents": {"inspector": {"per_minute": 30, "burst": 1}},
    }
    async with stage_stack(tmp_path, PIPELINE, {"rate_limit": settings}) as stack:
        url = stack.mcp_url(BACKEND)
        outcomes: dict[str, list[bool]] = {}
        for label, agent, user in [
            ("alice/cursor", "cursor", "alice"),
            ("alice/inspector", "inspector", "alice"),
            ("bob/cursor", "cursor", "bob"),
        ]:
            token = await access_token(stack, agent=agent, user=user)
            async with sdk_client(url, token) as client:
                outcomes[label] = [
                    await call_echo(client, f"{label} {n}") is None for n in range(3)
                ]
        limited = await audit_events(stack, "RateLimited")

    assert outcomes["alice/cursor"] == [True, True, False]
    assert outcomes["alice/inspector"] == [True, False, False]
    assert outcomes["bob/cursor"] == [True, True, False]
    limits = {(e["user"]["sub"], e["agent"]["id"]): e for e in limited}
    assert limits[("00u_alice", "inspector")]["per_minute"] == 30
    assert limits[("00u_alice", "inspector")]["burst"] == 1
    # 30 a minute refills one token in 2 s.
    assert limits[("00u_alice", "inspector")]["retry_after"] == 2
    assert limits[("00u_alice", "cursor")]["burst"] == 2
    assert limits[("00u_bob", "cursor")]["burst"] == 2


async def test_rate_limit_default_counts_requests_only(tmp_path: Path) -> None:
    """Without methods, every request counts and notifications never do.

    Raw HTTP, so that the test controls every message sent (the SDK client
    may send requests of its own).
    """
    settings = {"per_minute": 60, "burst": 3}
    async with (
        stage_stack(tmp_path, PIPELINE, {"rate_limit": settings}) as stack,
        httpx.AsyncClient(timeout=10.0) as http,
    ):
        token = await access_token(stack, agent="cursor")
        url = stack.mcp_url(BACKEND)
        headers = await open_raw_session(http, url, token)
        notification = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        notified = [
            (await http.post(url, json=notification, headers=headers)).status_code
            for _ in range(5)
        ]
        responses = []
        for request_id in (2, 3, 4):
            listed = {"jsonrpc": "2.0", "id": request_id, "method": "tools/list"}
            responses.append(await http.post(url, json=listed, headers=headers))

    assert notified == [202] * 5
    assert [r.status_code for r in responses] == [200, 200, 429]
    body = responses[2].json()
    assert body["id"] == 4
    assert body["error"]["code"] == RATE_LIMITED
    assert body["error"]["data"] == {"reason": "rate_limited", "retry_after": 1}
    assert responses[2].headers["retry-after"] == "1"


async def test_rate_limit_listed_notification_gets_429_without_id(
    tmp_path: Path,
) -> None:
    """A notification that methods lists gets 429 with an id-less error."""
    settings = {
        "per_minute": 60,
        "burst": 1,
        "methods": ["notifications/roots/list_changed"],
    }
    async with (
        stage_stack(tmp_path, PIPELINE, {"rate_limit": settings}) as stack,
        httpx.AsyncClient(timeout=10.0) as http,
    ):
        token = await access_token(stack, agent="cursor")
        url = stack.mcp_url(BACKEND)
        headers = await open_raw_session(http, url, token)
        changed = {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}
        first = await http.post(url, json=changed, headers=headers)
        second = await http.post(url, json=changed, headers=headers)
        limited = await audit_events(stack, "RateLimited")

    assert first.status_code == 202
    assert second.status_code == 429
    assert second.headers["retry-after"] == "1"
    body = json.loads(second.content)
    assert body["id"] is None
    assert body["error"]["data"]["reason"] == "rate_limited"
    assert [e["method"] for e in limited] == ["notifications/roots/list_changed"]
