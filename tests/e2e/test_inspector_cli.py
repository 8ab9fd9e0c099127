"""The MCP Inspector's command-line mode lists and calls tools through the gateway.

The Inspector (``mcp-inspector --cli``, pinned in ``_inspector.py``) is a
second real MCP client next to the official Python SDK. Most tests let the
SDK client sign in through the dev IdP and pass the gateway's access token to
the Inspector as a bearer header. One test runs the Inspector's own OAuth
sign-in, with a scripted browser in place of the person.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin

import httpx
import msgspec
import pytest

from gateway.demo.driver import MemoryTokenStorage, _consent_submission, run_client
from gateway.demo.runner import DemoStack, run_demo
from tests.e2e._inspector import (
    BearerToken,
    InspectorCli,
    InspectorResult,
    InspectorUnavailable,
    install_inspector,
)

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

EXIT_AUTH_REQUIRED = 3
EXIT_TOOL_ERROR = 5
"""Exit codes of Inspector 2.12.0 (``EXIT_CODES`` in ``clients/cli/build/index.js``)."""

READ_TOOLS = {"list_employees", "get_employee", "generate_report", "failing_lookup"}


@pytest.fixture(scope="session")
def inspector() -> InspectorCli:
    """Install the pinned Inspector once, or fail under CI=true and skip elsewhere."""
    try:
        return install_inspector()
    except InspectorUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"MCP Inspector unavailable: {exc}", pytrace=False)
        pytest.skip(f"MCP Inspector unavailable: {exc}")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[DemoStack]:
    async with run_demo(ephemeral=True, var_dir=tmp_path / "var") as running:
        yield running


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty HOME, so the Inspector keeps no state in the real one."""
    path = tmp_path / "home"
    path.mkdir()
    return path


async def sign_in(stack: DemoStack, client_name: str) -> BearerToken:
    """Sign in as alice with the SDK client and return the gateway's token."""
    storage = MemoryTokenStorage()
    await run_client(
        stack.mcp_url("employees"), client_name=client_name, calls=[], storage=storage
    )
    assert storage.tokens is not None
    return BearerToken(storage.tokens.access_token)


async def run_with_token(
    inspector: InspectorCli, home: Path, url: str, token: BearerToken, *args: str
) -> InspectorResult:
    return await inspector.run(
        [url, "--transport", "http", "--format", "json", *args],
        home=home,
        token=token,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def approving_browser(
    callback_url: str, login_hint: str, visited: list[str]
) -> Callable[[str], Coroutine[Any, Any, None]]:
    """Return a browser that approves the sign-in and loads the CLI's callback.

    It follows the redirects from the gateway's authorization endpoint through
    the consent page and the dev IdP, as a person's browser would, and stops
    after loading ``callback_url``, where the CLI listens for the code.
    """

    async def browse(authorization_url: str) -> None:
        url = f"{authorization_url}&{urlencode({'login_hint': login_hint})}"
        method, data = "GET", None
        async with httpx.AsyncClient(timeout=10.0) as browser:
            for _ in range(12):
                visited.append(url.split("?", 1)[0])
                response = await browser.request(method, url, data=data)
                method, data = "GET", None
                if url.startswith(callback_url):
                    response.raise_for_status()
                    return
                if response.is_redirect:
                    url = urljoin(url, response.headers["location"])
                elif response.status_code == 200 and "<form" in response.text:
                    url, data = _consent_submission(url, response.text, approve=True)
                    method = "POST"
                else:
                    visited.append(f"HTTP {response.status_code}")
                    return

    return browse


async def audit_events(stack: DemoStack) -> list[dict[str, Any]]:
    await stack.gateway.runtime.bus.drain()
    lines = stack.audit_path.read_bytes().splitlines()
    return [msgspec.json.decode(line) for line in lines if line]


@pytest.mark.parametrize(
    ("client_name", "expected"),
    [
        ("claude-code", READ_TOOLS),
        ("MCP Inspector", READ_TOOLS | {"update_salary"}),
    ],
)
async def test_inspector_tools_list_applies_agent_filter(
    inspector: InspectorCli,
    stack: DemoStack,
    home: Path,
    client_name: str,
    expected: set[str],
) -> None:
    """tools/list through the gateway shows only the tools the agent may call."""
    token = await sign_in(stack, client_name)
    # The SDK client's own tools/list during sign-in is audited too; skip it.
    events_before = len(await audit_events(stack))
    result = await run_with_token(
        inspector, home, stack.mcp_url("employees"), token, "--method", "tools/list"
    )

    assert result.returncode == 0, result.stderr
    tools = result.json()["result"]["tools"]
    assert {tool["name"] for tool in tools} == expected
    events = (await audit_events(stack))[events_before:]
    filtered = [event for event in events if event["type"] == "ToolsFiltered"]
    if "update_salary" in expected:
        assert filtered == []
    else:
        assert [event["removed"] for event in filtered] == [["update_salary"]]


async def test_inspector_tools_call_returns_backend_result(
    inspector: InspectorCli, stack: DemoStack, home: Path
) -> None:
    """tools/call reaches the backend as the signed-in user and returns its result."""
    token = await sign_in(stack, "MCP Inspector")
    result = await run_with_token(
        inspector,
        home,
        stack.mcp_url("employees"),
        token,
        "--method",
        "tools/call",
        "--tool-name",
        "get_employee",
        "--tool-arg",
        "employee_id=E1001",
    )

    assert result.returncode == 0, result.stderr
    call = result.json()["result"]
    assert isinstance(call, dict)
    assert not call.get("isError")
    payload = msgspec.json.decode(call["content"][0]["text"])
    assert payload["employee"]["name"] == "Dana Whitfield"
    assert payload["requested_by"]["sub"] == "00u_alice"
    # The backend's caller is the gateway's client at the backend's own
    # authorization server, not the token the Inspector sent.
    assert payload["requested_by"]["client_id"] == "agent-proxy-at-employees"


async def test_inspector_tool_failure_is_error_result(
    inspector: InspectorCli, stack: DemoStack, home: Path
) -> None:
    """A failing tool comes back as an isError result, which the CLI reports."""
    token = await sign_in(stack, "MCP Inspector")
    result = await run_with_token(
        inspector,
        home,
        stack.mcp_url("employees"),
        token,
        "--method",
        "tools/call",
        "--tool-name",
        "failing_lookup",
        "--tool-arg",
        "employee_id=E1002",
    )

    assert result.returncode == EXIT_TOOL_ERROR, result.stderr
    call = result.json()["result"]
    assert isinstance(call, dict)
    assert call["isError"] is True
    assert "legacy HR system timed out" in call["content"][0]["text"]
    assert result.error()["code"] == "tool_is_error"


async def test_inspector_without_token_gets_401(
    inspector: InspectorCli, stack: DemoStack, home: Path
) -> None:
    """Without a token the CLI stops with auth_required after the gateway's 401."""
    result = await inspector.run(
        [
            stack.mcp_url("employees"),
            "--transport",
            "http",
            "--format",
            "json",
            # Fail instead of starting the browser sign-in that needs a person.
            "--stored-auth-only",
            "--method",
            "tools/list",
        ],
        home=home,
    )

    assert result.returncode == EXIT_AUTH_REQUIRED, result.stderr
    error = result.error()
    assert error["code"] == "auth_required"
    assert "missing_token" in str(error["message"])
    completed = [
        event
        for event in await audit_events(stack)
        if event["type"] == "ResponseCompleted"
    ]
    assert [event["status"] for event in completed] == [401]
    assert completed[0]["reason"] == "missing_token"


async def test_inspector_stateless_era_lists_and_calls(
    inspector: InspectorCli, stack: DemoStack, home: Path
) -> None:
    """With --protocol-era modern the CLI speaks 2026-07-28 through the gateway."""
    token = await sign_in(stack, "claude-code")
    events_before = len(await audit_events(stack))
    url = stack.mcp_url("employees")
    modern = ("--protocol-era", "modern")
    listed = await run_with_token(
        inspector, home, url, token, *modern, "--method", "tools/list"
    )
    called = await run_with_token(
        inspector,
        home,
        url,
        token,
        *modern,
        "--method",
        "tools/call",
        "--tool-name",
        "list_employees",
        "--tool-arg",
        "department=Security",
    )

    assert listed.returncode == 0, listed.stderr
    tools = listed.json()["result"]["tools"]
    assert {tool["name"] for tool in tools} == READ_TOOLS
    assert called.returncode == 0, called.stderr
    call = called.json()["result"]
    assert isinstance(call, dict)
    payload = msgspec.json.decode(call["content"][0]["text"])
    assert [row["name"] for row in payload["employees"]] == ["Priya Raman"]
    assert payload["requested_by"]["sub"] == "00u_alice"
    events = (await audit_events(stack))[events_before:]
    methods = {event["method"] for event in events}
    assert "server/discover" in methods
    assert "initialize" not in methods
    assert not [event for event in events if event["type"].startswith("Session")]


async def test_inspector_oauth_sign_in_calls_tool(
    inspector: InspectorCli, stack: DemoStack, home: Path
) -> None:
    """The CLI registers, signs bob in through the gateway and calls a tool."""
    callback_url = f"http://127.0.0.1:{free_port()}/oauth/callback"
    visited: list[str] = []
    result = await inspector.run(
        [
            stack.mcp_url("employees"),
            "--transport",
            "http",
            "--format",
            "json",
            "--callback-url",
            callback_url,
            "--method",
            "tools/call",
            "--tool-name",
            "get_employee",
            "--tool-arg",
            "employee_id=E1003",
        ],
        home=home,
        browser=approving_browser(callback_url, "bob", visited),
    )

    assert result.returncode == 0, (result.stderr, visited)
    assert visited[-1] == callback_url
    call = result.json()["result"]
    assert isinstance(call, dict)
    payload = msgspec.json.decode(call["content"][0]["text"])
    assert payload["employee"]["name"] == "Priya Raman"
    assert payload["requested_by"]["sub"] == "00u_bob"
    events = await audit_events(stack)
    registered = [event for event in events if event["type"] == "ClientRegistered"]
    assert [event["client_name"] for event in registered] == ["MCP Inspector"]
    assert registered[0]["redirect_uris"] == [callback_url]
    calls = [
        event
        for event in events
        if event["type"] == "ResponseCompleted" and event["method"] == "tools/call"
    ]
    assert [event["agent"]["id"] for event in calls] == ["inspector"]
    assert [event["status"] for event in calls] == [200]
