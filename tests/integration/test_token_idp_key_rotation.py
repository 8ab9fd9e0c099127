"""The upstream IdP rotates its signing key while the gateway serves traffic.

The whole demo runs on loopback: the dev IdP, both demo backends and the
gateway. The dev IdP's org server rotates its key in place, as an IdP does:
the new key signs from then on and the old one stays published. Its JWKS
endpoint is wrapped by a small ASGI layer that counts fetches and can
return 503. The counts show the gateway's re-fetch policy: one re-fetch for
a new ``kid``, shared by concurrent sign-ins, and at most one per 30 seconds
for any number of unknown ``kid``s. The 503 shows that the last good keys
stay in use when the endpoint fails.

The hand-built ID tokens are signed with the dev IdP's own org key (the
tests install a key they hold through ``rotate_key``) or with a stranger's
key, and go to the gateway's own upstream client, the one its sign-in
callback uses.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from _case_support import sign_in
from _transport_harness import MCP_HEADERS, initialize_body

from gateway.app import open_gateway
from gateway.config import UpstreamConfig
from gateway.demo.driver import run_client
from gateway.demo.runner import DEMO_PORTS, DemoStack, demo_config, demo_peer_apps
from gateway.demo.serve import bind_socket, run_app
from gateway.devidp import SigningKey
from gateway.devidp.org import OrgAuthorizationServer
from gateway.errors import UpstreamError
from gateway.oauth.jwks import JwksRegistry
from gateway.oauth.upstream import UpstreamClient

pytestmark = pytest.mark.anyio

JWKS_PATH = "/oauth2/v1/keys"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class JwksTap:
    """Counts fetches of the org JWKS and can make that endpoint fail."""

    app: Any
    fetches: int = 0
    failing: bool = False
    statuses: list[int] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == JWKS_PATH:
            self.fetches += 1
            if self.failing:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 503,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send(
                    {"type": "http.response.body", "body": b'{"error":"unavailable"}'}
                )
                return
        await self.app(scope, receive, send)


@dataclass
class RotatingDemo:
    stack: DemoStack
    org: OrgAuthorizationServer
    tap: JwksTap

    @property
    def upstream(self) -> UpstreamClient:
        upstream: UpstreamClient = self.stack.gateway.runtime.upstream
        return upstream

    def id_token(self, key: SigningKey, **overrides: Any) -> str:
        """Return an ID token for the gateway's client signed with ``key``."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.stack.urls["idp"],
            "aud": self.stack.config.upstream.client_id,
            "sub": "00u_alice",
            "iat": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        return key.sign(claims, typ="JWT")


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[RotatingDemo]:
    """The demo on ephemeral ports, with a tap on the dev IdP's JWKS endpoint."""
    sockets = {name: bind_socket("127.0.0.1", 0) for name in DEMO_PORTS}
    urls = {
        name: f"http://127.0.0.1:{sock.getsockname()[1]}"
        for name, sock in sockets.items()
    }
    config = demo_config(urls, tmp_path)
    apps = demo_peer_apps(config, urls)
    tap = JwksTap(apps["idp"])
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(run_app(tap, sock=sockets["idp"]))
        for name in ("employees", "partners"):
            await stack.enter_async_context(run_app(apps[name], sock=sockets[name]))
        gateway = await stack.enter_async_context(open_gateway(config))
        await stack.enter_async_context(
            run_app(gateway.asgi, sock=sockets["gateway"], header_timeout=10.0)
        )
        running = DemoStack(
            gateway=gateway, config=config, urls=urls, audit_path=tmp_path / "a"
        )
        yield RotatingDemo(running, apps["idp"].state.org, tap)


async def initialize_status(url: str, token: str) -> int:
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(
            url,
            content=msgspec.json.encode(initialize_body()),
            headers={**MCP_HEADERS, "authorization": f"Bearer {token}"},
        )
    return response.status_code


async def test_idp_key_rotation_mid_traffic_one_refetch(demo: RotatingDemo) -> None:
    """After an IdP rotation, sign-ins verify with one JWKS re-fetch while MCP
    traffic keeps flowing."""
    url = demo.stack.mcp_url("employees")
    alice = await sign_in(demo.stack, "employees", user="alice")
    assert alice.tokens is not None
    assert demo.tap.fetches == 1
    statuses: list[int] = []
    done = anyio.Event()

    async def traffic() -> None:
        assert alice.tokens is not None
        for _ in range(200):
            statuses.append(await initialize_status(url, alice.tokens.access_token))
            if done.is_set():
                return

    async def sign_in_bob() -> None:
        report = await run_client(
            url,
            client_name="cursor",
            login_hint="bob",
            calls=[("list_employees", {})],
        )
        assert report.results["list_employees"][0] is False, report.results

    async with anyio.create_task_group() as tg:
        tg.start_soon(traffic)
        await anyio.sleep(0.05)
        rotated = demo.org.rotate_key()
        async with anyio.create_task_group() as sign_ins:
            for _ in range(3):
                sign_ins.start_soon(sign_in_bob)
        done.set()

    assert demo.tap.fetches == 2
    assert statuses
    assert set(statuses) == {200}
    jwks = demo.org.metadata()["jwks_uri"]
    async with httpx.AsyncClient() as client:
        published = [key["kid"] for key in (await client.get(jwks)).json()["keys"]]
    assert published[0] == rotated.kid
    assert len(published) == 2


async def test_idp_unknown_kid_burst_one_refetch(demo: RotatingDemo) -> None:
    """A burst of ID tokens with unknown kids causes at most one JWKS fetch."""
    key = SigningKey.generate()
    demo.org.rotate_key(key)
    await demo.upstream.verify_id_token(demo.id_token(key), nonce=None)
    before = demo.tap.fetches
    failures: list[str] = []

    async def garbage() -> None:
        stranger = SigningKey.generate()
        token = demo.id_token(stranger)
        with pytest.raises(UpstreamError) as info:
            await demo.upstream.verify_id_token(token, nonce=None)
        failures.append(info.value.reason)

    async with anyio.create_task_group() as tg:
        for _ in range(30):
            tg.start_soon(garbage)
    assert failures == ["invalid_id_token"] * 30
    assert demo.tap.fetches - before <= 1
    # The real key still verifies, without another fetch.
    await demo.upstream.verify_id_token(demo.id_token(key), nonce=None)
    assert demo.tap.fetches - before <= 1


async def test_idp_jwks_failing_keeps_last_good_keys(demo: RotatingDemo) -> None:
    """While the JWKS endpoint fails, known keys verify and unknown kids are
    rejected without a fetch storm."""
    key = SigningKey.generate()
    demo.org.rotate_key(key)
    await demo.upstream.verify_id_token(demo.id_token(key), nonce=None)
    before = demo.tap.fetches
    demo.tap.failing = True
    newer = SigningKey.generate()
    demo.org.rotate_key(newer)
    for _ in range(5):
        with pytest.raises(UpstreamError) as info:
            await demo.upstream.verify_id_token(demo.id_token(newer), nonce=None)
        assert info.value.reason == "invalid_id_token"
    claims = await demo.upstream.verify_id_token(demo.id_token(key), nonce=None)
    assert claims["sub"] == "00u_alice"
    assert demo.tap.fetches - before == 1


def same_kid(key: SigningKey) -> SigningKey:
    """Return new key material published under ``key``'s ``kid``."""
    return SigningKey.from_jwk({**SigningKey.generate().private_jwk(), "kid": key.kid})


async def test_idp_reused_kid_new_material_refetched(demo: RotatingDemo) -> None:
    """A kid the IdP reuses for new key material verifies after one re-fetch."""
    key = SigningKey.generate()
    demo.org.rotate_key(key)
    await demo.upstream.verify_id_token(demo.id_token(key), nonce=None)
    before = demo.tap.fetches
    reused = same_kid(key)
    demo.org.rotate_key(reused)
    claims = await demo.upstream.verify_id_token(demo.id_token(reused), nonce=None)
    assert claims["sub"] == "00u_alice"
    assert demo.tap.fetches - before == 1


async def test_idp_forged_known_kid_burst_one_refetch(demo: RotatingDemo) -> None:
    """Tokens naming a known kid but signed by another key are rejected, with at
    most one JWKS fetch for the whole burst."""
    key = SigningKey.generate()
    demo.org.rotate_key(key)
    await demo.upstream.verify_id_token(demo.id_token(key), nonce=None)
    before = demo.tap.fetches
    for _ in range(10):
        forged = demo.id_token(same_kid(key))
        with pytest.raises(UpstreamError) as info:
            await demo.upstream.verify_id_token(forged, nonce=None)
        assert "signature" in str(info.value)
    assert demo.tap.fetches - before <= 1


async def test_shared_registry_refetches_once_per_issuer(
    demo: RotatingDemo,
) -> None:
    """Two relying parties of one IdP that share a JwksRegistry re-fetch once
    between them after a rotation: the limit is per issuer, not per client."""
    async with httpx.AsyncClient() as http:
        registry = JwksRegistry(http)
        clients = {
            client_id: UpstreamClient(
                UpstreamConfig(issuer=demo.stack.urls["idp"], client_id=client_id),
                redirect_uri="http://127.0.0.1/cb",
                http=http,
                jwks=registry,
            )
            for client_id in ("agent-proxy", "claude-agent")
        }
        key = SigningKey.generate()
        demo.org.rotate_key(key)
        for client_id, client in clients.items():
            await client.verify_id_token(demo.id_token(key, aud=client_id), nonce=None)
        before = demo.tap.fetches
        rotated = SigningKey.generate()
        demo.org.rotate_key(rotated)
        for client_id, client in clients.items():
            token = demo.id_token(rotated, aud=client_id)
            assert (await client.verify_id_token(token, nonce=None))["aud"] == client_id
    assert demo.tap.fetches - before == 1
