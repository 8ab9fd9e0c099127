"""Reloading ``agent-proxy run``'s config on SIGHUP and on file changes.

Every test runs the gateway as a subprocess (see :mod:`_reload_support`),
changes its config while official-SDK clients call tools through it, and
reads the outcome from the clients and from the audit file.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import yaml
from _grant_support import initialize, sign_in
from _reload_support import Load, ReloadStack, deny_tool, digest, reload_stack
from _transport_harness import MCP_HEADERS, initialize_body
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.anyio


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ReloadStack]:
    """The gateway in a subprocess, with its peers in this process."""
    async with reload_stack(tmp_path) as running:
        yield running


async def partners_load(stack: ReloadStack) -> Load:
    """Return a load of ``list_partners`` calls by the agent ``cursor``."""
    _, tokens = await sign_in(stack.front, client_name="cursor", backend="partners")
    return Load(stack.mcp_url("partners"), tokens["access_token"])


def assert_no_failure(load: Load) -> None:
    """No worker failed and no response was a server error."""
    assert load.failures == []
    assert [status for status in load.statuses if status >= 500] == []


async def test_reload_sighup_under_load_applies_new_rule(stack: ReloadStack) -> None:
    """SIGHUP swaps in a deny rule during load; no call fails, later ones deny."""
    load = await partners_load(stack)
    original = digest(stack.config_path.read_bytes())
    async with load.running():
        await load.wait_calls(3)
        changed_at = time.monotonic()
        new_hash = stack.write(deny_tool(stack.config, "partners", "list_partners"))
        stack.sighup()
        reloaded = await stack.next_event("ConfigReloaded", 0)
        seen_at = time.monotonic()
        await load.wait_calls(3, after=seen_at)

    assert_no_failure(load)
    assert {call.outcome for call in load.ended_before(changed_at)} == {"allowed"}
    assert {call.outcome for call in load.started_after(seen_at)} == {"denied"}
    assert reloaded["source"] == "sighup"
    assert reloaded["config_sha256"] == new_hash
    assert reloaded["previous_config_sha256"] == original
    assert reloaded["agents_changed"] == ["cursor"]
    assert reloaded["changed"] == ["agents.cursor.tools.partners"]
    assert reloaded["chains_changed"] == []
    assert reloaded["restart_required"] == []


async def test_reload_file_change_rebuilds_chains(
    stack: ReloadStack,
) -> None:
    """A changed file swaps in new chains and a deny rule; no call fails."""
    load = await partners_load(stack)
    changed = deny_tool(stack.config, "partners", "list_partners")
    changed["stages"]["authorize"] = {"filter_tools_list": False}
    async with load.running():
        await load.wait_calls(3)
        changed_at = time.monotonic()
        new_hash = stack.write(changed)
        reloaded = await stack.next_event("ConfigReloaded", 0)
        seen_at = time.monotonic()
        await load.wait_calls(3, after=seen_at)

    assert_no_failure(load)
    assert {call.outcome for call in load.ended_before(changed_at)} == {"allowed"}
    assert {call.outcome for call in load.started_after(seen_at)} == {"denied"}
    assert reloaded["source"] == "file_change"
    assert reloaded["config_sha256"] == new_hash
    assert reloaded["chains_changed"] == ["employees", "gated", "partners"]
    assert reloaded["changed"] == ["agents.cursor.tools.partners", "stages.authorize"]
    (logged,) = stack.log_lines("config.reloaded")
    assert logged["chains_changed"] == ["employees", "gated", "partners"]


def broken_configs(stack: ReloadStack) -> list[tuple[str, list[str]]]:
    """Return invalid configs, each with texts its rejection must contain."""
    syntax_error = stack.config_path.read_text() + "\nbroken: [unclosed\n"
    no_authenticate = stack.edited()
    no_authenticate["pipeline"] = [
        ref for ref in no_authenticate["pipeline"] if ref != "authenticate"
    ]
    no_authenticate["agents"]["cursor"]["tools"] = {"nowhere": {"deny": ["x"]}}
    unknown_backend = stack.edited()
    unknown_backend["stages"]["authorize"] = {"require_verified_agent": ["nowhere"]}
    return [
        (syntax_error, ["invalid YAML"]),
        (
            yaml_text(no_authenticate),
            ["agents.cursor.tools.nowhere: unknown backend", '"principal"'],
        ),
        (
            yaml_text(unknown_backend),
            ["stages.authorize.require_verified_agent: unknown backend 'nowhere'"],
        ),
    ]


def yaml_text(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config)


async def test_reload_broken_configs_change_nothing(
    stack: ReloadStack,
) -> None:
    """Invalid files are rejected with their errors; a later valid one applies."""
    load = await partners_load(stack)
    original = digest(stack.config_path.read_bytes())
    rejections: list[tuple[str, dict[str, Any], list[str]]] = []
    async with load.running():
        await load.wait_calls(3)
        for index, (content, expected) in enumerate(broken_configs(stack)):
            written = stack.write(content)
            rejected = await stack.next_event("ConfigRejected", index)
            rejections.append((written, rejected, expected))
            await load.wait_calls(2, after=time.monotonic())
        good_at = time.monotonic()
        stack.write(deny_tool(stack.config, "partners", "list_partners"))
        reloaded = await stack.next_event("ConfigReloaded", 0)
        seen_at = time.monotonic()
        await load.wait_calls(3, after=seen_at)

    assert_no_failure(load)
    assert {call.outcome for call in load.ended_before(good_at)} == {"allowed"}
    assert {call.outcome for call in load.started_after(seen_at)} == {"denied"}
    for written, rejected, expected in rejections:
        assert rejected["source"] == "file_change"
        assert rejected["outcome"] == "error"
        assert rejected["reason"] == "invalid_config"
        assert rejected["config_sha256"] == written
        assert rejected["current_config_sha256"] == original
        for text in expected:
            assert any(text in error for error in rejected["errors"]), rejected
    assert reloaded["previous_config_sha256"] == original
    logged = stack.log_lines("config.rejected")
    assert [line["errors"] for line in logged] == [
        rejected["errors"] for _, rejected, _ in rejections
    ]


async def test_reload_restart_only_setting_not_applied(
    stack: ReloadStack,
) -> None:
    """A changed port and token lifetime wait for a restart; the rest applies."""
    changed = deny_tool(stack.config, "partners", "list_partners")
    changed["server"]["port"] += 1
    changed["signing"]["access_token_ttl"] = 60
    stack.write(changed)
    stack.sighup()
    reloaded = await stack.next_event("ConfigReloaded", 0)

    assert reloaded["restart_required"] == ["server.port", "signing.access_token_ttl"]
    assert reloaded["changed"] == ["agents.cursor.tools.partners"]
    (warning,) = stack.log_lines("config.restart_required")
    assert warning["keys"] == ["server.port", "signing.access_token_ttl"]
    # Still served on the first port, with the first token lifetime.
    _, tokens = await sign_in(stack.front, client_name="cursor", backend="partners")
    assert tokens["expires_in"] == 600
    load = Load(stack.mcp_url("partners"), tokens["access_token"], workers=2)
    async with load.running():
        await load.wait_calls(2)
    assert_no_failure(load)
    assert {call.outcome for call in load.calls} == {"denied"}


def without_employees(stack: ReloadStack) -> dict[str, Any]:
    """Return the first config without ``employees`` and with ``partners2``."""
    changed = stack.edited()
    del changed["backends"]["employees"]
    changed["backends"]["partners2"] = {
        **changed["backends"]["partners"],
        "path": "/partners2/mcp",
    }
    for agent in changed["agents"].values():
        agent["backends"] = [name for name in agent["backends"] if name != "employees"]
        agent["tools"].pop("employees", None)
    changed["agents"]["cursor"]["backends"].append("partners2")
    return changed


async def test_reload_backends_added_and_removed(
    stack: ReloadStack,
) -> None:
    """An added backend serves at once; a removed one gets 404 and its sessions end."""
    _, employees = await sign_in(stack.front, client_name="cursor")
    opened = await initialize(stack.front, employees["access_token"])
    assert opened.status_code == 200, opened.text
    session_id = opened.headers["mcp-session-id"]
    stack.write(without_employees(stack))
    stack.sighup()
    reloaded = await stack.next_event("ConfigReloaded", 0)

    assert reloaded["backends_added"] == ["partners2"]
    assert reloaded["backends_removed"] == ["employees"]
    browser = stack.front.browser
    removed_response = await browser.post(
        "/employees/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={
            **MCP_HEADERS,
            "authorization": f"Bearer {employees['access_token']}",
            "mcp-session-id": session_id,
        },
    )
    assert removed_response.status_code == 404
    metadata = "/.well-known/oauth-protected-resource"
    assert (await browser.get(f"{metadata}/employees/mcp")).status_code == 404
    added = await browser.get(f"{metadata}/partners2/mcp")
    assert added.status_code == 200
    assert added.json()["resource"] == stack.mcp_url("partners2")
    _, tokens = await sign_in(stack.front, client_name="cursor", backend="partners2")
    load = Load(stack.mcp_url("partners2"), tokens["access_token"], workers=2)
    async with load.running():
        await load.wait_calls(2)
    assert_no_failure(load)
    assert {call.outcome for call in load.calls} == {"allowed"}
    ended = await stack.event_where("SessionEnded", reason="backend_removed")
    assert ended["backend"] == "employees"
    assert ended["user"] == {"iss": stack.urls["idp"], "sub": "00u_alice"}


async def test_reload_in_flight_call_finishes(
    stack: ReloadStack,
) -> None:
    """A call in flight when its backend is removed still gets its result."""
    _, tokens = await sign_in(stack.front, client_name="cursor", backend="gated")
    changed = stack.edited()
    del changed["backends"]["gated"]
    changed["agents"]["cursor"]["backends"].remove("gated")
    progressed = anyio.Event()
    result: list[Any] = []

    async def on_progress(value: float, total: float | None, text: str | None) -> None:
        progressed.set()

    async def call_gated() -> None:
        headers = {"authorization": f"Bearer {tokens['access_token']}"}
        async with httpx2.AsyncClient(headers=headers, timeout=20.0) as http:
            transport = streamable_http_client(stack.mcp_url("gated"), http_client=http)
            async with Client(transport, mode="legacy") as client:
                # The client validates a result against the listed tools; a
                # list after the reload would reach a removed backend.
                await client.list_tools()
                result.append(
                    await client.call_tool(
                        "gated_count", {"n": 3}, progress_callback=on_progress
                    )
                )

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(call_gated)
            await progressed.wait()
            stack.write(changed)
            stack.sighup()
            reloaded = await stack.next_event("ConfigReloaded", 0)
            not_found = await stack.front.browser.post(
                "/gated/mcp", json=initialize_body(), headers=MCP_HEADERS
            )
            stack.controls.release.set()

    assert reloaded["backends_removed"] == ["gated"]
    assert not_found.status_code == 404
    (called,) = result
    assert not called.is_error
    assert called.content[0].text == "counted to 3 (released)"
    ended = await stack.event_where("SessionEnded", reason="backend_removed")
    assert ended["backend"] == "gated"
