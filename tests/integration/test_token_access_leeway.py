"""The gateway's own access tokens at the edge of the clock-skew leeway.

The demo runs on loopback, once with the default leeway of 30 seconds and
once with ``stages.authenticate.leeway`` set to 5. Alice signs in through
the official SDK client. The test then re-signs her token's claims with the
gateway's keys, with ``exp``, ``nbf`` or ``iat`` moved to one second inside
or outside the leeway, and sends each token to the MCP endpoint over HTTP.
The times are fractional seconds taken just before the request, so the
one-second margin holds as long as a loopback request takes under a second.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import msgspec
import pytest
from _case_support import sign_in
from _transport_harness import MCP_HEADERS, initialize_body

from gateway.app import open_gateway
from gateway.demo.runner import DEMO_PORTS, DemoStack, demo_config, demo_peer_apps
from gateway.demo.serve import bind_socket, run_app

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", params=[30, 5], ids=["default-30s", "configured-5s"])
async def demo(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[DemoStack, int]]:
    """The demo with ``stages.authenticate.leeway`` unset (30) or set to 5."""
    leeway: int = request.param
    var_dir = tmp_path_factory.mktemp("leeway")
    sockets = {name: bind_socket("127.0.0.1", 0) for name in DEMO_PORTS}
    urls = {
        name: f"http://127.0.0.1:{sock.getsockname()[1]}"
        for name, sock in sockets.items()
    }
    config = demo_config(urls, var_dir)
    if leeway != 30:
        stages = {**config.stages}
        stages["authenticate"] = {**stages.get("authenticate", {}), "leeway": leeway}
        config = msgspec.structs.replace(config, stages=stages)
    apps = demo_peer_apps(config, urls)
    async with AsyncExitStack() as stack:
        for name in ("idp", "employees", "partners"):
            await stack.enter_async_context(run_app(apps[name], sock=sockets[name]))
        gateway = await stack.enter_async_context(open_gateway(config))
        await stack.enter_async_context(
            run_app(gateway.asgi, sock=sockets["gateway"], header_timeout=10.0)
        )
        yield DemoStack(gateway, config, urls, var_dir / "audit.jsonl"), leeway


@pytest.fixture(scope="module")
async def claims(demo: tuple[DemoStack, int]) -> dict[str, Any]:
    """The claims of a token the gateway issued to alice for employees."""
    stack, _ = demo
    storage = await sign_in(stack, "employees", user="alice")
    assert storage.tokens is not None
    _, issued = stack.gateway.runtime.keys.verify(
        storage.tokens.access_token, algorithms=["ES256"]
    )
    return issued


async def send(stack: DemoStack, token: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10.0) as client:
        return await client.post(
            stack.mcp_url("employees"),
            content=msgspec.json.encode(initialize_body()),
            headers={**MCP_HEADERS, "authorization": f"Bearer {token}"},
        )


def shifted(claims: dict[str, Any], claim: str, seconds: float) -> dict[str, Any]:
    """Return the claims with ``claim`` at now plus ``seconds``, times consistent."""
    now = time.time()
    moved = {**claims, "iat": now - 60, "nbf": now - 60, "exp": now + 300}
    moved[claim] = now + seconds
    return moved


@pytest.mark.parametrize(
    ("claim", "direction", "reason"),
    [
        ("exp", -1, "token_expired"),
        ("nbf", 1, "invalid_token"),
        ("iat", 1, "invalid_token"),
    ],
    ids=["expired", "nbf-future", "iat-future"],
)
async def test_access_token_leeway_edge_enforced(
    demo: tuple[DemoStack, int],
    claims: dict[str, Any],
    claim: str,
    direction: int,
    reason: str,
) -> None:
    """Skew of leeway-1 seconds passes; leeway+1 seconds gets 401 with the reason."""
    stack, leeway = demo
    keys = stack.gateway.runtime.keys
    inside = keys.sign(shifted(claims, claim, direction * (leeway - 1)))
    response = await send(stack, inside)
    assert response.status_code == 200, response.text
    outside = keys.sign(shifted(claims, claim, direction * (leeway + 1)))
    response = await send(stack, outside)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["data"]["reason"] == reason
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
