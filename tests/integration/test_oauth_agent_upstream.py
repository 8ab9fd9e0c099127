"""Per-agent upstream clients: a verified agent signs users in through its own.

The demo stack runs on loopback with the real dev IdP, the employees backend
behind its dev authorization server, and the official MCP SDK as the client.
``cursor-desktop`` (pre-registered, confidential) makes ``cursor`` verified,
and ``cursor`` has its own client at the dev IdP, ``cursor-agent``, which the
IdP maps to ``cursor-at-employees`` at the employees authorization server. A
client that registers itself as ``cursor`` is the same agent, self-asserted,
and uses the gateway's client ``agent-proxy``. What the dev IdP saw is read
from its own log lines, captured in process.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from _identity_support import (
    AGENT_EMPLOYEES_CLIENT,
    AGENT_UPSTREAM_CLIENT,
    GATEWAY_EMPLOYEES_CLIENT,
    GATEWAY_UPSTREAM_CLIENT,
    VERIFIED_CLIENT,
    VERIFIED_SECRET,
    grant_of,
    identity_stack,
    idp_token_events,
    jwt_claims,
)
from structlog.testing import capture_logs

from gateway.demo.driver import (
    MemoryTokenStorage,
    pre_registered_storage,
    run_client,
)
from gateway.demo.runner import DemoStack
from gateway.exchange.idjag import (
    GRANT_TOKEN_EXCHANGE,
    TOKEN_TYPE_ID_JAG,
    TOKEN_TYPE_ID_TOKEN,
)
from gateway.oauth.upstream_clients import UpstreamClients

pytestmark = pytest.mark.anyio

EMPLOYEES_AS = "/oauth2/employees"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DemoStack]:
    """The demo stack, shared by this module's tests."""
    async with identity_stack(tmp_path_factory.mktemp("agent-upstream")) as running:
        yield running


async def call_employees(
    stack: DemoStack, storage: MemoryTokenStorage, *, login_hint: str = "alice"
) -> dict[str, Any]:
    """Sign in (unless ``storage`` has tokens), call list_employees, return the caller.

    The caller is what the employees backend read from its access token.
    """
    report = await run_client(
        stack.mcp_url("employees"),
        client_name="cursor",
        login_hint=login_hint,
        calls=[("list_employees", {})],
        storage=storage,
    )
    is_error, text = report.results["list_employees"]
    assert not is_error, text
    caller: dict[str, Any] = json.loads(text)["requested_by"]
    return caller


def verified_storage() -> MemoryTokenStorage:
    return pre_registered_storage(
        VERIFIED_CLIENT, VERIFIED_SECRET, client_name="cursor"
    )


def access_token(storage: MemoryTokenStorage) -> str:
    assert storage.tokens is not None
    return storage.tokens.access_token


async def test_verified_agent_signs_in_through_agent_client(stack: DemoStack) -> None:
    """The dev IdP signs the user in, and exchanges, for cursor-agent only."""
    storage = verified_storage()
    with capture_logs() as logs:
        caller = await call_employees(stack, storage)

    assert caller["sub"] == "00u_alice"
    assert caller["client_id"] == AGENT_EMPLOYEES_CLIENT
    code_grants = idp_token_events(logs, grant_type="authorization_code")
    assert [entry["client_id"] for entry in code_grants] == [AGENT_UPSTREAM_CLIENT]
    exchanges = idp_token_events(logs, token="id_jag")
    assert [entry["client_id"] for entry in exchanges] == [AGENT_UPSTREAM_CLIENT]
    redeemed = idp_token_events(logs, grant_type="jwt_bearer")
    assert [entry["client_id"] for entry in redeemed] == [AGENT_EMPLOYEES_CLIENT]


async def test_verified_agent_grant_records_agent_client(stack: DemoStack) -> None:
    """The grant names cursor-agent, and its ID token's aud is that client."""
    storage = verified_storage()
    await call_employees(stack, storage)

    grant = await grant_of(stack, access_token(storage))
    assert grant.upstream_client_id == AGENT_UPSTREAM_CLIENT
    assert grant.agent_verified
    assert jwt_claims(grant.upstream_id_token)["aud"] == AGENT_UPSTREAM_CLIENT
    agent = jwt_claims(access_token(storage))["agent"]
    assert agent == {"id": "cursor", "verified": True, "trust": "verified"}


async def test_verified_agent_log_names_client_without_secrets(
    stack: DemoStack,
) -> None:
    """The gateway logs which upstream client it chose, and no secret."""
    with capture_logs() as logs:
        await call_employees(stack, verified_storage())

    chosen = [e for e in logs if e["event"] == "oauth.upstream_client_chosen"]
    assert len(chosen) == 1
    assert chosen[0]["upstream_client_id"] == AGENT_UPSTREAM_CLIENT
    assert chosen[0]["agent_own_client"] is True
    assert chosen[0]["agent_trust"] == "verified"
    text = repr(logs)
    assert VERIFIED_SECRET not in text
    assert "cursor-agent-dev-secret" not in text
    assert "cursor-employees-dev-secret" not in text


async def test_self_asserted_agent_uses_gateway_client(stack: DemoStack) -> None:
    """A client that registers as cursor is cursor, but signs in via agent-proxy."""
    storage = MemoryTokenStorage()
    with capture_logs() as logs:
        caller = await call_employees(stack, storage)

    assert caller["client_id"] == GATEWAY_EMPLOYEES_CLIENT
    code_grants = idp_token_events(logs, grant_type="authorization_code")
    assert [entry["client_id"] for entry in code_grants] == [GATEWAY_UPSTREAM_CLIENT]
    chosen = [e for e in logs if e["event"] == "oauth.upstream_client_chosen"]
    assert chosen[0]["upstream_client_id"] == GATEWAY_UPSTREAM_CLIENT
    assert chosen[0]["agent_own_client"] is False
    grant = await grant_of(stack, access_token(storage))
    assert grant.upstream_client_id is None
    assert jwt_claims(grant.upstream_id_token)["aud"] == GATEWAY_UPSTREAM_CLIENT
    agent = jwt_claims(access_token(storage))["agent"]
    assert agent == {"id": "cursor", "verified": False, "trust": "self-asserted"}


async def test_exchange_cache_verified_and_self_asserted_kept_apart(
    stack: DemoStack,
) -> None:
    """One user as cursor, verified then self-asserted: each gets its own token."""
    stack.gateway.runtime.credentials.cache.clear()
    verified = await call_employees(stack, verified_storage(), login_hint="bob")
    self_asserted = await call_employees(stack, MemoryTokenStorage(), login_hint="bob")
    verified_again = await call_employees(stack, verified_storage(), login_hint="bob")

    assert verified["sub"] == self_asserted["sub"] == "00u_bob"
    assert verified["client_id"] == AGENT_EMPLOYEES_CLIENT
    assert self_asserted["client_id"] == GATEWAY_EMPLOYEES_CLIENT
    assert verified_again["client_id"] == AGENT_EMPLOYEES_CLIENT


async def test_upstream_refresh_of_verified_grant_uses_agent_client(
    stack: DemoStack,
) -> None:
    """An expired ID token is refreshed through cursor-agent, which issued it."""
    storage = verified_storage()
    await call_employees(stack, storage)
    runtime = stack.gateway.runtime
    grant = await grant_of(stack, access_token(storage))
    first_id_token = grant.upstream_id_token
    grant.id_token_expires_at = int(time.time())
    await runtime.grants.save(grant)
    runtime.credentials.cache.clear()

    with capture_logs() as logs:
        caller = await call_employees(stack, storage)

    assert caller["client_id"] == AGENT_EMPLOYEES_CLIENT
    refreshes = idp_token_events(logs, grant_type="refresh_token")
    assert [entry["client_id"] for entry in refreshes] == [AGENT_UPSTREAM_CLIENT]
    refreshed = await grant_of(stack, access_token(storage))
    assert refreshed.upstream_id_token != first_id_token
    assert jwt_claims(refreshed.upstream_id_token)["aud"] == AGENT_UPSTREAM_CLIENT


async def test_devidp_exchange_other_clients_id_token_rejected(
    stack: DemoStack,
) -> None:
    """The dev IdP refuses cursor-agent's ID token from agent-proxy."""
    storage = verified_storage()
    await call_employees(stack, storage)
    grant = await grant_of(stack, access_token(storage))
    form = exchange_form(stack, grant.upstream_id_token)

    async with httpx.AsyncClient(base_url=stack.urls["idp"], timeout=10.0) as idp:
        foreign = await idp.post(
            "/oauth2/v1/token",
            data=form,
            auth=(GATEWAY_UPSTREAM_CLIENT, "agent-proxy-dev-secret"),
        )
        own = await idp.post(
            "/oauth2/v1/token",
            data=form,
            auth=(AGENT_UPSTREAM_CLIENT, "cursor-agent-dev-secret"),
        )

    assert foreign.status_code == 400
    assert foreign.json()["error"] == "invalid_grant"
    assert "another client" in foreign.json()["error_description"]
    assert own.status_code == 200, own.text
    id_jag = jwt_claims(own.json()["access_token"])
    assert id_jag["client_id"] == AGENT_EMPLOYEES_CLIENT


def exchange_form(stack: DemoStack, id_token: str) -> dict[str, str]:
    return {
        "grant_type": GRANT_TOKEN_EXCHANGE,
        "requested_token_type": TOKEN_TYPE_ID_JAG,
        "subject_token": id_token,
        "subject_token_type": TOKEN_TYPE_ID_TOKEN,
        "audience": stack.urls["idp"] + EMPLOYEES_AS,
        "resource": stack.config.backends["employees"].url,
    }


async def test_upstream_clients_share_discovery_and_jwks(stack: DemoStack) -> None:
    """The gateway's and the agent's client fetch metadata and keys once in all."""
    verified, self_asserted = verified_storage(), MemoryTokenStorage()
    await call_employees(stack, verified)
    await call_employees(stack, self_asserted)
    agent_token = (await grant_of(stack, access_token(verified))).upstream_id_token
    gateway_token = (
        await grant_of(stack, access_token(self_asserted))
    ).upstream_id_token
    fetched: list[str] = []

    async def record(request: httpx.Request) -> None:
        fetched.append(request.url.path)

    async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
        clients = UpstreamClients.from_config(stack.config, http=http)
        agent_client = clients.get(AGENT_UPSTREAM_CLIENT)
        agent_claims = await agent_client.verify_id_token(agent_token, nonce=None)
        gateway_claims = await clients.gateway.verify_id_token(
            gateway_token, nonce=None
        )

    assert agent_claims["aud"] == AGENT_UPSTREAM_CLIENT
    assert gateway_claims["aud"] == GATEWAY_UPSTREAM_CLIENT
    assert fetched.count("/.well-known/openid-configuration") == 1
    assert fetched.count("/oauth2/v1/keys") == 1


async def test_agent_client_rejects_gateway_clients_id_token(
    stack: DemoStack,
) -> None:
    """Each upstream client accepts only ID tokens whose aud is itself."""
    storage = MemoryTokenStorage()
    await call_employees(stack, storage)
    gateway_token = (await grant_of(stack, access_token(storage))).upstream_id_token
    async with httpx.AsyncClient() as http:
        clients = UpstreamClients.from_config(stack.config, http=http)
        with pytest.raises(Exception, match="aud") as info:
            await clients.get(AGENT_UPSTREAM_CLIENT).verify_id_token(
                gateway_token, nonce=None
            )
    assert getattr(info.value, "reason", None) == "invalid_id_token"


def test_upstream_clients_unverified_agent_gets_gateway_client(
    stack: DemoStack,
) -> None:
    """Only a verified cursor gets cursor-agent; others get the gateway's client."""
    clients = stack.gateway.runtime.upstream_clients
    assert clients is not None
    assert clients.choose("cursor", verified=True) == AGENT_UPSTREAM_CLIENT
    assert clients.choose("cursor", verified=False) is None
    assert clients.choose("claude-code", verified=True) is None
    assert clients.choose("default", verified=False) is None


def test_demo_config_agent_clients_decoded(stack: DemoStack) -> None:
    """The demo gives cursor an upstream client and a client at employees."""
    cursor = stack.config.agents["cursor"]
    assert cursor.upstream is not None
    assert cursor.upstream.client_id == AGENT_UPSTREAM_CLIENT
    auth = msgspec.to_builtins(stack.config.backends["employees"].auth)
    assert auth["agent_clients"]["cursor"]["client_id"] == AGENT_EMPLOYEES_CLIENT
