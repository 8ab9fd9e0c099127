"""Dynamic mode: the backend authorization server found through RFC 9728 and RFC 8414.

The backend is the demo employees server, an official-SDK ``MCPServer`` that
serves its protected resource metadata; its authorization server is the dev
IdP's ``employees`` server, which serves RFC 8414 metadata. Everything runs
on 127.0.0.1, so ``discovery_allow_loopback`` is on except where a test
checks that it is needed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
import pytest
from _devidp_fixtures import DevIdpHarness, decode_unverified
from _exchange_setup import CURSOR, employees_auth, open_setup
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from test_exchange_stage_devidp import Backend, context, error_of, runtime_of, stage
from tests.unit.exchange.support import EventLog

from gateway.config import IdJagAuth
from gateway.demo.backends import create_employees_app
from gateway.demo.serve import RunningApp, bind_socket, run_app
from gateway.errors import ExchangeError, UpstreamError
from gateway.events import ExchangeFailed

pytestmark = pytest.mark.anyio


def dynamic_auth(devidp: DevIdpHarness, **overrides: Any) -> IdJagAuth:
    """The employees backend in dynamic mode, allowing its real issuer."""
    values: dict[str, Any] = {
        "issuer": "",
        "token_endpoint": "",
        "discovery": True,
        "allowed_issuers": [devidp.employees_issuer],
        "discovery_allow_loopback": True,
    }
    values.update(overrides)
    return employees_auth(devidp, **values)


@pytest.fixture
async def other_backend(devidp: DevIdpHarness) -> AsyncIterator[RunningApp]:
    """An employees server whose metadata names the issuer with a trailing '/'."""
    sock = bind_socket()
    resource = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    app = create_employees_app(
        resource=resource,
        authorization_server=devidp.employees_issuer + "/",
        jwks_url=f"{devidp.employees_issuer}/v1/keys",
    )
    try:
        async with run_app(app, sock=sock) as running:
            yield running
    finally:
        sock.close()


async def test_discovery_devidp_exchange_uses_discovered_server(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """The discovered issuer is the audience, and the backend takes the token."""
    async with open_setup(devidp, auth=dynamic_auth(devidp)) as setup:
        principal = await setup.sign_in("alice")
        obtained = await setup.service.obtain(
            backend="employees", principal=principal, agent=CURSOR
        )

        assert obtained.audience == devidp.employees_issuer
        assert setup.count("/oauth2/employees/v1/token") == 1
        authorization = obtained.credentials.headers["authorization"]
        _, claims = decode_unverified(authorization.removeprefix("Bearer "))
        assert claims["iss"] == devidp.employees_issuer
        assert claims["aud"] == devidp.employees_resource
        result = await call_employees(employees_backend, obtained.credentials.headers)
        assert result["requested_by"]["sub"] == "00u_alice"


async def test_discovery_issuer_not_allow_listed_refused(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """An authorization server missing from the allow-list is never contacted."""
    auth = dynamic_auth(devidp, allowed_issuers=["https://as.example.test/oauth2/x"])
    async with open_setup(devidp, auth=auth) as setup:
        principal = await setup.sign_in("alice")
        setup.posts.clear()
        with pytest.raises(ExchangeError) as caught:
            await setup.service.credentials_for(
                backend="employees", principal=principal, agent=CURSOR
            )

        assert caught.value.reason == "issuer_not_allowed"
        assert caught.value.step == "discovery"
        assert setup.posts == []
        assert setup.service.discovery.fetches == 1


async def test_discovery_stage_issuer_not_allowed_jsonrpc_error(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """The exchange stage returns the reason in a JSON-RPC error, with an event."""
    auth = dynamic_auth(devidp, allowed_issuers=["https://as.example.test/oauth2/x"])
    async with open_setup(devidp, auth=auth) as setup:
        runtime = runtime_of(setup)
        principal = await setup.sign_in("alice")
        async with EventLog(runtime.bus).running() as log:
            response = await stage().handle(context(runtime, principal), Backend(200))

    assert response.status == 200
    error = error_of(response)
    assert error["data"]["reason"] == "issuer_not_allowed"
    assert error["data"]["step"] == "discovery"
    assert "allow-list" in error["message"]
    failed = log.of(ExchangeFailed)
    assert len(failed) == 1
    assert failed[0].reason == "issuer_not_allowed"


async def test_discovery_metadata_issuer_mismatch_refused(
    devidp: DevIdpHarness, other_backend: RunningApp
) -> None:
    """Metadata whose ``issuer`` differs from the listed one by a '/' is refused."""
    auth = dynamic_auth(
        devidp,
        resource=f"{other_backend.url}/mcp",
        allowed_issuers=[devidp.employees_issuer + "/"],
    )
    async with open_setup(devidp, auth=auth) as setup:
        principal = await setup.sign_in("alice")
        setup.posts.clear()
        with pytest.raises(ExchangeError) as caught:
            await setup.service.credentials_for(
                backend="employees", principal=principal, agent=CURSOR
            )

        assert caught.value.reason == "backend_as_discovery_failed"
        assert "names issuer" in str(caught.value), str(caught.value)
        assert setup.posts == []


async def test_discovery_second_request_cache_used(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """Later and concurrent requests reuse one discovery until the TTL ends."""
    auth = dynamic_auth(devidp, discovery_ttl=60)
    async with open_setup(devidp, auth=auth) as setup:
        discovery = setup.service.discovery
        alice = await setup.sign_in("alice")
        bob = await setup.sign_in("bob", grant_id="grant-2")
        async with anyio.create_task_group() as tasks:
            for _ in range(10):
                tasks.start_soon(discovery.resolve, auth)
        assert discovery.fetches == 2

        await setup.service.credentials_for(
            backend="employees", principal=alice, agent=CURSOR
        )
        await setup.service.credentials_for(
            backend="employees", principal=bob, agent=CURSOR
        )
        assert setup.count("/oauth2/employees/v1/token") == 2
        assert discovery.fetches == 2

        setup.clock.offset += 61
        resolved = await discovery.resolve(auth)
        assert resolved.issuer == devidp.employees_issuer
        assert discovery.fetches == 4


async def test_discovery_metadata_endpoint_down_unavailable(
    devidp: DevIdpHarness,
) -> None:
    """An unreachable metadata endpoint gives a retryable discovery error."""
    sock = bind_socket()
    port = sock.getsockname()[1]
    sock.close()
    auth = dynamic_auth(devidp, resource=f"http://127.0.0.1:{port}/mcp")
    async with open_setup(devidp, auth=auth) as setup:
        principal = await setup.sign_in("alice")
        with pytest.raises(UpstreamError) as caught:
            await setup.service.credentials_for(
                backend="employees", principal=principal, agent=CURSOR
            )

        assert not isinstance(caught.value, ExchangeError)
        assert caught.value.reason == "backend_as_discovery_failed"
        assert caught.value.retry_after is not None
        assert setup.service.discovery.cached(auth) is None


async def test_discovery_plain_http_without_dev_flag_refused(
    devidp: DevIdpHarness, employees_backend: RunningApp
) -> None:
    """Without ``discovery_allow_loopback`` a loopback http resource is not fetched."""
    auth = dynamic_auth(devidp, discovery_allow_loopback=False)
    async with open_setup(devidp, auth=auth) as setup:
        principal = await setup.sign_in("alice")
        with pytest.raises(ExchangeError) as caught:
            await setup.service.credentials_for(
                backend="employees", principal=principal, agent=CURSOR
            )

        assert caught.value.reason == "backend_as_discovery_failed"
        assert setup.service.discovery.fetches == 0


def test_discovery_config_static_and_dynamic_conflict_rejected() -> None:
    """``discovery`` excludes ``issuer``/``token_endpoint`` and needs an allow-list."""
    base: dict[str, Any] = {
        "resource": "https://api.example.test/mcp",
        "client_id": "c",
    }
    with pytest.raises(ValueError, match="must be empty"):
        IdJagAuth(
            **base,
            discovery=True,
            issuer="https://as.example.test",
            allowed_issuers=["https://as.example.test"],
        )
    with pytest.raises(ValueError, match="allowed_issuers is required"):
        IdJagAuth(**base, discovery=True)
    with pytest.raises(ValueError, match=r"only when auth\.discovery"):
        IdJagAuth(
            **base,
            issuer="https://as.example.test",
            token_endpoint="https://as.example.test/token",
            allowed_issuers=["https://as.example.test"],
        )
    with pytest.raises(ValueError, match="are required unless"):
        IdJagAuth(**base)


async def call_employees(
    backend: RunningApp, headers: dict[str, str]
) -> dict[str, Any]:
    """Call ``list_employees`` with the official MCP client and these headers."""
    with anyio.fail_after(10):
        async with (
            httpx2.AsyncClient(headers=headers, timeout=10.0) as http,
            streamable_http_client(f"{backend.url}/mcp", http_client=http) as (
                read,
                write,
            ),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            result = await session.call_tool("list_employees", {})
    assert result.is_error is False
    assert result.structured_content is not None
    return dict(result.structured_content)
