"""The demo MCP backends, driven by the official MCP client over streamable HTTP."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
import mcp.types as types
import pytest
from _devidp_fixtures import PARTNERS_API_KEY, DevIdpHarness
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway.demo.serve import RunningApp, run_app
from gateway.devidp import SigningKey

pytestmark = pytest.mark.anyio

_INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}
_MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


@contextlib.asynccontextmanager
async def _session(
    url: str,
    headers: dict[str, str],
    log_messages: list[Any] | None = None,
) -> AsyncIterator[ClientSession]:
    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        if log_messages is not None:
            log_messages.append(params.data)

    async with (
        httpx2.AsyncClient(headers=headers, timeout=10) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write, logging_callback=on_log) as session,
    ):
        await session.initialize()
        yield session


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _post_initialize(url: str, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(
            url, json=_INITIALIZE, headers={**_MCP_HEADERS, **headers}
        )


async def test_employees_backend_token_lists_tools(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """A token from the employees server opens a session that lists the tools."""
    token = await devidp.backend_token()
    async with _session(devidp.employees_resource, _bearer(token)) as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
    assert names == {
        "list_employees",
        "get_employee",
        "update_salary",
        "generate_report",
        "failing_lookup",
    }


async def test_employees_tool_result_names_caller(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """Tool results name the user the access token belongs to."""
    token = await devidp.backend_token("bob")
    async with _session(devidp.employees_resource, _bearer(token)) as session:
        result = await session.call_tool("get_employee", {"employee_id": "E1003"})
    assert not result.is_error
    assert result.structured_content is not None
    assert result.structured_content["requested_by"]["sub"] == "00u_bob"
    assert result.structured_content["requested_by"]["email"] == "bob@example.com"
    assert result.structured_content["employee"]["name"] == "Priya Raman"


async def test_employees_generate_report_streams_progress(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """generate_report sends n progress notifications and two log messages."""
    updates: list[tuple[float, float | None, str | None]] = []
    logs: list[Any] = []

    async def on_progress(
        progress: float, total: float | None, message: str | None
    ) -> None:
        updates.append((progress, total, message))

    token = await devidp.backend_token()
    async with _session(devidp.employees_resource, _bearer(token), logs) as session:
        result = await session.call_tool(
            "generate_report", {"n": 4}, progress_callback=on_progress
        )
    assert not result.is_error
    assert [progress for progress, _, _ in updates] == [1, 2, 3, 4]
    assert all(total == 4 for _, total, _ in updates)
    assert logs == ["generating a report in 4 steps", "report ready"]


async def test_employees_failing_lookup_is_error_result(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """A failing tool returns an isError result, not a protocol error."""
    token = await devidp.backend_token()
    async with _session(devidp.employees_resource, _bearer(token)) as session:
        result = await session.call_tool("failing_lookup", {"employee_id": "E1001"})
    assert result.is_error
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    assert "timed out" in text.text


async def test_employees_update_salary_read_scope_is_error(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """update_salary needs employees:write; a read-only token gets an isError result."""
    token = await devidp.backend_token(scope="employees:read")
    async with _session(devidp.employees_resource, _bearer(token)) as session:
        denied = await session.call_tool(
            "update_salary", {"employee_id": "E1001", "amount": 150000}
        )
    assert denied.is_error


async def test_employees_update_salary_write_scope_updates(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """With employees:write the salary changes and the change is visible."""
    token = await devidp.backend_token()
    async with _session(devidp.employees_resource, _bearer(token)) as session:
        updated = await session.call_tool(
            "update_salary", {"employee_id": "E1001", "amount": 150000}
        )
        record = await session.call_tool("get_employee", {"employee_id": "E1001"})
    assert not updated.is_error
    assert updated.structured_content is not None
    assert updated.structured_content["previous_salary"] == 142000
    assert record.structured_content is not None
    assert record.structured_content["employee"]["salary"] == 150000


async def test_employees_missing_token_401_with_metadata(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """A request without a token gets 401 naming the protected resource metadata."""
    response = await _post_initialize(devidp.employees_resource, {})
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    metadata_url = f"{employees_backend.url}/.well-known/oauth-protected-resource/mcp"
    assert f'resource_metadata="{metadata_url}"' in challenge


async def test_employees_metadata_names_resource_exactly(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """The protected resource metadata repeats the resource with no trailing slash."""
    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"{employees_backend.url}/.well-known/oauth-protected-resource/mcp"
        )
    metadata = response.json()
    assert metadata["resource"] == devidp.employees_resource
    assert metadata["authorization_servers"] == [devidp.employees_issuer]


async def test_employees_valid_token_session_id_issued(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """initialize with a valid token starts a stateful session."""
    token = await devidp.backend_token()
    response = await _post_initialize(devidp.employees_resource, _bearer(token))
    assert response.status_code == 200
    assert response.headers["mcp-session-id"]


async def test_employees_gateway_style_token_401(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """A gateway access token for the gateway's own resource is refused."""
    now = int(time.time())
    gateway_token = SigningKey.generate().sign(
        {
            "iss": "http://127.0.0.1:8000",
            "sub": "00u_alice",
            "aud": "http://127.0.0.1:8000/employees/mcp",
            "client_id": "cursor",
            "scope": "employees:read",
            "jti": "g1",
            "iat": now,
            "exp": now + 300,
        },
        typ="at+jwt",
    )
    response = await _post_initialize(devidp.employees_resource, _bearer(gateway_token))
    assert response.status_code == 401


async def test_employees_org_tokens_401(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """Neither the org access token nor an ID-JAG opens the backend."""
    tokens = await devidp.sign_in()
    for token in (tokens["access_token"], tokens["id_token"], await devidp.id_jag()):
        response = await _post_initialize(devidp.employees_resource, _bearer(token))
        assert response.status_code == 401


async def test_employees_token_of_other_issuer_401(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """A token for the same resource from another authorization server is refused."""
    eu_issuer = f"{devidp.issuer}/oauth2/employees-eu"
    assertion = await devidp.id_jag(audience=eu_issuer, scope="employees:read")
    redeemed = await devidp.redeem(assertion, backend="employees-eu")
    assert redeemed.status_code == 200
    token = redeemed.json()["access_token"]
    response = await _post_initialize(devidp.employees_resource, _bearer(token))
    assert response.status_code == 401


async def test_employees_expired_token_401(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """A token whose exp has passed is refused."""
    devidp.clock.advance(-(devidp.settings.backend_token_ttl + 120))
    token = await devidp.backend_token()
    response = await _post_initialize(devidp.employees_resource, _bearer(token))
    assert response.status_code == 401


async def test_employees_foreign_host_rejected(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """DNS-rebinding protection refuses a Host other than loopback."""
    token = await devidp.backend_token()
    headers = {**_bearer(token), "Host": "attacker.example"}
    response = await _post_initialize(devidp.employees_resource, headers)
    assert response.status_code == 421


async def test_partners_missing_or_wrong_key_401(partners_backend: RunningApp) -> None:
    """Requests without exactly the right API key get 401 JSON."""
    url = f"{partners_backend.url}/mcp"
    for headers in ({}, {"X-Api-Key": "wrong"}, {"X-Api-Key": f"{PARTNERS_API_KEY}x"}):
        response = await _post_initialize(url, headers)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_api_key"


async def test_partners_repeated_key_header_401(partners_backend: RunningApp) -> None:
    """Two API key headers are refused even if one is right."""
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{partners_backend.url}/mcp",
            json=_INITIALIZE,
            headers=[
                ("Accept", "application/json, text/event-stream"),
                ("X-Api-Key", PARTNERS_API_KEY),
                ("X-Api-Key", "other"),
            ],
        )
    assert response.status_code == 401


async def test_partners_valid_key_tools_work(partners_backend: RunningApp) -> None:
    """With the key, tools return data, stream progress and fail as tools do."""
    updates: list[float] = []

    async def on_progress(
        progress: float, total: float | None, message: str | None
    ) -> None:
        updates.append(progress)

    url = f"{partners_backend.url}/mcp"
    async with _session(url, {"X-Api-Key": PARTNERS_API_KEY}) as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
        listed = await session.call_tool("list_partners", {"region": "emea"})
        status = await session.call_tool(
            "partner_status", {"partner_id": "P-200"}, progress_callback=on_progress
        )
        failed = await session.call_tool("sync_partner_feed", {"partner_id": "P-100"})
        unknown = await session.call_tool("get_partner", {"partner_id": "P-999"})
    assert names == {
        "list_partners",
        "get_partner",
        "partner_status",
        "sync_partner_feed",
    }
    assert listed.structured_content is not None
    assert [row["partner_id"] for row in listed.structured_content["partners"]] == [
        "P-100"
    ]
    assert status.structured_content is not None
    assert status.structured_content["healthy"] is True
    assert updates == [1, 2, 3, 4]
    assert failed.is_error
    assert unknown.is_error


async def test_run_app_ephemeral_port_serves_and_stops() -> None:
    """run_app binds a free port, serves on it, and frees it on exit."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with run_app(app) as running:
        assert running.port > 0
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{running.url}/anything")
        assert response.status_code == 204
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(f"{running.url}/anything")


async def test_run_app_failed_startup_raises() -> None:
    """An app whose lifespan startup fails raises RuntimeError, not SystemExit."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(RuntimeError, match="failed to start"):
        async with run_app(app):
            pass
