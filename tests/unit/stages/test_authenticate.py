"""The authenticate stage: token checks, the principal fact, 401 responses and events.

``call_next`` is a recorder standing in for the rest of the chain. The tokens
are real ES256 JWTs signed by real gateway keys; the grant store is the real
one over the in-memory store. Its upstream refresher is a stand-in that is
never called, because this stage only reads grants.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import pytest

from gateway.agents import AgentResolver
from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.errors import ConfigError
from gateway.events import AuthenticationFailed, GatewayEvent, RequestAuthenticated
from gateway.facts import PRINCIPAL, Principal
from gateway.mcp.jsonrpc import decode, parse_message
from gateway.mcp.response import GatewayResponse
from gateway.oauth.access_tokens import mint_access_token
from gateway.oauth.grants import Grant, GrantStore, UpstreamTokens
from gateway.oauth.keys import SigningKeys
from gateway.runtime import Runtime
from gateway.stages.authenticate import AuthenticateConfig, AuthenticateStage
from gateway.store import MemoryStore
from pipeline import Event, EventBus

pytestmark = pytest.mark.anyio

PUBLIC_URL = "http://127.0.0.1:8000"
EMPLOYEES = f"{PUBLIC_URL}/employees/mcp"
PARTNERS = f"{PUBLIC_URL}/partners/mcp"
PRM = f"{PUBLIC_URL}/.well-known/oauth-protected-resource/employees/mcp"
CONFIG = msgspec.convert(
    {
        "server": {"public_url": PUBLIC_URL},
        "upstream": {"issuer": "http://127.0.0.1:9000", "client_id": "gw"},
        "backends": {
            "employees": {"path": "/employees/mcp", "url": "http://127.0.0.1:8001/mcp"},
            "partners": {"path": "/partners/mcp", "url": "http://127.0.0.1:8002/mcp"},
        },
    },
    GatewayConfig,
)


class UnusedRefresher:
    """Stands in for the upstream client; the authenticate stage never refreshes."""

    async def refresh(self, refresh_token: str) -> UpstreamTokens:
        raise AssertionError("the authenticate stage must not refresh upstream tokens")


class Downstream:
    """Records whether the chain continued and with which principal."""

    def __init__(self) -> None:
        self.principals: list[Principal] = []

    async def __call__(self, ctx: RequestContext) -> GatewayResponse:
        self.principals.append(ctx.fact(PRINCIPAL))
        return GatewayResponse(status=200, body=b"{}")


class Harness:
    def __init__(self, runtime: Runtime, events: list[Event]) -> None:
        self.runtime = runtime
        self.events = events
        self.stage = AuthenticateStage(
            name="authenticate", config=AuthenticateConfig(), resources=runtime
        )
        self.downstream = Downstream()

    async def grant(self, grant_id: str = "g1", **overrides: Any) -> Grant:
        now = int(time.time())
        values: dict[str, Any] = {
            "grant_id": grant_id,
            "user_iss": "http://127.0.0.1:9000",
            "user_sub": "00u_alice",
            "email": "alice@example.com",
            "client_id": "c1",
            "agent_id": "cursor",
            "resource": EMPLOYEES,
            "scopes": ["mcp"],
            "upstream_id_token": "id-token",
            "id_token_expires_at": now + 3600,
            "created_at": now,
            "expires_at": now + 3600,
        }
        values.update(overrides)
        grant = Grant(**values)
        await self.runtime.grants.save(grant)
        return grant

    async def token(self, **overrides: Any) -> str:
        grant = await self.grant(**overrides)
        token, _ = mint_access_token(
            self.runtime.keys, issuer=PUBLIC_URL, grant=grant, scopes=["mcp"], ttl=600
        )
        return token

    async def call(
        self,
        authorization: str | None,
        *,
        backend: str = "employees",
        body: bytes = b'{"jsonrpc":"2.0","id":"req-7","method":"tools/list"}',
    ) -> GatewayResponse:
        headers = {} if authorization is None else {"authorization": authorization}
        ctx = RequestContext(
            runtime=self.runtime,
            request_id="r1",
            http_method="POST" if body else "GET",
            backend_name=backend,
            backend=CONFIG.backends[backend],
            resource=self.runtime.resource_for(backend),
            headers=headers,
            body=body,
            message=parse_message(body) if body else None,
        )
        response = await self.stage.handle(ctx, self.downstream)
        await anyio.sleep(0.01)  # let the bus deliver the events
        return response

    def last_event(self) -> GatewayEvent:
        event = self.events[-1]
        assert isinstance(event, GatewayEvent)
        return event


@pytest.fixture
async def harness(tmp_path: pathlib.Path) -> AsyncIterator[Harness]:
    store = MemoryStore()
    bus = EventBus()
    events: list[Event] = []

    async def record(event: Event) -> None:
        events.append(event)

    bus.subscribe("test", record)
    runtime = Runtime(
        config=CONFIG,
        store=store,
        bus=bus,
        keys=SigningKeys.load_or_create(tmp_path / "signing.json"),
        grants=GrantStore(store, UnusedRefresher()),
        upstream=None,  # type: ignore[arg-type]
        sessions=None,  # type: ignore[arg-type]
        credentials=None,  # type: ignore[arg-type]
        agents=AgentResolver(CONFIG),
    )
    async with anyio.create_task_group() as tg:
        bus.start(tg)
        yield Harness(runtime, events)
        await bus.aclose()


def error_of(response: GatewayResponse) -> dict[str, Any]:
    body = decode(response.body)
    assert isinstance(body, dict)
    return body


async def test_authenticate_valid_token_provides_principal(harness: Harness) -> None:
    """A valid token continues the chain with the user's principal."""
    response = await harness.call(f"Bearer {await harness.token()}")
    assert response.status == 200
    (principal,) = harness.downstream.principals
    assert principal.iss == "http://127.0.0.1:9000"
    assert principal.sub == "00u_alice"
    assert principal.client_id == "c1"
    assert principal.grant_id == "g1"
    assert principal.scopes == ("mcp",)
    assert principal.agent_claim == {
        "id": "cursor",
        "verified": False,
        "trust": "self-asserted",
    }
    assert principal.email == "alice@example.com"
    event = harness.last_event()
    assert isinstance(event, RequestAuthenticated)
    assert event.user is not None
    assert event.user.sub == "00u_alice"
    assert event.backend == "employees"
    assert event.method == "tools/list"
    assert event.token_id == principal.token_id


async def test_authenticate_lowercase_scheme_accepted(harness: Harness) -> None:
    """The auth scheme is case-insensitive (RFC 9110 section 11.1)."""
    response = await harness.call(f"bearer {await harness.token()}")
    assert response.status == 200


async def test_authenticate_missing_token_challenges(harness: Harness) -> None:
    """No token gives 401 with resource_metadata and no error attribute."""
    response = await harness.call(None)
    assert response.status == 401
    challenge = response.headers["www-authenticate"]
    assert challenge == f'Bearer resource_metadata="{PRM}", scope="mcp"'
    body = error_of(response)
    assert body["id"] == "req-7"
    assert body["error"]["code"] == -32001
    assert body["error"]["data"]["reason"] == "missing_token"
    assert harness.downstream.principals == []
    event = harness.last_event()
    assert isinstance(event, AuthenticationFailed)
    assert event.reason == "missing_token"
    assert event.outcome == "denied"
    assert event.user is None


@pytest.mark.parametrize(
    "authorization",
    ["Bearer", "Bearer   ", "Bearer not.a.jwt", "Bearer a.b.c"],
)
async def test_authenticate_unusable_token_invalid(
    harness: Harness, authorization: str
) -> None:
    """Empty or malformed bearer tokens get error="invalid_token"."""
    response = await harness.call(authorization)
    assert response.status == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(f'Bearer resource_metadata="{PRM}"')
    assert 'error="invalid_token"' in challenge
    assert error_of(response)["error"]["data"]["reason"] == "invalid_token"


async def test_authenticate_other_scheme_no_error_code(harness: Harness) -> None:
    """A non-bearer scheme sent no bearer token, so the challenge has no error."""
    response = await harness.call("Basic YTpi")
    assert response.status == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(f'Bearer resource_metadata="{PRM}"')
    assert "error=" not in challenge
    assert error_of(response)["error"]["data"]["reason"] == "missing_token"


async def test_authenticate_expired_token_reason(harness: Harness) -> None:
    """An expired token is reported as token_expired."""
    grant = await harness.grant()
    token, _ = mint_access_token(
        harness.runtime.keys,
        issuer=PUBLIC_URL,
        grant=grant,
        scopes=["mcp"],
        ttl=60,
        now=int(time.time()) - 200,
    )
    response = await harness.call(f"Bearer {token}")
    assert response.status == 401
    assert error_of(response)["error"]["data"]["reason"] == "token_expired"
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_authenticate_other_backend_token_wrong_audience(
    harness: Harness,
) -> None:
    """A token for /employees/mcp is rejected on /partners/mcp."""
    response = await harness.call(f"Bearer {await harness.token()}", backend="partners")
    assert response.status == 401
    assert error_of(response)["error"]["data"]["reason"] == "wrong_audience"
    challenge = response.headers["www-authenticate"]
    assert "/.well-known/oauth-protected-resource/partners/mcp" in challenge


async def test_authenticate_revoked_grant_rejected(harness: Harness) -> None:
    """A token whose grant was revoked is grant_revoked."""
    token = await harness.token()
    await harness.runtime.grants.revoke("g1")
    response = await harness.call(f"Bearer {token}")
    assert response.status == 401
    assert error_of(response)["error"]["data"]["reason"] == "grant_revoked"


async def test_authenticate_grant_of_other_client_rejected(harness: Harness) -> None:
    """A token whose grant belongs to another client is invalid."""
    token = await harness.token()
    await harness.grant(client_id="c2")
    response = await harness.call(f"Bearer {token}")
    assert error_of(response)["error"]["data"]["reason"] == "invalid_token"


async def test_authenticate_foreign_issuer_rejected(harness: Harness) -> None:
    """A correctly signed token naming another issuer is rejected."""
    grant = await harness.grant()
    token, _ = mint_access_token(
        harness.runtime.keys,
        issuer="http://127.0.0.1:8000/other",
        grant=grant,
        scopes=["mcp"],
        ttl=600,
    )
    response = await harness.call(f"Bearer {token}")
    assert error_of(response)["error"]["data"]["reason"] == "invalid_token"


async def test_authenticate_get_request_null_id(harness: Harness) -> None:
    """Without a parsed message the JSON-RPC error has a null id."""
    response = await harness.call(None, body=b"")
    assert response.status == 401
    assert error_of(response)["id"] is None


async def test_authenticate_numeric_id_echoed(harness: Harness) -> None:
    """The request id keeps its JSON type."""
    response = await harness.call(
        None, body=b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}'
    )
    assert error_of(response)["id"] == 0


async def test_authenticate_description_header_safe(harness: Harness) -> None:
    """error_description holds only characters RFC 6750 allows (no quotes)."""
    response = await harness.call('Bearer "quoted"')
    challenge = response.headers["www-authenticate"]
    description = challenge.split('error_description="', 1)[1][:-1]
    assert '"' not in description
    assert "\\" not in description


def test_authenticate_config_without_signing_algorithm_rejected() -> None:
    """algorithms that omit signing.algorithm fail at construction with the fix."""
    config = msgspec.structs.replace(
        CONFIG, signing=msgspec.structs.replace(CONFIG.signing, algorithm="RS256")
    )

    class Resources:
        pass

    resources = Resources()
    resources.config = config  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"stages.authenticate.algorithms.*'RS256'"):
        AuthenticateStage(
            name="authenticate", config=AuthenticateConfig(), resources=resources
        )


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"algorithms": ["HS256"]}, "HS256"),
        ({"algorithms": ["none"]}, "none"),
        ({"algorithms": []}, "empty"),
        ({"leeway": -1}, "leeway"),
        ({"leeway": 3600}, "leeway"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_authenticate_config_invalid_rejected(raw: dict[str, Any], words: str) -> None:
    """Invalid settings fail validation with a message naming the problem."""
    with pytest.raises(msgspec.ValidationError, match=words):
        msgspec.convert(raw, AuthenticateConfig)
