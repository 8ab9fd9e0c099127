"""identify_agent, authorize and audit on the running demo, with real tokens."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from gateway.config import AgentConfig, ToolRules
from gateway.demo.driver import MemoryTokenStorage, SignInRefused, run_client
from gateway.demo.runner import DemoStack, run_demo

pytestmark = pytest.mark.anyio

HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2025-11-25",
}


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[DemoStack]:
    async with run_demo(ephemeral=True, var_dir=tmp_path) as running:
        yield running


class McpProbe:
    """Raw HTTP MCP calls with a real gateway token and session."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {**HEADERS, "authorization": f"Bearer {token}"}
        self.session_id: str | None = None

    async def initialize(self, **extra: str) -> httpx.Response:
        response = await self.post(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "probe", "version": "0"},
                },
            },
            **extra,
        )
        self.session_id = response.headers.get("mcp-session-id")
        return response

    async def post(self, message: dict[str, Any], **extra: str) -> httpx.Response:
        headers = dict(self.headers)
        if self.session_id:
            headers["mcp-session-id"] = self.session_id
        headers.update({k.replace("_", "-"): v for k, v in extra.items()})
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(
                self.url, content=msgspec.json.encode(message), headers=headers
            )


async def probe_for(stack: DemoStack, backend: str, client_name: str) -> McpProbe:
    storage = MemoryTokenStorage()
    await run_client(
        stack.mcp_url(backend), client_name=client_name, calls=[], storage=storage
    )
    assert storage.tokens is not None
    return McpProbe(stack.mcp_url(backend), storage.tokens.access_token)


def message_of(response: httpx.Response) -> dict[str, Any]:
    """Return the JSON-RPC message of a JSON or single-event SSE response."""
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [
            line[len("data:") :].strip()
            for line in response.text.splitlines()
            if line.startswith("data:")
        ]
        return msgspec.json.decode(data[-1])
    return response.json()


async def audit_events(stack: DemoStack) -> list[dict[str, Any]]:
    await stack.gateway.runtime.bus.drain()
    lines = stack.audit_path.read_bytes().splitlines()
    return [msgspec.json.decode(line) for line in lines if line]


async def test_agent_header_matching_token_accepted(stack: DemoStack) -> None:
    """An X-MCP-Agent header naming the token's own agent is fine."""
    probe = await probe_for(stack, "partners", "cursor")
    response = await probe.initialize(x_mcp_agent="cursor")
    assert response.status_code == 200


async def test_agent_header_conflict_gets_403(stack: DemoStack) -> None:
    """A header naming another agent than the token's is rejected with 403."""
    probe = await probe_for(stack, "employees", "claude-code")
    response = await probe.initialize(x_mcp_agent="cursor")
    assert response.status_code == 403
    body = response.json()
    assert body["id"] == 0
    assert body["error"]["data"]["reason"] == "agent_conflict"
    assert "'cursor'" in body["error"]["message"]
    events = await audit_events(stack)
    rejected = [e for e in events if e["type"] == "AgentRejected"]
    assert rejected
    assert rejected[-1]["agent"]["id"] == "claude-code"
    assert rejected[-1]["outcome"] == "denied"


async def test_unknown_client_gets_default_policy(stack: DemoStack) -> None:
    """A client matching no agent gets the default policy: no backends."""
    with pytest.raises(SignInRefused) as info:
        await run_client(stack.mcp_url("partners"), client_name="mystery", calls=[])
    assert info.value.error == "access_denied"
    assert "'mystery'" in info.value.description
    assert "no agent in the gateway config matches" in info.value.description


async def test_denied_tool_names_tool_and_rule(stack: DemoStack) -> None:
    """A denied call is a JSON-RPC error in 200 naming the tool and the rule."""
    probe = await probe_for(stack, "employees", "claude-code")
    await probe.initialize()
    response = await probe.post(
        {
            "jsonrpc": "2.0",
            "id": "call-1",
            "method": "tools/call",
            "params": {"name": "update_salary", "arguments": {}},
        }
    )
    assert response.status_code == 200
    error = response.json()["error"]
    assert response.json()["id"] == "call-1"
    assert "'update_salary'" in error["message"]
    assert error["data"]["reason"] == "tool_denied"
    assert error["data"]["tool"] == "update_salary"
    assert "deny['update_salary']" in error["data"]["rule"]
    events = await audit_events(stack)
    denied = [e for e in events if e["type"] == "AccessDenied"]
    assert denied[-1]["tool"] == "update_salary"
    assert denied[-1]["reason"] == "tool_denied"
    assert denied[-1]["user"]["sub"] == "00u_alice"


async def test_tools_list_filtered_with_event(stack: DemoStack) -> None:
    """tools/list hides denied tools and records what it removed."""
    probe = await probe_for(stack, "employees", "claude-code")
    await probe.initialize()
    response = await probe.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    names = [tool["name"] for tool in message_of(response)["result"]["tools"]]
    assert "list_employees" in names
    assert "update_salary" not in names
    events = await audit_events(stack)
    filtered = [e for e in events if e["type"] == "ToolsFiltered"]
    assert filtered[-1]["removed"] == ["update_salary"]


async def test_policy_change_applies_to_issued_token(stack: DemoStack) -> None:
    """A token issued before a backend was withdrawn gets 403 afterwards."""
    probe = await probe_for(stack, "partners", "cursor")
    assert (await probe.initialize()).status_code == 200
    runtime = stack.gateway.runtime
    config = runtime.agents.config
    agents = dict(config.agents)
    agents["cursor"] = AgentConfig(
        match=agents["cursor"].match,
        backends=["employees"],
        tools={"employees": ToolRules()},
    )
    runtime.agents.config = msgspec.structs.replace(config, agents=agents)
    response = await probe.post({"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
    assert response.status_code == 403
    assert response.json()["error"]["data"]["reason"] == "backend_not_allowed"


async def test_audit_records_short_circuit(stack: DemoStack) -> None:
    """A request stopped at authenticate still gets a ResponseCompleted event."""
    async with httpx.AsyncClient() as client:
        response = await client.post(
            stack.mcp_url("partners"),
            content=b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
            headers=HEADERS,
        )
    assert response.status_code == 401
    events = await audit_events(stack)
    completed = [
        e
        for e in events
        if e["type"] == "ResponseCompleted"
        and e["request_id"] == response.headers["x-request-id"]
    ]
    assert len(completed) == 1
    assert completed[0]["status"] == 401
    assert completed[0]["outcome"] == "denied"
    assert completed[0]["user"] is None
    assert completed[0]["reason"] == "missing_token"


async def test_audit_records_streamed_call(stack: DemoStack) -> None:
    """A streamed tools/call ends with one completed event carrying its size."""
    probe = await probe_for(stack, "partners", "cursor")
    await probe.initialize()
    response = await probe.post(
        {
            "jsonrpc": "2.0",
            "id": 9,
            "method": "tools/call",
            "params": {"name": "partner_status", "arguments": {"partner_id": "P001"}},
        }
    )
    assert response.status_code == 200
    events = await audit_events(stack)
    request_id = response.headers["x-request-id"]
    completed = [
        e
        for e in events
        if e["type"] == "ResponseCompleted" and e["request_id"] == request_id
    ]
    assert len(completed) == 1
    assert completed[0]["tool"] == "partner_status"
    assert completed[0]["completed"] is True
    assert completed[0]["bytes_sent"] == len(response.content)
    assert completed[0]["agent"]["id"] == "cursor"


async def test_agent_header_empty_treated_as_absent(stack: DemoStack) -> None:
    """An empty X-MCP-Agent header names no agent and is accepted."""
    probe = await probe_for(stack, "partners", "cursor")
    response = await probe.initialize(x_mcp_agent="")
    assert response.status_code == 200
    events = await audit_events(stack)
    assert not [e for e in events if e["type"] == "AgentRejected"]


async def test_denied_tool_notification_gets_403(stack: DemoStack) -> None:
    """A denied tools/call sent as a notification gets an HTTP error status."""
    probe = await probe_for(stack, "employees", "claude-code")
    await probe.initialize()
    response = await probe.post(
        {
            "jsonrpc": "2.0",
            "method": "tools/call",
            "params": {"name": "update_salary", "arguments": {}},
        }
    )
    assert response.status_code == 403
    assert response.json()["id"] is None
    assert response.json()["error"]["data"]["reason"] == "tool_denied"
    events = await audit_events(stack)
    denied = [e for e in events if e["type"] == "AccessDenied"]
    assert denied[-1]["tool"] == "update_salary"


async def test_cached_token_still_expires(
    stack: DemoStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token verified once is rejected after it expires, cache or not."""
    from gateway.stages import authenticate

    probe = await probe_for(stack, "partners", "cursor")
    assert (await probe.initialize()).status_code == 200
    later = authenticate.time.time() + 24 * 3600
    monkeypatch.setattr(authenticate.time, "time", lambda: later)
    response = await probe.post({"jsonrpc": "2.0", "id": 4, "method": "tools/list"})
    assert response.status_code == 401
    assert response.json()["error"]["data"]["reason"] == "token_expired"


async def test_cached_token_revoked_grant_rejected(stack: DemoStack) -> None:
    """Revoking the grant ends a token at once, even one verified before."""
    probe = await probe_for(stack, "partners", "cursor")
    assert (await probe.initialize()).status_code == 200
    runtime = stack.gateway.runtime
    payload = probe.headers["authorization"].split(".")[1]
    claims = msgspec.json.decode(base64.urlsafe_b64decode(payload + "=="))
    await runtime.grants.revoke(claims["grant_id"])
    response = await probe.post({"jsonrpc": "2.0", "id": 5, "method": "tools/list"})
    assert response.status_code == 401


async def test_id_reused_after_answer_accepted(stack: DemoStack) -> None:
    """A client may reuse an id as soon as its answer arrives, 1 and "1" alike."""
    probe = await probe_for(stack, "partners", "cursor")
    assert (await probe.initialize()).status_code == 200
    headers = {**probe.headers, "mcp-session-id": probe.session_id or ""}
    async with httpx.AsyncClient(timeout=10) as client:
        for turn in range(40):
            request_id: int | str = 1 if turn % 2 else "1"
            body = msgspec.json.encode(
                {"jsonrpc": "2.0", "id": request_id, "method": "ping"}
            )
            async with client.stream(
                "POST", probe.url, content=body, headers=headers
            ) as response:
                assert response.status_code == 200, (turn, await response.aread())
                # Stop reading at the answer, as an eager client does; the
                # next request goes out before this stream has ended.
                async for line in response.aiter_lines():
                    if line.startswith("data:") or line.startswith("{"):
                        break


async def test_tools_call_without_name_rejected(stack: DemoStack) -> None:
    """A tools/call without a string name is invalid params, not forwarded."""
    probe = await probe_for(stack, "employees", "claude-code")
    await probe.initialize()
    for params in ({"arguments": {}}, {"name": ["update_salary"]}, {"name": ""}):
        response = await probe.post(
            {"jsonrpc": "2.0", "id": 11, "method": "tools/call", "params": params}
        )
        assert response.status_code == 200
        error = response.json()["error"]
        assert error["code"] == -32602, params
        assert error["data"]["reason"] == "invalid_tool_name"


async def test_huge_names_do_not_flood_audit(stack: DemoStack) -> None:
    """Megabyte names are rejected and never copied whole into events or errors."""
    probe = await probe_for(stack, "employees", "cursor")
    await probe.initialize()
    before = stack.audit_path.stat().st_size
    huge = "x" * 1_000_000
    method = await probe.post({"jsonrpc": "2.0", "id": 12, "method": huge})
    assert method.status_code == 400
    assert method.json()["error"]["code"] == -32600
    tool = await probe.post(
        {"jsonrpc": "2.0", "id": 13, "method": "tools/call", "params": {"name": huge}}
    )
    assert tool.json()["error"]["data"]["reason"] == "invalid_tool_name"
    agent = await probe.post(
        {"jsonrpc": "2.0", "id": 14, "method": "ping"}, x_mcp_agent="y" * 7000
    )
    assert agent.status_code == 403
    assert len(agent.content) < 1000
    await audit_events(stack)
    assert stack.audit_path.stat().st_size - before < 50_000
