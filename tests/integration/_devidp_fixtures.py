"""Fixtures that run the dev IdP and the demo backends on loopback ports.

Every server is real: uvicorn on 127.0.0.1 with an ephemeral port, spoken to
over HTTP. The only stand-in is the movable clock, which lets tests reach
expiry without sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec
import pytest

from gateway.demo.backends import create_employees_app, create_partners_app
from gateway.demo.serve import RunningApp, bind_socket, run_app
from gateway.devidp import (
    DevBackendAS,
    DevClient,
    DevIdpSettings,
    DevRasClient,
    SigningKey,
    create_devidp_app,
    demo_settings,
)

__all__ = [
    "ASSERTION_KEY",
    "BASIC_CLIENT",
    "GATEWAY_CALLBACK",
    "JWT_BEARER",
    "OTHER_RAS_CLIENT",
    "PARTNERS_API_KEY",
    "POST_CLIENT",
    "POST_CLIENT_CALLBACK",
    "RAS_CLIENT",
    "TOKEN_EXCHANGE",
    "DevIdpHarness",
    "MovableClock",
    "anyio_backend",
    "assertion_key",
    "backend_keys",
    "build_settings",
    "decode_unverified",
    "devidp",
    "employees_backend",
    "employees_socket",
    "org_key",
    "partners_backend",
    "pkce_pair",
    "query_of",
]

GATEWAY_URL = "http://127.0.0.1:8000"
GATEWAY_CALLBACK = f"{GATEWAY_URL}/oauth2/callback"
BASIC_CLIENT = ("agent-proxy", "agent-proxy-dev-secret")
POST_CLIENT = ("cursor-app", "cursor-app-secret")
POST_CLIENT_CALLBACK = "http://127.0.0.1:7777/callback"
ASSERTION_KEY = "agent-key"
RAS_CLIENT = ("agent-proxy-at-employees", "employees-dev-secret")
OTHER_RAS_CLIENT = ("other-at-employees", "other-dev-secret")
PARTNERS_API_KEY = "partners-test-key"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ID_JAG_TYPE = "urn:ietf:params:oauth:token-type:id-jag"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"


class MovableClock:
    """Wall-clock time plus an offset that tests move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        """Move the clock by ``seconds``, which may be negative."""
        self.offset += seconds


def pkce_pair() -> tuple[str, str]:
    """Return a fresh (code_verifier, S256 code_challenge) pair."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return verifier, challenge


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the (header, claims) of a compact JWS without verifying it."""

    def part(segment: str) -> dict[str, Any]:
        padded = segment + "=" * (-len(segment) % 4)
        value: dict[str, Any] = msgspec.json.decode(base64.urlsafe_b64decode(padded))
        return value

    header, payload, _ = token.split(".")
    return part(header), part(payload)


def query_of(location: str) -> dict[str, str]:
    """Return the single-valued query parameters of a redirect location."""
    return {
        key: values[0] for key, values in parse_qs(urlsplit(location).query).items()
    }


def build_settings(
    issuer: str, employees_resource: str, assertion_jwks: dict[str, Any]
) -> DevIdpSettings:
    """Return the demo settings plus the extra clients and backend tests need."""
    base = demo_settings(
        issuer=issuer, gateway_url=GATEWAY_URL, employees_resource=employees_resource
    )
    employees = base.backends[0]
    employees = msgspec.structs.replace(
        employees,
        clients=[
            *employees.clients,
            DevRasClient(
                client_id=OTHER_RAS_CLIENT[0], client_secret=OTHER_RAS_CLIENT[1]
            ),
        ],
    )
    # Its issuer has the employees issuer as a prefix, and it accepts the same
    # client and resource, so only an exact aud comparison distinguishes them.
    employees_eu = DevBackendAS(
        name="employees-eu",
        resource=employees_resource,
        scopes=["employees:read"],
        clients=[DevRasClient(client_id=RAS_CLIENT[0], client_secret=RAS_CLIENT[1])],
        client_mapping={BASIC_CLIENT[0]: RAS_CLIENT[0]},
    )
    clients = [
        *base.clients,
        DevClient(
            client_id=POST_CLIENT[0],
            client_secret=POST_CLIENT[1],
            redirect_uris=[POST_CLIENT_CALLBACK],
            token_endpoint_auth_method="client_secret_post",
        ),
        DevClient(
            client_id=ASSERTION_KEY,
            redirect_uris=[POST_CLIENT_CALLBACK],
            token_endpoint_auth_method="private_key_jwt",
            jwks=assertion_jwks,
        ),
    ]
    return msgspec.structs.replace(
        base, clients=clients, backends=[employees, employees_eu]
    )


@dataclass
class DevIdpHarness:
    """A running dev IdP and an HTTP client pointed at it."""

    settings: DevIdpSettings
    issuer: str
    org_key: SigningKey
    clock: MovableClock
    http: httpx.AsyncClient

    @property
    def employees_issuer(self) -> str:
        return f"{self.issuer}/oauth2/employees"

    @property
    def employees_resource(self) -> str:
        return self.settings.backends[0].resource

    async def authorize(self, **overrides: str | None) -> httpx.Response:
        """Send an authorization request; ``None`` removes a parameter."""
        _, challenge = pkce_pair()
        params: dict[str, str | None] = {
            "response_type": "code",
            "client_id": BASIC_CLIENT[0],
            "redirect_uri": GATEWAY_CALLBACK,
            "scope": "openid profile email offline_access",
            "state": secrets.token_urlsafe(8),
            "nonce": secrets.token_urlsafe(8),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        params.update(overrides)
        query = {key: value for key, value in params.items() if value is not None}
        return await self.http.get("/oauth2/v1/authorize", params=query)

    async def code_for(
        self,
        *,
        login_hint: str = "alice",
        client_id: str = BASIC_CLIENT[0],
        redirect_uri: str = GATEWAY_CALLBACK,
        scope: str = "openid profile email offline_access",
        nonce: str = "nonce-1",
    ) -> tuple[str, str]:
        """Sign a user in and return (code, code_verifier)."""
        verifier, challenge = pkce_pair()
        response = await self.authorize(
            login_hint=login_hint,
            client_id=client_id,
            redirect_uri=redirect_uri,
            scope=scope,
            nonce=nonce,
            code_challenge=challenge,
        )
        assert response.status_code == 302, response.text
        return query_of(response.headers["location"])["code"], verifier

    async def token(
        self, data: dict[str, str], *, auth: tuple[str, str] | None = BASIC_CLIENT
    ) -> httpx.Response:
        """POST to the org token endpoint, with Basic auth when ``auth`` is set."""
        if auth is None:
            return await self.http.post("/oauth2/v1/token", data=data)
        return await self.http.post("/oauth2/v1/token", data=data, auth=auth)

    async def sign_in(
        self,
        login_hint: str = "alice",
        *,
        scope: str = "openid profile email offline_access",
    ) -> dict[str, Any]:
        """Run the code flow for the gateway client and return the token response."""
        code, verifier = await self.code_for(login_hint=login_hint, scope=scope)
        response = await self.token(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": GATEWAY_CALLBACK,
                "code_verifier": verifier,
            }
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def exchange(
        self,
        id_token: str,
        *,
        auth: tuple[str, str] | None = BASIC_CLIENT,
        **overrides: str | None,
    ) -> httpx.Response:
        """Request an ID-JAG for the employees backend; ``None`` removes a field."""
        data: dict[str, str | None] = {
            "grant_type": TOKEN_EXCHANGE,
            "requested_token_type": ID_JAG_TYPE,
            "subject_token": id_token,
            "subject_token_type": ID_TOKEN_TYPE,
            "audience": self.employees_issuer,
            "resource": self.employees_resource,
            "scope": "employees:read employees:write",
        }
        data.update(overrides)
        form = {key: value for key, value in data.items() if value is not None}
        return await self.token(form, auth=auth)

    async def id_jag(self, login_hint: str = "alice", **overrides: str | None) -> str:
        """Sign a user in and return a fresh ID-JAG for the employees backend."""
        tokens = await self.sign_in(login_hint)
        response = await self.exchange(
            tokens["id_token"], auth=BASIC_CLIENT, **overrides
        )
        assert response.status_code == 200, response.text
        assertion: str = response.json()["access_token"]
        return assertion

    async def redeem(
        self,
        assertion: str,
        *,
        backend: str = "employees",
        auth: tuple[str, str] = RAS_CLIENT,
        scope: str | None = None,
    ) -> httpx.Response:
        """Present an ID-JAG to a backend authorization server."""
        data = {"grant_type": JWT_BEARER, "assertion": assertion}
        if scope is not None:
            data["scope"] = scope
        return await self.http.post(f"/oauth2/{backend}/v1/token", data=data, auth=auth)

    async def backend_token(
        self, login_hint: str = "alice", **overrides: str | None
    ) -> str:
        """Return an employees access token obtained through the whole ID-JAG flow."""
        response = await self.redeem(await self.id_jag(login_hint, **overrides))
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run async tests on asyncio, which uvicorn needs."""
    return "asyncio"


@pytest.fixture(scope="session")
def org_key() -> SigningKey:
    """The org signing key, kept by the tests to forge tokens no IdP would issue."""
    return SigningKey.generate()


@pytest.fixture(scope="session")
def backend_keys() -> dict[str, SigningKey]:
    """Keys of the backend authorization servers, generated once per session."""
    return {"employees": SigningKey.generate(), "employees-eu": SigningKey.generate()}


@pytest.fixture(scope="session")
def assertion_key() -> SigningKey:
    """Private key of the ``private_key_jwt`` client."""
    return SigningKey.generate()


@pytest.fixture
def employees_socket() -> Iterator[socket.socket]:
    """A bound socket for the employees backend, so its resource URL is known early."""
    sock = bind_socket()
    yield sock
    sock.close()


@pytest.fixture
async def devidp(
    anyio_backend: str,
    org_key: SigningKey,
    backend_keys: dict[str, SigningKey],
    assertion_key: SigningKey,
    employees_socket: socket.socket,
) -> AsyncIterator[DevIdpHarness]:
    """A dev IdP on an ephemeral port, with the demo clients and test extras."""
    sock = bind_socket()
    issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
    employees_resource = f"http://127.0.0.1:{employees_socket.getsockname()[1]}/mcp"
    settings = build_settings(
        issuer, employees_resource, {"keys": [assertion_key.public_jwk()]}
    )
    clock = MovableClock()
    app = create_devidp_app(
        settings, org_key=org_key, backend_keys=backend_keys, clock=clock
    )
    async with (
        run_app(app, sock=sock),
        httpx.AsyncClient(base_url=issuer, follow_redirects=False) as http,
    ):
        yield DevIdpHarness(settings, issuer, org_key, clock, http)


@pytest.fixture
async def employees_backend(
    devidp: DevIdpHarness, employees_socket: socket.socket
) -> AsyncIterator[RunningApp]:
    """The employees MCP server trusting the dev IdP's employees server."""
    app = create_employees_app(
        resource=devidp.employees_resource,
        authorization_server=devidp.employees_issuer,
        jwks_url=f"{devidp.employees_issuer}/v1/keys",
    )
    async with run_app(app, sock=employees_socket) as running:
        yield running


@pytest.fixture
async def partners_backend(anyio_backend: str) -> AsyncIterator[RunningApp]:
    """The partners MCP server with a known API key."""
    async with run_app(create_partners_app(api_key=PARTNERS_API_KEY)) as running:
        yield running
