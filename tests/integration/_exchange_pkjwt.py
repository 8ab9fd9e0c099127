"""A dev IdP whose gateway clients authenticate with ``private_key_jwt``.

The dev IdP runs on 127.0.0.1 as in ``_devidp_fixtures``, with extra clients
registered by public key. ``agent-proxy-pkjwt`` at the org server maps to
``agent-proxy-pkjwt-at-employees`` at the employees authorization server.
``okta-ai-agent`` has the same id and key at both servers. A
recording ASGI wrapper keeps the form of every POST to a token endpoint, so
tests can compare what different clients send.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import msgspec
from _devidp_fixtures import (
    GATEWAY_CALLBACK,
    DevIdpHarness,
    MovableClock,
    build_settings,
    pkce_pair,
    query_of,
)
from _exchange_setup import Setup, employees_auth, open_setup
from joserfc.jwk import RSAKey

from gateway.config import IdJagAuth, UpstreamConfig
from gateway.demo.serve import bind_socket, run_app
from gateway.devidp import (
    DevClient,
    DevIdpSettings,
    DevRasClient,
    SigningKey,
    create_devidp_app,
)

PKJWT_CLIENT = "agent-proxy-pkjwt"
PKJWT_RAS_CLIENT = "agent-proxy-pkjwt-at-employees"
AI_AGENT_CLIENT = "okta-ai-agent"
"""A client with one id and one key at both servers, as an Okta AI agent has."""
ORG_TOKEN_PATH = "/oauth2/v1/token"
EMPLOYEES_TOKEN_PATH = "/oauth2/employees/v1/token"


def new_client_key() -> RSAKey:
    """Return an RSA 2048 private JWK with a ``kid``, as Okta registers them."""
    return RSAKey.generate_key(
        2048, parameters={"use": "sig", "alg": "RS256"}, auto_kid=True
    )


def private_jwk(key: RSAKey) -> dict[str, Any]:
    """Return the private JWK as a dict, with its ``kid``."""
    value: dict[str, Any] = key.as_dict(private=True)
    return value


def write_key(key: RSAKey, directory: pathlib.Path, name: str) -> str:
    """Write the private JWK to ``directory/name`` and return the path."""
    path = directory / name
    path.write_text(json.dumps(private_jwk(key)))
    return str(path)


class FormRecorder:
    """ASGI wrapper that keeps the decoded form of each POST to given paths."""

    def __init__(self, app: Any, paths: tuple[str, ...]) -> None:
        self.app = app
        self.paths = paths
        self.forms: list[tuple[str, dict[str, str]]] = []

    def at(self, path: str) -> list[dict[str, str]]:
        """Return the forms posted to ``path``, oldest first."""
        return [form for seen, form in self.forms if seen == path]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if path not in self.paths:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def recording_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body = b"".join(chunks).decode("utf-8")
                    self.forms.append((path, dict(parse_qsl(body))))
            return message

        await self.app(scope, recording_receive, send)


@dataclass
class PkjwtIdp:
    """A running dev IdP with the ``private_key_jwt`` clients and a recorder."""

    harness: DevIdpHarness
    recorder: FormRecorder
    org_client_key: RSAKey
    ras_client_key: RSAKey
    key_dir: pathlib.Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return self.harness.issuer

    def upstream_config(self, **overrides: Any) -> UpstreamConfig:
        """Return the gateway's upstream config using the org client key."""
        values: dict[str, Any] = {
            "issuer": self.issuer,
            "client_id": PKJWT_CLIENT,
            "token_endpoint_auth_method": "private_key_jwt",
            "private_key_file": write_key(
                self.org_client_key, self.key_dir, "org.json"
            ),
        }
        values.update(overrides)
        return UpstreamConfig(**values)

    def employees_auth(self, **overrides: Any) -> IdJagAuth:
        """Return the employees backend auth using the backend client key."""
        values: dict[str, Any] = {
            "client_id": PKJWT_RAS_CLIENT,
            "client_secret": "",
            "token_endpoint_auth_method": "private_key_jwt",
            "private_key_file": write_key(self.ras_client_key, self.key_dir, "as.json"),
        }
        values.update(overrides)
        return employees_auth(self.harness, **values)

    @contextlib.asynccontextmanager
    async def setup(self, **upstream: Any) -> AsyncIterator[Setup]:
        """Open the gateway's credential service with both keys configured."""
        async with open_setup(
            self.harness,
            auth=self.employees_auth(),
            upstream=self.upstream_config(**upstream),
        ) as value:
            yield value

    async def sign_in(self, setup: Setup, *, grant_id: str = "grant-1") -> Any:
        """Sign Alice in through the gateway's upstream client; return the principal."""
        return await setup.keep(await self.id_token(setup), grant_id=grant_id)

    async def id_token(self, setup: Setup) -> str:
        """Sign Alice in through the gateway's upstream client; return the ID token."""
        verifier, challenge = pkce_pair()
        nonce = secrets.token_urlsafe(8)
        response = await self.harness.authorize(
            login_hint="alice",
            client_id=setup.upstream.config.client_id,
            nonce=nonce,
            code_challenge=challenge,
        )
        assert response.status_code == 302, response.text
        code = query_of(response.headers["location"])["code"]
        _, tokens = await setup.upstream.exchange_code(code, verifier, nonce=nonce)
        return tokens.id_token


def pkjwt_settings(
    issuer: str, resource: str, org_public: dict[str, Any], ras_public: dict[str, Any]
) -> DevIdpSettings:
    """Return the test settings plus the two ``private_key_jwt`` clients."""
    base = build_settings(issuer, resource, {"keys": [org_public]})
    employees = base.backends[0]
    employees = msgspec.structs.replace(
        employees,
        clients=[
            *employees.clients,
            DevRasClient(
                client_id=PKJWT_RAS_CLIENT,
                token_endpoint_auth_method="private_key_jwt",
                jwks={"keys": [ras_public]},
            ),
            DevRasClient(
                client_id=AI_AGENT_CLIENT,
                token_endpoint_auth_method="private_key_jwt",
                jwks={"keys": [org_public]},
            ),
        ],
        client_mapping={
            **employees.client_mapping,
            PKJWT_CLIENT: PKJWT_RAS_CLIENT,
            AI_AGENT_CLIENT: AI_AGENT_CLIENT,
        },
    )
    clients = [
        DevClient(
            client_id=client_id,
            redirect_uris=[GATEWAY_CALLBACK],
            token_endpoint_auth_method="private_key_jwt",
            jwks={"keys": [org_public]},
        )
        for client_id in (PKJWT_CLIENT, AI_AGENT_CLIENT)
    ]
    return msgspec.structs.replace(
        base,
        clients=[*base.clients, *clients],
        backends=[employees, *base.backends[1:]],
    )


@contextlib.asynccontextmanager
async def running_pkjwt_idp(key_dir: pathlib.Path) -> AsyncIterator[PkjwtIdp]:
    """Run the dev IdP with the ``private_key_jwt`` clients on a loopback port."""
    org_client_key = new_client_key()
    ras_client_key = new_client_key()
    sock = bind_socket()
    resource_sock = bind_socket()
    try:
        issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
        resource = f"http://127.0.0.1:{resource_sock.getsockname()[1]}/mcp"
        settings = pkjwt_settings(
            issuer,
            resource,
            org_client_key.as_dict(private=False),
            ras_client_key.as_dict(private=False),
        )
        clock = MovableClock()
        org_key = SigningKey.generate()
        app = create_devidp_app(settings, org_key=org_key, clock=clock)
        recorder = FormRecorder(app, (ORG_TOKEN_PATH, EMPLOYEES_TOKEN_PATH))
        async with (
            run_app(recorder, sock=sock),
            httpx.AsyncClient(base_url=issuer, follow_redirects=False) as http,
        ):
            harness = DevIdpHarness(settings, issuer, org_key, clock, http)
            yield PkjwtIdp(harness, recorder, org_client_key, ras_client_key, key_dir)
    finally:
        resource_sock.close()
