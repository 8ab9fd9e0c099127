"""The gateway's OIDC client against the real dev IdP and a scripted IdP.

The dev IdP covers the normal protocol: sign-in, refresh rotation, client
authentication and errors it really produces. Faults that no correct IdP
produces (ID tokens with a wrong audience, an unknown key, an HMAC algorithm,
a JWKS endpoint failing mid-rotation) come from a scripted IdP. It is a
small Litestar app on loopback, and each test sets its discovery, JWKS and
token responses. Both run with uvicorn on ephemeral ports.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import msgspec
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from litestar import Litestar, Request, Response, get, post

from gateway.config import UpstreamConfig
from gateway.demo.serve import bind_socket, run_app
from gateway.devidp import DevClient, create_devidp_app, demo_settings
from gateway.errors import ExchangeError, UpstreamError
from gateway.oauth import pkce
from gateway.oauth.grants import Grant, GrantStore
from gateway.oauth.jwks import RemoteJwks
from gateway.oauth.upstream import UpstreamClient
from gateway.store import MemoryStore

pytestmark = pytest.mark.anyio

CALLBACK = "http://127.0.0.1:8000/oauth2/callback"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The real dev IdP ---------------------------------------------------------------


@dataclass
class DevIdp:
    issuer: str
    http: httpx.AsyncClient

    def client(self, **overrides: Any) -> UpstreamClient:
        values: dict[str, Any] = {
            "issuer": self.issuer,
            "client_id": "agent-proxy",
            "client_secret": "agent-proxy-dev-secret",
        }
        values.update(overrides)
        return UpstreamClient(
            UpstreamConfig(**values), redirect_uri=CALLBACK, http=self.http
        )

    async def code(
        self, upstream: UpstreamClient, *, nonce: str, login_hint: str | None = None
    ) -> tuple[str, str]:
        """Sign a user in at the IdP; return the code and the PKCE verifier."""
        verifier = pkce.new_code_verifier()
        url = await upstream.authorization_url(
            state="s",
            nonce=nonce,
            code_challenge=pkce.s256_challenge(verifier),
            login_hint=login_hint,
        )
        response = await self.http.get(url)
        assert response.status_code == 302, response.text
        params = parse_qs(urlsplit(response.headers["location"]).query)
        return params["code"][0], verifier


@pytest.fixture(scope="module")
async def devidp() -> AsyncIterator[DevIdp]:
    sock = bind_socket()
    issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
    base = demo_settings(issuer=issuer)
    post_client = DevClient(
        client_id="gateway-post",
        client_secret="post-secret",
        redirect_uris=[CALLBACK],
        token_endpoint_auth_method="client_secret_post",
    )
    settings = msgspec.structs.replace(base, clients=[*base.clients, post_client])
    async with (
        run_app(create_devidp_app(settings), sock=sock),
        httpx.AsyncClient() as http,
    ):
        yield DevIdp(issuer, http)


async def test_upstream_sign_in_and_refresh_rotation(devidp: DevIdp) -> None:
    """Code exchange verifies the ID token; refresh rotates; the old token fails."""
    upstream = devidp.client()
    code, verifier = await devidp.code(upstream, nonce="n1", login_hint="bob")
    claims, tokens = await upstream.exchange_code(code, verifier, nonce="n1")
    assert claims["sub"] == "00u_bob"
    assert claims["iss"] == devidp.issuer
    assert tokens.id_token_expires_at == claims["exp"]
    assert tokens.refresh_token
    refreshed = await upstream.refresh(tokens.refresh_token)
    assert refreshed.id_token != tokens.id_token
    assert refreshed.refresh_token not in (None, tokens.refresh_token)
    with pytest.raises(ExchangeError) as info:
        await upstream.refresh(tokens.refresh_token)
    assert info.value.oauth_error == "invalid_grant"
    assert info.value.step == "upstream_refresh"


async def test_upstream_authorization_url_parameters(devidp: DevIdp) -> None:
    """The authorization URL carries code flow, S256 PKCE, scopes and login_hint."""
    url = await devidp.client().authorization_url(
        state="st", nonce="no", code_challenge="c" * 43, login_hint="bob@example.com"
    )
    assert url.startswith(f"{devidp.issuer}/oauth2/v1/authorize?")
    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert params["response_type"] == "code"
    assert params["client_id"] == "agent-proxy"
    assert params["redirect_uri"] == CALLBACK
    assert params["scope"] == "openid profile email offline_access"
    assert params["code_challenge_method"] == "S256"
    assert params["login_hint"] == "bob@example.com"
    assert params["state"] == "st"
    assert params["nonce"] == "no"


async def test_upstream_client_secret_post_accepted(devidp: DevIdp) -> None:
    """client_secret_post sends the secret in the form, as the IdP requires."""
    upstream = devidp.client(
        client_id="gateway-post",
        client_secret="post-secret",
        token_endpoint_auth_method="client_secret_post",
    )
    form, auth = upstream.client_auth({"grant_type": "x"})
    assert form == {
        "grant_type": "x",
        "client_id": "gateway-post",
        "client_secret": "post-secret",
    }
    assert auth is None
    code, verifier = await devidp.code(upstream, nonce="n")
    claims, _ = await upstream.exchange_code(code, verifier, nonce="n")
    assert claims["aud"] == "gateway-post"


async def test_upstream_wrong_secret_exchange_error(devidp: DevIdp) -> None:
    """A rejected client secret surfaces as an ExchangeError with the IdP's code."""
    upstream = devidp.client(client_secret="wrong")
    code, verifier = await devidp.code(upstream, nonce="n")
    with pytest.raises(ExchangeError) as info:
        await upstream.exchange_code(code, verifier, nonce="n")
    assert info.value.oauth_error == "invalid_client"


async def test_upstream_nonce_mismatch_rejected(devidp: DevIdp) -> None:
    """An ID token for another sign-in request (other nonce) is rejected."""
    upstream = devidp.client()
    code, verifier = await devidp.code(upstream, nonce="real")
    with pytest.raises(UpstreamError) as info:
        await upstream.exchange_code(code, verifier, nonce="expected")
    assert info.value.reason == "invalid_id_token"
    assert "nonce" in str(info.value)


async def test_upstream_issuer_mismatch_misconfigured(devidp: DevIdp) -> None:
    """Discovery whose issuer differs from the configured one is refused."""
    upstream = devidp.client(issuer=devidp.issuer + "/")
    with pytest.raises(UpstreamError) as info:
        await upstream.metadata()
    assert info.value.reason == "idp_misconfigured"


async def test_upstream_unreachable_idp_unavailable() -> None:
    """A closed IdP port is idp_unavailable for discovery and refresh."""
    async with httpx.AsyncClient() as http:
        upstream = UpstreamClient(
            UpstreamConfig(issuer=f"http://127.0.0.1:{closed_port()}", client_id="x"),
            redirect_uri=CALLBACK,
            http=http,
        )
        with pytest.raises(UpstreamError) as info:
            await upstream.refresh("r")
    assert info.value.reason == "idp_unavailable"
    assert not isinstance(info.value, ExchangeError)


async def test_grant_store_refreshes_expiring_id_token(devidp: DevIdp) -> None:
    """GrantStore uses the upstream client to replace an ID token near expiry."""
    upstream = devidp.client()
    code, verifier = await devidp.code(upstream, nonce="n")
    claims, tokens = await upstream.exchange_code(code, verifier, nonce="n")
    grants = GrantStore(MemoryStore(), upstream)
    now = int(time.time())
    await grants.save(
        Grant(
            grant_id="g",
            user_iss=devidp.issuer,
            user_sub=claims["sub"],
            client_id="c",
            agent_id="cursor",
            resource="http://127.0.0.1:8000/employees/mcp",
            upstream_id_token=tokens.id_token,
            id_token_expires_at=now + 10,
            upstream_refresh_token=tokens.refresh_token,
            created_at=now,
            expires_at=now + 3600,
        )
    )
    fresh = await grants.current_id_token("g")
    assert fresh != tokens.id_token
    saved = await grants.get("g")
    assert saved is not None
    assert saved.upstream_refresh_token != tokens.refresh_token


# The scripted IdP ---------------------------------------------------------------


@dataclass
class ScriptedIdp:
    """An IdP whose JWKS and token responses each test controls."""

    issuer: str = ""
    keys: list[ECKey | RSAKey] = field(default_factory=list)
    jwks_status: int = 200
    jwks_fetches: int = 0
    token_status: int = 200
    token_body: dict[str, Any] = field(default_factory=dict)
    token_headers: dict[str, str] = field(default_factory=dict)
    raw_body: bytes | None = None
    """When set, the JWKS and token endpoints send these bytes as their JSON."""

    def sign(self, key: ECKey | RSAKey, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": "gw",
            "sub": "00u_carol",
            "iat": now,
            "exp": now + 300,
            "nonce": "n",
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        alg = "RS256" if isinstance(key, RSAKey) else "ES256"
        return jwt.encode({"alg": alg, "kid": key.kid}, claims, key, algorithms=[alg])

    def app(self) -> Litestar:
        @get("/.well-known/openid-configuration", sync_to_thread=False)
        def discovery() -> dict[str, Any]:
            return {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/keys",
            }

        @get("/keys", sync_to_thread=False)
        def keys() -> Response[Any]:
            self.jwks_fetches += 1
            if self.raw_body is not None:
                return Response(self.raw_body, media_type="application/json")
            if self.jwks_status != 200:
                return Response({"error": "unavailable"}, status_code=self.jwks_status)
            return Response({"keys": [k.as_dict(private=False) for k in self.keys]})

        @post("/token", sync_to_thread=False)
        def token(request: Request[Any, Any, Any]) -> Response[Any]:
            if self.raw_body is not None:
                return Response(self.raw_body, media_type="application/json")
            return Response(
                self.token_body,
                status_code=self.token_status,
                headers=self.token_headers,
            )

        return Litestar([discovery, keys, token], openapi_config=None)


def new_key(alg: str = "ES256") -> ECKey | RSAKey:
    if alg == "RS256":
        return RSAKey.generate_key(2048, parameters={"alg": alg}, auto_kid=True)
    return ECKey.generate_key("P-256", parameters={"alg": alg}, auto_kid=True)


@pytest.fixture(scope="module")
async def scripted_server() -> AsyncIterator[ScriptedIdp]:
    idp = ScriptedIdp()
    sock = bind_socket()
    idp.issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with run_app(idp.app(), sock=sock):
        yield idp


@pytest.fixture
async def scripted(scripted_server: ScriptedIdp) -> AsyncIterator[ScriptedIdp]:
    """The scripted IdP reset to one ES256 key and successful responses."""
    scripted_server.keys = [new_key()]
    scripted_server.jwks_status = 200
    scripted_server.jwks_fetches = 0
    scripted_server.token_status = 200
    scripted_server.token_body = {}
    scripted_server.token_headers = {}
    scripted_server.raw_body = None
    yield scripted_server


@pytest.fixture
async def upstream(scripted: ScriptedIdp) -> AsyncIterator[UpstreamClient]:
    async with httpx.AsyncClient() as http:
        yield UpstreamClient(
            UpstreamConfig(issuer=scripted.issuer, client_id="gw", client_secret="s"),
            redirect_uri=CALLBACK,
            http=http,
        )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_id_token_rs256_and_es256_accepted(
    scripted: ScriptedIdp, upstream: UpstreamClient
) -> None:
    """Both allowed algorithms verify."""
    rsa = new_key("RS256")
    scripted.keys.append(rsa)
    es_claims = await upstream.verify_id_token(
        scripted.sign(scripted.keys[0]), nonce="n"
    )
    rs_claims = await upstream.verify_id_token(scripted.sign(rsa), nonce="n")
    assert es_claims["sub"] == rs_claims["sub"] == "00u_carol"


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"aud": "other-client"}, "aud"),
        ({"aud": ["gw", "other"]}, "azp"),
        ({"iss": "https://elsewhere.example"}, "iss"),
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"exp": None}, "exp"),
        ({"iat": int(time.time()) + 600}, "iat"),
        ({"sub": None}, "sub"),
        ({"nonce": "other"}, "nonce"),
    ],
)
async def test_id_token_bad_claim_rejected(
    scripted: ScriptedIdp,
    upstream: UpstreamClient,
    overrides: dict[str, Any],
    words: str,
) -> None:
    """Each ID token claim check rejects a token that fails it."""
    token = scripted.sign(scripted.keys[0], **overrides)
    with pytest.raises(UpstreamError) as info:
        await upstream.verify_id_token(token, nonce="n")
    assert info.value.reason == "invalid_id_token"
    assert words in str(info.value)


async def test_id_token_multi_audience_with_azp_accepted(
    scripted: ScriptedIdp, upstream: UpstreamClient
) -> None:
    """Several audiences are accepted when azp names the gateway's client."""
    token = scripted.sign(scripted.keys[0], aud=["gw", "other"], azp="gw")
    assert (await upstream.verify_id_token(token, nonce="n"))["azp"] == "gw"


async def test_id_token_hmac_with_public_key_rejected(
    scripted: ScriptedIdp, upstream: UpstreamClient
) -> None:
    """An HS256 token keyed with the IdP's public JWK is rejected."""
    key = scripted.keys[0]
    header = b64(json.dumps({"alg": "HS256", "kid": key.kid}).encode())
    payload = b64(
        json.dumps({"iss": scripted.issuer, "aud": "gw", "sub": "x"}).encode()
    )
    secret = json.dumps(key.as_dict(private=False)).encode()
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(UpstreamError) as info:
        await upstream.verify_id_token(f"{header}.{payload}.{b64(mac)}", nonce=None)
    assert "algorithm" in str(info.value)


async def test_id_token_key_rotation_refetched_once(
    scripted: ScriptedIdp, upstream: UpstreamClient
) -> None:
    """A token from a newly published key verifies after one JWKS re-fetch."""
    await upstream.verify_id_token(scripted.sign(scripted.keys[0]), nonce="n")
    assert scripted.jwks_fetches == 1
    rotated = new_key()
    scripted.keys.append(rotated)
    claims = await upstream.verify_id_token(scripted.sign(rotated), nonce="n")
    assert claims["sub"] == "00u_carol"
    assert scripted.jwks_fetches == 2


async def test_id_token_unknown_kid_burst_rate_limited(
    scripted: ScriptedIdp, upstream: UpstreamClient
) -> None:
    """A burst of unknown kids causes at most one extra JWKS fetch."""
    await upstream.verify_id_token(scripted.sign(scripted.keys[0]), nonce="n")
    stranger = new_key()
    for _ in range(20):
        with pytest.raises(UpstreamError):
            await upstream.verify_id_token(scripted.sign(stranger), nonce="n")
    assert scripted.jwks_fetches <= 2


async def test_id_token_concurrent_unknown_kid_single_fetch(
    scripted: ScriptedIdp, upstream: UpstreamClient
) -> None:
    """Concurrent verifications after a rotation share one JWKS re-fetch."""
    await upstream.verify_id_token(scripted.sign(scripted.keys[0]), nonce="n")
    rotated = new_key()
    scripted.keys.append(rotated)
    token = scripted.sign(rotated)
    results: list[str] = []

    async def verify() -> None:
        claims = await upstream.verify_id_token(token, nonce="n")
        results.append(claims["sub"])

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(verify)
    assert results == ["00u_carol"] * 10
    assert scripted.jwks_fetches == 2


async def test_jwks_failed_refresh_keeps_last_good(scripted: ScriptedIdp) -> None:
    """When the JWKS endpoint fails, the cached keys keep working."""
    key = scripted.keys[0]
    async with httpx.AsyncClient() as http:
        jwks = RemoteJwks(
            http, f"{scripted.issuer}/keys", ttl=0.0, min_refetch_interval=0.0
        )
        assert await jwks.key_for(key.kid, "ES256") is not None
        scripted.jwks_status = 503
        assert await jwks.key_for(key.kid, "ES256") is not None
    assert scripted.jwks_fetches == 2


async def test_jwks_never_loaded_unavailable(scripted: ScriptedIdp) -> None:
    """A JWKS that was never loaded and cannot be fetched is idp_unavailable."""
    scripted.jwks_status = 503
    async with httpx.AsyncClient() as http:
        jwks = RemoteJwks(http, f"{scripted.issuer}/keys")
        with pytest.raises(UpstreamError) as info:
            await jwks.key_for("k", "ES256")
    assert info.value.reason == "idp_unavailable"


async def test_refresh_server_error_idp_unavailable(
    scripted: ScriptedIdp, upstream: UpstreamClient
) -> None:
    """A 5xx from the token endpoint is idp_unavailable with Retry-After."""
    scripted.token_status = 503
    scripted.token_headers = {"retry-after": "7"}
    with pytest.raises(UpstreamError) as info:
        await upstream.refresh("r")
    assert info.value.reason == "idp_unavailable"
    assert info.value.retry_after == 7
    assert not isinstance(info.value, ExchangeError)


async def test_refresh_oauth_error_exchange_error(
    scripted: ScriptedIdp, upstream: UpstreamClient
) -> None:
    """An OAuth error response is an ExchangeError carrying the IdP's code."""
    scripted.token_status = 400
    scripted.token_body = {"error": "invalid_grant", "error_description": "expired"}
    with pytest.raises(ExchangeError) as info:
        await upstream.refresh("r")
    assert info.value.oauth_error == "invalid_grant"
    assert info.value.step == "upstream_refresh"


async def test_refresh_without_id_token_exchange_error(
    scripted: ScriptedIdp, upstream: UpstreamClient
) -> None:
    """A refresh response without an ID token is unusable, so sign-in is needed."""
    scripted.token_body = {"access_token": "a", "refresh_token": "r2"}
    with pytest.raises(ExchangeError) as info:
        await upstream.refresh("r")
    assert info.value.oauth_error == "invalid_response"


async def test_refresh_returns_verified_tokens(
    scripted: ScriptedIdp, upstream: UpstreamClient
) -> None:
    """A good refresh response yields the new ID token, expiry and refresh token."""
    id_token = scripted.sign(scripted.keys[0], nonce=None)
    scripted.token_body = {"id_token": id_token, "refresh_token": "r2"}
    tokens = await upstream.refresh("r")
    assert tokens.id_token == id_token
    assert tokens.refresh_token == "r2"
    assert tokens.id_token_expires_at > time.time()


async def test_refresh_deeply_nested_response_exchange_error(
    scripted: ScriptedIdp, upstream: UpstreamClient
) -> None:
    """A token response nested past the JSON parser's limit is an invalid response."""
    scripted.raw_body = b"[" * 100_000
    with pytest.raises(ExchangeError) as info:
        await upstream.refresh("r")
    assert info.value.oauth_error == "invalid_response"


async def test_jwks_deeply_nested_document_unavailable(scripted: ScriptedIdp) -> None:
    """A JWK Set nested past the JSON parser's limit is idp_unavailable."""
    scripted.raw_body = b"[" * 100_000
    async with httpx.AsyncClient() as http:
        jwks = RemoteJwks(http, f"{scripted.issuer}/keys")
        with pytest.raises(UpstreamError) as info:
            await jwks.key_for("k", "ES256")
    assert info.value.reason == "idp_unavailable"
