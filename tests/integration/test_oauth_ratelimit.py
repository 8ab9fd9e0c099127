"""Rate limits of the OAuth front door, as the assembled gateway serves them.

The gateway comes from ``open_gateway`` and runs with uvicorn on an ephemeral
loopback port; the sign-in test also runs the dev IdP. Each test starts its
own gateway, so its buckets start full. Every test sends fewer than 30
requests.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import pathlib
import re
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec
import pytest
from structlog.testing import capture_logs

from gateway.app import open_gateway
from gateway.config import GatewayConfig
from gateway.demo.serve import bind_socket, run_app
from gateway.devidp import create_devidp_app, demo_settings
from gateway.errors import ConfigError

pytestmark = pytest.mark.anyio

CALLBACK = "http://127.0.0.1:5555/callback"
TRANSACTION = re.compile(r'name="transaction" value="([^"]+)"')
REGISTRATION = {
    "client_name": "cursor",
    "redirect_uris": [CALLBACK],
    "token_endpoint_auth_method": "none",
}
SMALL_LIMITS = {
    "register": {"per_minute": 6, "burst": 3},
    "token": {"per_minute": 6, "burst": 3},
    "authorize": {"per_minute": 6, "burst": 3},
    "trusted_proxies": ["127.0.0.1"],
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def closed_port() -> int:
    """Return a loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_for(
    url: str,
    issuer: str,
    var_dir: pathlib.Path,
    rate_limits: dict[str, Any],
    clients: dict[str, Any] | None = None,
) -> GatewayConfig:
    return msgspec.convert(
        {
            "server": {"public_url": url, "var_dir": str(var_dir)},
            "upstream": {
                "issuer": issuer,
                "client_id": "agent-proxy",
                "client_secret": "agent-proxy-dev-secret",
            },
            "backends": {
                "employees": {"path": "/employees/mcp", "url": "http://127.0.0.1:1/mcp"}
            },
            "agents": {
                "cursor": {"match": {"client_name": "cursor"}, "backends": ["*"]}
            },
            "oauth": {"rate_limits": rate_limits, "clients": clients or {}},
        },
        GatewayConfig,
    )


@contextlib.asynccontextmanager
async def running_gateway(
    var_dir: pathlib.Path,
    rate_limits: dict[str, Any],
    *,
    idp_sock: socket.socket | None = None,
    clients: dict[str, Any] | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """Serve a gateway (and the dev IdP when given its socket); yield a client.

    ``clients`` becomes ``oauth.clients``, the pre-registered clients.
    """
    sock = bind_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    if idp_sock is None:
        issuer = f"http://127.0.0.1:{closed_port()}"
    else:
        issuer = f"http://127.0.0.1:{idp_sock.getsockname()[1]}"
    config = config_for(url, issuer, var_dir, rate_limits, clients)
    async with contextlib.AsyncExitStack() as stack:
        if idp_sock is not None:
            idp_app = create_devidp_app(demo_settings(issuer=issuer, gateway_url=url))
            await stack.enter_async_context(run_app(idp_app, sock=idp_sock))
        gateway = await stack.enter_async_context(open_gateway(config))
        await stack.enter_async_context(run_app(gateway.asgi, sock=sock))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url))
        yield http


def token_form(client_id: str) -> dict[str, str]:
    """A token request that fails (unknown code) after passing the limiter."""
    return {
        "grant_type": "authorization_code",
        "code": "no-such-code",
        "redirect_uri": CALLBACK,
        "client_id": client_id,
        "code_verifier": "v" * 43,
    }


async def test_register_over_burst_429_retry_after(tmp_path: pathlib.Path) -> None:
    """After the burst, register gets 429, Retry-After and one warning."""
    async with running_gateway(tmp_path, SMALL_LIMITS) as http:
        with capture_logs() as logs:
            statuses = [
                (await http.post("/oauth2/register", json=REGISTRATION)).status_code
                for _ in range(3)
            ]
            limited = await http.post("/oauth2/register", json=REGISTRATION)
            again = await http.post("/oauth2/register", json=REGISTRATION)
    assert statuses == [201, 201, 201]
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "10"
    assert limited.headers["cache-control"] == "no-store"
    assert limited.json() == {
        "error": "temporarily_unavailable",
        "error_description": "too many requests from this address; retry after 10 s",
    }
    assert again.status_code == 429
    warnings = [entry for entry in logs if entry["event"] == "oauth.rate_limited"]
    assert len(warnings) == 1
    assert warnings[0]["group"] == "register"
    assert warnings[0]["by"] == "address"
    assert warnings[0]["log_level"] == "warning"
    assert "127.0.0.1" not in str(warnings[0])


async def test_token_limited_per_address(tmp_path: pathlib.Path) -> None:
    """One address is limited across client ids, by its forwarded address."""
    async with running_gateway(tmp_path, SMALL_LIMITS) as http:
        statuses = []
        for index in range(4):
            response = await http.post(
                "/oauth2/token",
                data=token_form(f"client-{index}"),
                headers={"x-forwarded-for": "203.0.113.7"},
            )
            statuses.append(response.status_code)
        elsewhere = await http.post(
            "/oauth2/token",
            data=token_form("client-9"),
            headers={"x-forwarded-for": "203.0.113.8"},
        )
    assert statuses == [401, 401, 401, 429]
    assert "from this address" in response.json()["error_description"]
    assert elsewhere.status_code == 401


async def test_authorize_over_burst_html_429(tmp_path: pathlib.Path) -> None:
    """authorize, consent and callback share a bucket and return an HTML 429."""
    async with running_gateway(tmp_path, SMALL_LIMITS) as http:
        first = await http.get("/oauth2/authorize", params={"client_id": "x"})
        second = await http.post("/oauth2/consent", data={"transaction": "x"})
        third = await http.get("/oauth2/callback", params={"state": "x"})
        limited = await http.get("/oauth2/authorize", params={"client_id": "x"})
    assert first.status_code != 429
    assert second.status_code != 429
    assert third.status_code != 429
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "10"
    assert limited.headers["content-type"].startswith("text/html")
    assert limited.headers["x-frame-options"] == "DENY"
    assert "Too many requests" in limited.text


async def test_discovery_never_limited(tmp_path: pathlib.Path) -> None:
    """Metadata and JWKS return 200 however often they are requested."""
    paths = [
        "/.well-known/oauth-authorization-server",
        "/.well-known/oauth-protected-resource/employees/mcp",
        "/oauth2/jwks",
    ]
    async with running_gateway(tmp_path, SMALL_LIMITS) as http:
        for _ in range(4):
            await http.post("/oauth2/register", json=REGISTRATION)
        statuses = [
            (await http.get(path)).status_code for _ in range(6) for path in paths
        ]
    assert statuses == [200] * 18


async def test_rate_limits_disabled_no_429(tmp_path: pathlib.Path) -> None:
    """With enabled: false, requests past the burst still succeed."""
    limits = {**SMALL_LIMITS, "enabled": False}
    async with running_gateway(tmp_path, limits) as http:
        statuses = [
            (await http.post("/oauth2/register", json=REGISTRATION)).status_code
            for _ in range(5)
        ]
    assert statuses == [201] * 5


async def test_invalid_trusted_proxy_config_error(tmp_path: pathlib.Path) -> None:
    """A trusted_proxies entry that is no address stops start-up with its path."""
    config = config_for(
        "http://127.0.0.1:8000",
        f"http://127.0.0.1:{closed_port()}",
        tmp_path,
        {"trusted_proxies": ["proxy.local"]},
    )
    with pytest.raises(ConfigError, match=r"oauth\.rate_limits\.trusted_proxies"):
        async with open_gateway(config):
            pass


async def sign_in(
    http: httpx.AsyncClient, client_id: str, *, address: str | None = None
) -> dict[str, Any]:
    """Sign alice in for ``client_id`` and redeem the code; return the tokens.

    ``address`` is sent as ``X-Forwarded-For`` with the token request.
    """
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        .rstrip(b"=")
        .decode()
    )
    resource = f"{http.base_url}".rstrip("/") + "/employees/mcp"
    page = await http.get(
        "/oauth2/authorize",
        params={
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": CALLBACK,
            "state": "s1",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": resource,
            "scope": "mcp",
        },
    )
    assert page.status_code == 200, page.text
    match = TRANSACTION.search(page.text)
    assert match is not None
    upstream = await http.post(
        "/oauth2/consent",
        data={"transaction": match.group(1), "decision": "approve"},
    )
    assert upstream.status_code == 302, upstream.text
    at_idp = await http.get(upstream.headers["location"])
    assert at_idp.status_code == 302, at_idp.text
    final = await http.get(at_idp.headers["location"])
    assert final.status_code == 302, final.text
    code = parse_qs(urlsplit(final.headers["location"]).query)["code"][0]
    issued = await http.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": CALLBACK,
            "client_id": client_id,
            "code_verifier": verifier,
            "resource": resource,
        },
        headers={"x-forwarded-for": address} if address else None,
    )
    assert issued.status_code == 200, issued.text
    body: dict[str, Any] = issued.json()
    return body


async def test_demo_sign_in_default_limits_unaffected(tmp_path: pathlib.Path) -> None:
    """A whole sign-in with the default limits and a refresh gets no 429."""
    async with running_gateway(tmp_path, {}, idp_sock=bind_socket()) as http:
        client = (await http.post("/oauth2/register", json=REGISTRATION)).json()
        issued = await sign_in(http, client["client_id"])
        refreshed = await http.post(
            "/oauth2/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": issued["refresh_token"],
                "client_id": client["client_id"],
            },
        )
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["access_token"]
