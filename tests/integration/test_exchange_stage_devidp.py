"""The exchange stage against the real dev IdP: events, failures and the 401 retry.

``call_next`` is a recorder standing in for the session and forward stages,
which is how a test makes the "backend" return 401: the forward stage reports
the backend's status in ``ctx.attributes["backend_status"]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from _devidp_fixtures import POST_CLIENT, DevIdpHarness, decode_unverified
from _exchange_setup import (
    CURSOR,
    Setup,
    employees_auth,
    open_setup,
    other_client_id_token,
)
from tests.unit.exchange.support import EventLog, build_runtime, request_context

from gateway.config import UpstreamConfig
from gateway.context import RequestContext
from gateway.demo.serve import bind_socket
from gateway.events import ExchangeFailed, TokenExchanged
from gateway.facts import (
    AGENT,
    BACKEND_CREDENTIALS,
    DECISION,
    PRINCIPAL,
    Decision,
    Principal,
)
from gateway.mcp.response import GatewayResponse, StreamOutcome
from gateway.runtime import Runtime
from gateway.stages.exchange import ExchangeConfig, ExchangeStage
from gateway.store import MemoryStore
from pipeline import EventBus

pytestmark = pytest.mark.anyio


class Backend:
    """The rest of the chain, reporting the given backend statuses in turn."""

    def __init__(self, *statuses: int, streamed: bool = False) -> None:
        self.statuses = list(statuses)
        self.streamed = streamed
        self.tokens: list[str] = []
        self.closed: list[StreamOutcome] = []

    async def __call__(self, ctx: RequestContext) -> GatewayResponse:
        credentials = ctx.fact(BACKEND_CREDENTIALS)
        self.tokens.append(credentials.headers["authorization"])
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        ctx.attributes["backend_status"] = status
        response = GatewayResponse(status=200, body=b'{"n":%d}' % len(self.tokens))
        if self.streamed:
            response.stream = _chunks()
        response.on_close.append(self._record_close)
        return response

    async def _record_close(self, outcome: StreamOutcome) -> None:
        self.closed.append(outcome)


async def _chunks() -> AsyncIterator[bytes]:
    yield b"data: {}\n\n"


def runtime_of(setup: Setup) -> Runtime:
    return build_runtime(
        setup.config,
        credentials=setup.service,
        grants=setup.grants,
        store=MemoryStore(),
        bus=EventBus(),
    )


def context(runtime: Runtime, principal: Principal) -> RequestContext:
    ctx = request_context(runtime, "employees")
    ctx.provide(PRINCIPAL, principal)
    ctx.provide(AGENT, CURSOR)
    ctx.provide(DECISION, Decision(allowed=True, backend="employees"))
    return ctx


def stage(**settings: Any) -> ExchangeStage:
    return ExchangeStage(
        name="exchange", config=ExchangeConfig(**settings), resources=None
    )


def error_of(response: GatewayResponse) -> dict[str, Any]:
    error: dict[str, Any] = msgspec.json.decode(response.body)["error"]
    return error


@pytest.fixture
async def setup(devidp: DevIdpHarness) -> AsyncIterator[Setup]:
    async with open_setup(devidp) as value:
        yield value


async def test_exchange_stage_devidp_miss_then_hit_events(setup: Setup) -> None:
    """Two requests make one exchange, then a cache hit, and events report both."""
    runtime = runtime_of(setup)
    principal = await setup.sign_in("alice")
    backend = Backend(200)
    async with EventLog(runtime.bus).running() as log:
        for _ in range(2):
            response = await stage().handle(context(runtime, principal), backend)
            assert response.status == 200

    assert len(set(backend.tokens)) == 1
    _, claims = decode_unverified(backend.tokens[0].removeprefix("Bearer "))
    assert claims["iss"] == setup.devidp.employees_issuer
    exchanged = log.of(TokenExchanged)
    assert [event.cache for event in exchanged] == ["miss", "hit"]
    for event in exchanged:
        assert event.auth_kind == "id-jag"
        assert event.audience == setup.devidp.employees_issuer
        assert event.expires_in is not None
        assert 3500 < event.expires_in <= 3600
        assert backend.tokens[0].split()[1] not in msgspec.json.encode(event).decode()


@pytest.mark.parametrize(
    ("overrides", "oauth_error"),
    [
        (lambda d: {"issuer": f"{d.issuer}/oauth2/nope"}, "invalid_target"),
        (lambda d: {"client_secret": "wrong"}, "invalid_client"),
    ],
)
async def test_exchange_stage_devidp_refusal_jsonrpc_error(
    devidp: DevIdpHarness,
    overrides: Callable[[DevIdpHarness], dict[str, Any]],
    oauth_error: str,
) -> None:
    """A rejection a new sign-in cannot fix gets HTTP 200 and a JSON-RPC error."""
    auth = employees_auth(devidp, **overrides(devidp))
    async with open_setup(devidp, auth=auth) as setup:
        runtime = runtime_of(setup)
        principal = await setup.sign_in("alice")
        backend = Backend(200)
        async with EventLog(runtime.bus).running() as log:
            response = await stage().handle(context(runtime, principal), backend)

        assert await setup.grants.get(principal.grant_id) is not None

    assert backend.tokens == []
    assert response.status == 200
    error = error_of(response)
    assert error["code"] == -32603
    assert f"({oauth_error})" in error["message"]
    assert error["data"]["reason"] == oauth_error
    assert error["data"]["oauth_error"] == oauth_error
    assert "retry_after" not in error["data"]
    failed = log.of(ExchangeFailed)
    assert len(failed) == 1
    assert failed[0].oauth_error == oauth_error


async def test_exchange_stage_devidp_unmapped_client_unauthorized(
    devidp: DevIdpHarness,
) -> None:
    """An IdP client with no mapping gets a JSON-RPC ``unauthorized_client``."""
    upstream = UpstreamConfig(
        issuer=devidp.issuer,
        client_id=POST_CLIENT[0],
        client_secret=POST_CLIENT[1],
        token_endpoint_auth_method="client_secret_post",
    )
    async with open_setup(devidp, upstream=upstream) as setup:
        runtime = runtime_of(setup)
        principal = await setup.keep(
            await other_client_id_token(devidp), grant_id="grant-x"
        )
        async with EventLog(runtime.bus).running() as log:
            response = await stage().handle(context(runtime, principal), Backend(200))

    assert response.status == 200
    error = error_of(response)
    assert error["data"]["reason"] == "unauthorized_client"
    assert error["data"]["step"] == "token_exchange"
    assert "not allowed to request access" in error["message"]
    assert log.of(ExchangeFailed)[0].step == "token_exchange"


async def test_exchange_stage_devidp_invalid_grant_revokes_and_401(
    setup: Setup,
) -> None:
    """An ID token the IdP rejects ends the grant and gets 401 for a new sign-in."""
    runtime = runtime_of(setup)
    principal = await setup.keep(
        await other_client_id_token(setup.devidp), grant_id="grant-x"
    )
    async with EventLog(runtime.bus).running() as log:
        response = await stage().handle(context(runtime, principal), Backend(200))

    assert response.status == 401
    challenge = response.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    assert (
        'resource_metadata="http://127.0.0.1:8000/.well-known/'
        'oauth-protected-resource/employees/mcp"'
    ) in challenge
    error = error_of(response)
    assert error["data"]["reason"] == "reauthentication_required"
    assert error["data"]["oauth_error"] == "invalid_grant"
    assert await setup.grants.get("grant-x") is None
    failed = log.of(ExchangeFailed)
    assert failed[0].reason == "reauthentication_required"
    assert failed[0].step == "token_exchange"


async def test_exchange_stage_devidp_backend_401_retried_with_new_token(
    setup: Setup,
) -> None:
    """A backend 401 drops the token, exchanges again and retries exactly once."""
    runtime = runtime_of(setup)
    principal = await setup.sign_in("alice")
    backend = Backend(401, 200)
    ctx = context(runtime, principal)
    async with EventLog(runtime.bus).running() as log:
        response = await stage().handle(ctx, backend)

    assert response.body == b'{"n":2}'
    assert len(backend.tokens) == 2
    assert backend.tokens[0] != backend.tokens[1]
    assert ctx.attributes["backend_status"] == 200
    assert ctx.fact(BACKEND_CREDENTIALS).headers["authorization"] == backend.tokens[1]
    assert len(backend.closed) == 1
    assert backend.closed[0].completed is False
    assert [event.cache for event in log.of(TokenExchanged)] == ["miss", "miss"]
    assert setup.count("/oauth2/employees/v1/token") == 2


async def test_exchange_stage_devidp_backend_401_twice_no_loop(setup: Setup) -> None:
    """A second 401 is returned as the forward stage built it: no third try."""
    runtime = runtime_of(setup)
    principal = await setup.sign_in("alice")
    backend = Backend(401)
    async with EventLog(runtime.bus).running():
        response = await stage().handle(context(runtime, principal), backend)

    assert len(backend.tokens) == 2
    assert response.body == b'{"n":2}'


@pytest.mark.parametrize(
    ("streamed", "settings"),
    [(True, {}), (False, {"retry_on_unauthorized": False})],
    ids=["streamed", "disabled"],
)
async def test_exchange_stage_devidp_401_not_retried(
    setup: Setup, streamed: bool, settings: dict[str, Any]
) -> None:
    """A streamed response, or a stage with retries off, is never retried."""
    backend = Backend(401, 200, streamed=streamed)
    runtime = runtime_of(setup)
    principal = await setup.sign_in("alice")
    async with EventLog(runtime.bus).running():
        await stage(**settings).handle(context(runtime, principal), backend)

    assert len(backend.tokens) == 1
    assert backend.closed == []


async def test_exchange_stage_devidp_idp_unreachable_retry_after(
    devidp: DevIdpHarness,
) -> None:
    """An IdP never reached (discovery fails) still suggests ``retry_after`` 30."""
    sock = bind_socket()
    port = sock.getsockname()[1]
    sock.close()
    upstream = UpstreamConfig(
        issuer=f"http://127.0.0.1:{port}",
        client_id="agent-proxy",
        client_secret="agent-proxy-dev-secret",
    )
    async with open_setup(devidp, upstream=upstream) as setup:
        runtime = runtime_of(setup)
        tokens = await devidp.sign_in("alice")
        principal = await setup.keep(tokens["id_token"], grant_id="grant-1")
        async with EventLog(runtime.bus).running() as log:
            response = await stage().handle(context(runtime, principal), Backend(200))

    assert response.status == 200
    error = error_of(response)
    assert error["data"]["reason"] == "idp_unavailable"
    assert error["data"]["retry_after"] == 30
    assert error["data"]["step"] == "token_exchange"
    assert log.of(ExchangeFailed)[0].step == "token_exchange"
