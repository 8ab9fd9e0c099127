"""The exchange stage: the credentials fact, events and failure responses.

``call_next`` here is a recorder standing in for the session and forward
stages, so a test can see whether the chain continued and what it carried.
The ID-JAG cases against the dev IdP are in
``tests/integration/test_exchange_devidp.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from gateway.context import RequestContext
from gateway.events import ExchangeFailed, TokenExchanged
from gateway.exchange.service import CredentialService
from gateway.facts import AGENT, BACKEND_CREDENTIALS, DECISION, PRINCIPAL, Decision
from gateway.mcp.response import GatewayResponse
from gateway.oauth.grants import GrantStore
from gateway.runtime import Runtime
from gateway.stages.exchange import ExchangeConfig, ExchangeStage
from gateway.store import MemoryStore
from pipeline import EventBus
from tests.unit.exchange.support import (
    ALICE,
    CURSOR,
    EventLog,
    FixedUpstream,
    NoRefresh,
    build_runtime,
    closed_port,
    gateway_config,
    request_context,
    save_alice_grant,
)

pytestmark = pytest.mark.anyio


class Downstream:
    """Records each call of the rest of the chain and returns 200."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    async def __call__(self, ctx: RequestContext) -> GatewayResponse:
        self.seen.append(ctx.fact(BACKEND_CREDENTIALS).headers)
        ctx.attributes["backend_status"] = 401
        return GatewayResponse(status=200, body=b"{}")


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    config = gateway_config()
    store = MemoryStore()
    grants = GrantStore(store, NoRefresh())
    upstream = FixedUpstream(f"http://127.0.0.1:{closed_port()}/oauth2/v1/token")
    credentials = CredentialService(
        config, grants=grants, upstream=upstream, timeout=2.0
    )
    yield build_runtime(
        config, credentials=credentials, grants=grants, store=store, bus=EventBus()
    )
    await credentials.aclose()


def stage(**settings: Any) -> ExchangeStage:
    return ExchangeStage(
        name="exchange", config=ExchangeConfig(**settings), resources=None
    )


def with_facts(ctx: RequestContext) -> RequestContext:
    ctx.provide(PRINCIPAL, ALICE)
    ctx.provide(AGENT, CURSOR)
    ctx.provide(DECISION, Decision(allowed=True, backend=ctx.backend_name))
    return ctx


async def test_exchange_stage_static_key_provides_and_continues(
    runtime: Runtime,
) -> None:
    """A static backend gets its header, a ``TokenExchanged`` event and no retry."""
    downstream = Downstream()
    ctx = with_facts(request_context(runtime, "partners"))
    async with EventLog(runtime.bus).running() as log:
        response = await stage().handle(ctx, downstream)

    assert response.status == 200
    assert downstream.seen == [{"x-api-key": "partners-key"}]
    exchanged = log.of(TokenExchanged)
    assert len(exchanged) == 1
    assert exchanged[0].auth_kind == "static-key"
    assert exchanged[0].cache is None
    assert exchanged[0].audience is None
    assert exchanged[0].user is not None
    assert exchanged[0].user.sub == ALICE.sub
    assert exchanged[0].agent is not None
    assert exchanged[0].agent.id == CURSOR.id
    assert exchanged[0].backend == "partners"
    assert exchanged[0].method == "tools/call"
    assert exchanged[0].tool == "x"
    assert "partners-key" not in msgspec.json.encode(exchanged[0]).decode()


async def test_exchange_stage_idp_down_request_jsonrpc_retry_after(
    runtime: Runtime,
) -> None:
    """An IdP outage gets HTTP 200 for a request, with ``data.retry_after``."""
    await save_alice_grant(runtime.grants)
    downstream = Downstream()
    ctx = with_facts(request_context(runtime, "employees"))
    async with EventLog(runtime.bus).running() as log:
        response = await stage().handle(ctx, downstream)

    assert downstream.seen == []
    assert response.status == 200
    body = msgspec.json.decode(response.body)
    assert body["id"] == 7
    assert body["error"]["code"] == -32603
    assert "identity provider is unavailable" in body["error"]["message"]
    assert "retry in 30 seconds" in body["error"]["message"]
    assert body["error"]["data"]["reason"] == "idp_unavailable"
    assert body["error"]["data"]["retry_after"] == 30
    assert body["error"]["data"]["step"] == "token_exchange"
    assert "oauth_error" not in body["error"]["data"]
    failed = log.of(ExchangeFailed)
    assert len(failed) == 1
    assert failed[0].reason == "idp_unavailable"
    assert failed[0].step == "token_exchange"
    assert failed[0].auth_kind == "id-jag"
    assert failed[0].outcome == "error"
    assert await runtime.grants.get(ALICE.grant_id) is not None


@pytest.mark.parametrize(
    ("http_method", "body"),
    [
        ("POST", b'{"jsonrpc":"2.0","method":"notifications/initialized"}'),
        ("GET", b""),
    ],
)
async def test_exchange_stage_idp_down_no_request_503(
    runtime: Runtime, http_method: str, body: bytes
) -> None:
    """A notification or GET has no request id, so an outage gets 503."""
    await save_alice_grant(runtime.grants)
    ctx = with_facts(
        request_context(runtime, "employees", body, http_method=http_method)
    )
    async with EventLog(runtime.bus).running():
        response = await stage().handle(ctx, Downstream())

    assert response.status == 503
    assert response.headers["retry-after"] == "30"
    decoded = msgspec.json.decode(response.body)
    assert decoded["id"] is None
    assert decoded["error"]["data"]["reason"] == "idp_unavailable"


async def test_exchange_stage_ended_grant_401_with_resource_metadata(
    runtime: Runtime,
) -> None:
    """When only a new sign-in helps, the response is 401 naming the metadata."""
    downstream = Downstream()
    ctx = with_facts(request_context(runtime, "employees"))
    async with EventLog(runtime.bus).running() as log:
        response = await stage().handle(ctx, downstream)

    assert downstream.seen == []
    assert response.status == 401
    challenge = response.headers["www-authenticate"]
    # The same challenge as the authenticate stage's (bearer_challenge).
    assert challenge.startswith(
        'Bearer resource_metadata="http://127.0.0.1:8000/.well-known/'
        'oauth-protected-resource/employees/mcp"'
    )
    assert 'error="invalid_token", error_description="' in challenge
    body = msgspec.json.decode(response.body)
    assert body["id"] == 7
    assert body["error"]["code"] == -32001
    assert body["error"]["data"]["reason"] == "reauthentication_required"
    assert body["error"]["data"]["oauth_error"] == "invalid_grant"
    assert "sign in again" in body["error"]["message"]
    failed = log.of(ExchangeFailed)
    assert len(failed) == 1
    assert failed[0].step == "upstream_refresh"
    assert failed[0].oauth_error == "invalid_grant"


async def test_exchange_stage_static_backend_401_not_retried(
    runtime: Runtime,
) -> None:
    """A backend 401 is retried only for ``id-jag``: a static key stays wrong."""
    downstream = Downstream()
    ctx = with_facts(request_context(runtime, "partners"))
    async with EventLog(runtime.bus).running():
        await stage().handle(ctx, downstream)

    assert len(downstream.seen) == 1
