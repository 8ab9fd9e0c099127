"""Signing keys that rotate while the gateway serves MCP traffic.

The whole demo runs on loopback (dev IdP, demo backends, gateway) with
``signing.rotate_after`` at one hour. Alice signs in through the official
MCP SDK client, and the SDK client then calls tools with her token. The key
maintenance task runs as in production, but checks every 20 ms instead of
5 s, and its clock is a test clock, so the hour of rotation and the minutes
of retention pass at once. Token lifetimes are checked on the real clock,
so a token issued before the rotation stays unexpired throughout.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import msgspec
import pytest
from _case_support import sign_in
from _transport_harness import MCP_HEADERS, initialize_body
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway.app import open_gateway
from gateway.demo.driver import MemoryTokenStorage
from gateway.demo.runner import DEMO_PORTS, DemoStack, demo_config, demo_peer_apps
from gateway.demo.serve import bind_socket, run_app
from gateway.oauth import key_rotation
from gateway.oauth.key_file import KeyEntry
from gateway.oauth.key_schedule import MAX_KEYS
from gateway.oauth.keys import KeySchedule, SigningKeys

pytestmark = pytest.mark.anyio

HOUR = 3600
MAX_CALLS = 200
"""Upper bound of the tool calls one traffic loop makes."""


class Clock:
    """The key maintenance clock: real time plus whatever the test adds."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture(autouse=True)
def fast_key_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(key_rotation, "POLL_INTERVAL", 0.02)


@asynccontextmanager
async def rotating_demo(var_dir: Path) -> AsyncIterator[DemoStack]:
    """Run the demo with ``signing.rotate_after`` one hour and 600 s tokens."""
    sockets = {name: bind_socket("127.0.0.1", 0) for name in DEMO_PORTS}
    urls = {
        name: f"http://127.0.0.1:{sock.getsockname()[1]}"
        for name, sock in sockets.items()
    }
    config = demo_config(urls, var_dir)
    signing = msgspec.structs.replace(
        config.signing, rotate_after=HOUR, access_token_ttl=600
    )
    config = msgspec.structs.replace(config, signing=signing)
    apps = demo_peer_apps(config, urls)
    async with AsyncExitStack() as stack:
        for name in ("idp", "employees", "partners"):
            await stack.enter_async_context(run_app(apps[name], sock=sockets[name]))
        gateway = await stack.enter_async_context(open_gateway(config))
        await stack.enter_async_context(
            run_app(gateway.asgi, sock=sockets["gateway"], header_timeout=10.0)
        )
        yield DemoStack(gateway, config, urls, var_dir / "audit.jsonl")


async def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


def kid_of(token: str) -> str:
    header, _, _ = token.partition(".")
    padded = header + "=" * (-len(header) % 4)
    return str(json.loads(base64.urlsafe_b64decode(padded))["kid"])


async def call_tools(
    stack: DemoStack,
    token: str,
    outcomes: list[bool],
    stop: anyio.Event,
    limit: int = MAX_CALLS,
) -> None:
    """Call list_employees through the SDK client until ``stop`` or ``limit``."""
    headers = {"authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=10.0) as http,
        streamable_http_client(stack.mcp_url("employees"), http_client=http) as (
            read,
            write,
        ),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        for _ in range(limit):
            result = await session.call_tool("list_employees", {})
            outcomes.append(not result.is_error)
            if stop.is_set():
                return


async def refreshed_token(stack: DemoStack, storage: MemoryTokenStorage) -> str:
    """Return a new access token from the refresh token grant."""
    assert storage.tokens is not None
    assert storage.client_info is not None
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(
            stack.urls["gateway"] + "/oauth2/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": storage.tokens.refresh_token or "",
                "client_id": storage.client_info.client_id or "",
            },
        )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def published_kids(stack: DemoStack) -> list[str]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.get(stack.urls["gateway"] + "/oauth2/jwks")
    return [key["kid"] for key in response.json()["keys"]]


async def send_initialize(stack: DemoStack, token: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10.0) as client:
        return await client.post(
            stack.mcp_url("employees"),
            content=msgspec.json.encode(initialize_body()),
            headers={**MCP_HEADERS, "authorization": f"Bearer {token}"},
        )


def audit_events(stack: DemoStack, event_type: str) -> list[dict[str, Any]]:
    lines = stack.audit_path.read_text().splitlines()
    events = [json.loads(line) for line in lines]
    return [event for event in events if event["type"] == event_type]


async def test_key_rotation_mid_traffic(tmp_path: Path) -> None:
    """Rotation during MCP traffic fails no call; the old key goes after retention."""
    clock = Clock()
    async with rotating_demo(tmp_path) as stack:
        keys = stack.gateway.runtime.keys
        keys.clock = clock
        old_kid = keys.kid
        storage = await sign_in(stack, "employees", user="alice")
        assert storage.tokens is not None
        old_token = storage.tokens.access_token
        assert kid_of(old_token) == old_kid
        outcomes: list[bool] = []
        stop = anyio.Event()
        async with anyio.create_task_group() as traffic:
            traffic.start_soon(call_tools, stack, old_token, outcomes, stop)
            await wait_until(lambda: len(outcomes) >= 5)
            clock.offset += HOUR
            await wait_until(lambda: keys.kid != old_kid)
            calls_at_rotation = len(outcomes)
            await wait_until(lambda: len(outcomes) >= calls_at_rotation + 5)
            new_token = await refreshed_token(stack, storage)
            new_outcomes: list[bool] = []
            await call_tools(stack, new_token, new_outcomes, stop, limit=5)
            stop.set()
        new_kid = keys.kid
        assert outcomes == [True] * len(outcomes)
        assert len(outcomes) >= calls_at_rotation + 5
        assert new_outcomes == [True] * 5
        assert kid_of(new_token) == new_kid
        assert await published_kids(stack) == [new_kid, old_kid]
        old_key = next(entry.key for entry in keys.entries if entry.kid == old_kid)

        clock.offset += KeySchedule(access_token_ttl=600).retention
        await wait_until(lambda: not keys.knows(old_kid))
        assert await published_kids(stack) == [new_kid]
        # A token the authenticate stage never saw, so its signature is
        # checked here rather than its cached verification.
        old_only = SigningKeys([KeyEntry(old_key, created_at=0)])
        _, claims = keys.verify(new_token, algorithms=["ES256"])
        forged = old_only.sign({**claims, "jti": secrets.token_urlsafe(16)})
        rejected = await send_initialize(stack, forged)
        assert rejected.status_code == 401
        assert rejected.json()["error"]["data"]["reason"] == "invalid_token"
        accepted = await send_initialize(stack, new_token)
        assert accepted.status_code == 200
    rotated = audit_events(stack, "SigningKeyRotated")
    assert [event["kid"] for event in rotated] == [new_kid]
    assert rotated[0]["previous_kid"] == old_kid
    assert rotated[0]["reason"] == "schedule"


async def test_manual_rotation_reaches_running_gateway(tmp_path: Path) -> None:
    """A rotation by another process (keys rotate) is signing within a poll."""
    async with rotating_demo(tmp_path) as stack:
        keys = stack.gateway.runtime.keys
        old_kid = keys.kid
        storage = await sign_in(stack, "employees", user="alice")
        assert keys.path is not None
        other = SigningKeys.load(keys.path, schedule=keys.schedule)
        other.rotate()
        await wait_until(lambda: keys.kid == other.kid)
        new_token = await refreshed_token(stack, storage)
        assert kid_of(new_token) == other.kid
        assert storage.tokens is not None
        accepted = await send_initialize(stack, storage.tokens.access_token)
        assert accepted.status_code == 200
        assert await published_kids(stack) == [other.kid, old_kid]
    rotated = audit_events(stack, "SigningKeyRotated")
    assert [(event["kid"], event["reason"]) for event in rotated] == [
        (other.kid, "key_file")
    ]


async def test_restart_keeps_rotation_schedule(tmp_path: Path) -> None:
    """A restarted gateway rotates a key that is overdue, and only that one."""
    key_path = tmp_path / "keys" / "signing.jwk.json"
    overdue = SigningKeys.load_or_create(key_path, clock=lambda: time.time() - HOUR)
    async with rotating_demo(tmp_path) as stack:
        first_kid = stack.gateway.runtime.keys.kid
    assert first_kid != overdue.kid
    async with rotating_demo(tmp_path) as stack:
        second_kid = stack.gateway.runtime.keys.kid
        assert await published_kids(stack) == [second_kid, overdue.kid]
    assert second_kid == first_kid
    rotated = audit_events(stack, "SigningKeyRotated")
    assert [(event["kid"], event["reason"]) for event in rotated] == [
        (first_kid, "schedule")
    ]


async def test_removed_key_cached_token_rejected(tmp_path: Path) -> None:
    """A token verified before its key was removed early gets 401 afterwards."""
    async with rotating_demo(tmp_path) as stack:
        keys = stack.gateway.runtime.keys
        old_kid = keys.kid
        storage = await sign_in(stack, "employees", user="alice")
        assert storage.tokens is not None
        token = storage.tokens.access_token
        first = await send_initialize(stack, token)
        assert first.status_code == 200
        assert keys.path is not None
        other = SigningKeys.load(keys.path, schedule=keys.schedule)
        for _ in range(MAX_KEYS):
            other.rotate()
        await wait_until(lambda: not keys.knows(old_kid))
        again = await send_initialize(stack, token)
    assert again.status_code == 401
