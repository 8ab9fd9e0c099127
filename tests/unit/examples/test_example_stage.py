"""The example stage of docs/writing-a-stage.md, planned and run as YAML declares it.

The planning tests build chains with ``plan_backend_chains`` from YAML. The
run tests serve the dev IdP, the demo partners backend and the whole gateway
on loopback, and drive the official MCP client through sign-in and calls,
with the example stage referenced by ``module.path:Class`` in ``pipeline``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from examples.stages.require_tenant_header import (
    RequireTenantHeaderConfig,
    RequireTenantHeaderStage,
    TenantRejected,
)
from mcp import ClientSession, MCPError
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientMetadata

from gateway.app import open_gateway
from gateway.chains import plan_backend_chains
from gateway.config import GatewayConfig, load_config_text
from gateway.demo.backends.partners import create_partners_app
from gateway.demo.driver import REDIRECT_URI, BrowserDriver, MemoryTokenStorage
from gateway.demo.serve import bind_socket, run_app
from gateway.devidp import create_devidp_app, demo_settings
from gateway.errors import ConfigError
from gateway.events import GatewayEvent, ResponseCompleted
from pipeline import Event

REF = "examples.stages.require_tenant_header:RequireTenantHeaderStage"
PARTNERS_KEY = "partners-test-key"

CONFIG = """
server:
  public_url: {gateway}
  var_dir: {var_dir}
upstream:
  issuer: {idp}
  client_id: agent-proxy
  client_secret: agent-proxy-dev-secret
agents:
  cursor:
    match: {{client_name: cursor}}
    backends: [partners]
backends:
  partners:
    path: /partners/mcp
    url: {partners}/mcp
    auth: {{kind: static-key, header: X-Api-Key, value: {partners_key}}}
pipeline:
  - audit
  - authenticate
  - "{ref}"
  - identify_agent
  - authorize
  - exchange
  - session
  - forward
stages:
  "{ref}":
    header: X-Tenant-Id
    allowed: [acme, globex]
"""


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def example_config(**overrides: str) -> GatewayConfig:
    values = {
        "gateway": "http://127.0.0.1:8000",
        "idp": "http://127.0.0.1:9000",
        "partners": "http://127.0.0.1:8002",
        "var_dir": "var",
        "partners_key": PARTNERS_KEY,
        "ref": REF,
        **overrides,
    }
    return load_config_text(CONFIG.format(**values))


ORDER = [
    "audit",
    "authenticate",
    REF,
    "identify_agent",
    "authorize",
    "exchange",
    "session",
    "forward",
]
"""The chain of the YAML above."""


def test_plan_custom_stage_keeps_declared_position() -> None:
    """A ``module:Class`` reference is planned where YAML puts it, with its settings."""
    plans, warnings = plan_backend_chains(example_config())
    declarations = plans["partners"].plan.declarations
    assert [d.ref for d in declarations] == ORDER
    assert declarations[2].cls is RequireTenantHeaderStage
    assert declarations[2].path == "pipeline[2]"
    assert declarations[2].settings == RequireTenantHeaderConfig(
        header="X-Tenant-Id", allowed=["acme", "globex"]
    )
    assert warnings == []


def with_pipeline(refs: list[str]) -> GatewayConfig:
    return GatewayConfig(**{**_fields(example_config()), "pipeline": refs})


def test_plan_stage_before_authenticate_rejected() -> None:
    """Putting the stage before the stage that provides ``principal`` is rejected."""
    moved = ["audit", REF, "authenticate", *ORDER[3:]]
    with pytest.raises(ConfigError) as raised:
        plan_backend_chains(with_pipeline(moved))
    assert raised.value.problems == [
        f'pipeline[1]: stage "{REF}" requires "principal", which no stage before '
        'it provides; put "authenticate" before it'
    ]


def test_plan_stage_after_exchange_rejected() -> None:
    """The class's ``before`` keeps the stage in front of ``exchange``."""
    moved = [r for r in ORDER if r != REF]
    moved.insert(moved.index("exchange") + 1, REF)
    with pytest.raises(ConfigError) as raised:
        plan_backend_chains(with_pipeline(moved))
    assert raised.value.problems == [
        f'pipeline[5]: stage "{REF}" must come before "exchange" (pipeline[4]), '
        f'because its class declares before "exchange"; move "{REF}" above '
        '"exchange"'
    ]


def test_plan_stage_outside_audit_rejected() -> None:
    """The class's ``after`` keeps ``audit`` outside the stage."""
    moved = ["authenticate", REF, "audit", *ORDER[3:]]
    with pytest.raises(ConfigError) as raised:
        plan_backend_chains(with_pipeline(moved))
    assert raised.value.problems == [
        f'pipeline[1]: stage "{REF}" must come after "audit" (pipeline[2]), '
        f'because its class declares after "audit"; move "{REF}" below "audit"'
    ]


def test_plan_stage_without_audit_accepted() -> None:
    """An ordering constraint on a stage the chain lacks constrains nothing."""
    plans, warnings = plan_backend_chains(with_pipeline(ORDER[1:]))
    assert [d.ref for d in plans["partners"].plan.declarations] == ORDER[1:]
    assert warnings == [
        'pipeline: the chain has no "audit" stage, so its requests are not '
        'audited; add "audit" as the first stage'
    ]


def test_plan_invalid_header_setting_rejected() -> None:
    """A settings value the stage's Struct rejects is reported under its YAML path."""
    config = example_config()
    stages = {REF: {"header": "X Tenant"}}
    with pytest.raises(ConfigError) as raised:
        plan_backend_chains(GatewayConfig(**{**_fields(config), "stages": stages}))
    assert raised.value.problems == [
        f"stages.{REF}: header 'X Tenant' is not a valid HTTP header name"
    ]


def _fields(config: GatewayConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__struct_fields__}


@dataclass
class Stack:
    """The running servers and every event the gateway published."""

    mcp_url: str
    events: list[Event]

    def events_of(self, kind: type[GatewayEvent], request_ids: set[str]) -> list[Any]:
        """Return the events of one type published for these requests."""
        return [
            e
            for e in self.events
            if isinstance(e, kind) and e.request_id in request_ids
        ]

    async def completed(self, request_ids: set[str]) -> list[ResponseCompleted]:
        """Wait until every request has its ResponseCompleted, then return them.

        The audit stage publishes it after the last byte was sent, so it can
        arrive after the client has read the response.
        """
        with anyio.fail_after(5):
            while True:
                done = self.events_of(ResponseCompleted, request_ids)
                if {e.request_id for e in done} >= request_ids:
                    return done
                await anyio.sleep(0.01)


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """The dev IdP, the partners backend and the gateway with the example stage."""
    gateway_sock, idp_sock = bind_socket(), bind_socket()
    gateway = f"http://127.0.0.1:{gateway_sock.getsockname()[1]}"
    idp = f"http://127.0.0.1:{idp_sock.getsockname()[1]}"
    var_dir: Path = tmp_path_factory.mktemp("var")
    async with AsyncExitStack() as exits:
        partners = await exits.enter_async_context(
            run_app(create_partners_app(api_key=PARTNERS_KEY))
        )
        config = example_config(
            gateway=gateway, idp=idp, partners=partners.url, var_dir=str(var_dir)
        )
        settings = demo_settings(issuer=idp, gateway_url=gateway)
        await exits.enter_async_context(
            run_app(create_devidp_app(settings), sock=idp_sock)
        )
        running = await exits.enter_async_context(open_gateway(config))
        events: list[Event] = []

        async def record(event: Event) -> None:
            events.append(event)

        running.runtime.bus.subscribe("test", record)
        await exits.enter_async_context(run_app(running.asgi, sock=gateway_sock))
        yield Stack(f"{gateway}/partners/mcp", events)


@dataclass
class Outcome:
    """What one client session saw."""

    tools: list[str]
    error: MCPError | None
    request_ids: set[str]


async def run_session(url: str, headers: dict[str, str]) -> Outcome:
    """Sign in as ``cursor``, then initialize and list tools with extra headers."""
    browser = BrowserDriver()
    auth = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="cursor",
            redirect_uris=[REDIRECT_URI],  # type: ignore[list-item]
            token_endpoint_auth_method="none",
        ),
        storage=MemoryTokenStorage(),
        redirect_handler=browser.redirect_handler,
        callback_handler=browser.callback_handler,
    )
    request_ids: set[str] = set()

    async def keep_request_id(response: httpx2.Response) -> None:
        # OAuth endpoints send X-Request-Id too, but only MCP requests end
        # with a ResponseCompleted event.
        if "x-request-id" in response.headers and str(response.url) == url:
            request_ids.add(response.headers["x-request-id"])

    tools: list[str] = []
    error: MCPError | None = None
    with anyio.fail_after(15):
        async with (
            httpx2.AsyncClient(
                auth=auth,
                headers=headers,
                event_hooks={"response": [keep_request_id]},
            ) as http,
            streamable_http_client(url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            try:
                await session.initialize()
                tools = [tool.name for tool in (await session.list_tools()).tools]
            except MCPError as exc:
                error = exc
    return Outcome(tools, error, request_ids)


@pytest.mark.anyio
async def test_stage_allowed_tenant_passes_through(stack: Stack) -> None:
    """An allowed tenant reaches the backend, and no TenantRejected is published."""
    outcome = await run_session(stack.mcp_url, {"X-Tenant-Id": "acme"})
    assert outcome.error is None
    assert "list_partners" in outcome.tools
    completed = await stack.completed(outcome.request_ids)
    assert stack.events_of(TenantRejected, outcome.request_ids) == []
    assert {e.method for e in completed if e.status == 200} >= {
        "initialize",
        "tools/list",
    }


@pytest.mark.anyio
async def test_stage_missing_header_gets_400(stack: Stack) -> None:
    """A request without the header gets a JSON-RPC error and a TenantRejected."""
    outcome = await run_session(stack.mcp_url, {})
    assert outcome.error is not None
    assert outcome.error.error.code == -32600
    assert outcome.error.error.data == {"reason": "missing_tenant"}
    completed = await stack.completed(outcome.request_ids)
    [rejected] = stack.events_of(TenantRejected, outcome.request_ids)
    assert rejected.stage == REF
    assert rejected.method == "initialize"
    assert rejected.reason == "missing_tenant"
    assert rejected.tenant is None
    assert rejected.user is not None
    assert rejected.user.sub
    assert rejected.agent is None
    assert 400 in {e.status for e in completed}


@pytest.mark.anyio
async def test_stage_unknown_tenant_gets_403(stack: Stack) -> None:
    """A tenant outside ``allowed`` gets 403 with reason ``tenant_not_allowed``."""
    outcome = await run_session(stack.mcp_url, {"X-Tenant-Id": "initech"})
    assert outcome.error is not None
    assert outcome.error.error.code == -32003
    assert outcome.error.error.data == {"reason": "tenant_not_allowed"}
    completed = await stack.completed(outcome.request_ids)
    [rejected] = stack.events_of(TenantRejected, outcome.request_ids)
    assert rejected.tenant == "initech"
    assert rejected.outcome == "denied"
    assert 403 in {e.status for e in completed}
