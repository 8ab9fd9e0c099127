"""Upstream ID token checks at the edges: leeway, algorithms and ``typ``.

The dev IdP runs on loopback with an org key the test holds, so the tests
can hand-build ID tokens that only a broken or hostile IdP would issue. The
gateway's upstream client fetches the dev IdP's discovery document and JWKS
over HTTP as in production. Its clock is fixed per test, so a token can
sit exactly one second inside or outside the leeway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest

from gateway.config import UpstreamConfig
from gateway.demo.serve import bind_socket, run_app
from gateway.devidp import SigningKey, create_devidp_app, demo_settings
from gateway.errors import UpstreamError
from gateway.oauth.upstream import UpstreamClient

pytestmark = pytest.mark.anyio

CLIENT_ID = "agent-proxy"
NOW = 1_900_000_000
"""The fixed time of the gateway's clock in these tests."""


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Idp:
    issuer: str
    key: SigningKey
    http: httpx.AsyncClient

    def client(self, *, leeway: int = 30, now: float = NOW) -> UpstreamClient:
        config = msgspec.convert(
            {"issuer": self.issuer, "client_id": CLIENT_ID, "leeway": leeway},
            UpstreamConfig,
        )
        return UpstreamClient(
            config,
            redirect_uri="http://127.0.0.1:8000/oauth2/callback",
            http=self.http,
            clock=lambda: now,
        )

    def claims(self, **overrides: Any) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "sub": "00u_alice",
            "iat": NOW - 60,
            "exp": NOW + 300,
        }
        claims.update(overrides)
        return claims

    def id_token(self, *, typ: str = "JWT", **overrides: Any) -> str:
        return self.key.sign(self.claims(**overrides), typ=typ)


@pytest.fixture(scope="module")
async def idp() -> AsyncIterator[Idp]:
    sock = bind_socket()
    issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
    key = SigningKey.generate()
    app = create_devidp_app(demo_settings(issuer=issuer), org_key=key)
    async with run_app(app, sock=sock), httpx.AsyncClient() as http:
        yield Idp(issuer, key, http)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_part(value: dict[str, Any]) -> str:
    return b64(json.dumps(value).encode())


@pytest.mark.parametrize("leeway", [0, 30, 300])
@pytest.mark.parametrize(
    ("claim", "offset"),
    [("exp", -1), ("nbf", 1), ("iat", 1)],
    ids=["expired", "nbf-future", "iat-future"],
)
async def test_id_token_leeway_edge_enforced(
    idp: Idp, leeway: int, claim: str, offset: int
) -> None:
    """One second inside the configured leeway passes; one second outside fails."""
    upstream = idp.client(leeway=leeway)
    # offset points the claim past the clock: expired for exp, future for the rest.
    inside = NOW + offset * (leeway - 1)
    outside = NOW + offset * (leeway + 1)
    accepted = await upstream.verify_id_token(
        idp.id_token(**{claim: inside}), nonce=None
    )
    assert accepted[claim] == inside
    with pytest.raises(UpstreamError) as info:
        await upstream.verify_id_token(idp.id_token(**{claim: outside}), nonce=None)
    assert info.value.reason == "invalid_id_token"


async def test_id_token_leeway_defaults_to_30_seconds(idp: Idp) -> None:
    """Without a configured leeway, 29 seconds of skew pass and 31 do not."""
    config = UpstreamConfig(issuer=idp.issuer, client_id=CLIENT_ID)
    assert config.leeway == 30
    upstream = UpstreamClient(
        config, redirect_uri="http://127.0.0.1/cb", http=idp.http, clock=lambda: NOW
    )
    await upstream.verify_id_token(idp.id_token(exp=NOW - 29), nonce=None)
    with pytest.raises(UpstreamError):
        await upstream.verify_id_token(idp.id_token(exp=NOW - 31), nonce=None)


@pytest.mark.parametrize("leeway", [-1, 301])
def test_upstream_leeway_out_of_bounds_rejected(leeway: int) -> None:
    """The ID token leeway is bounded to 0..300 seconds."""
    with pytest.raises(msgspec.ValidationError, match="leeway"):
        msgspec.convert(
            {"issuer": "https://idp.example", "client_id": "c", "leeway": leeway},
            UpstreamConfig,
        )


async def test_id_token_alg_none_rejected(idp: Idp) -> None:
    """An unsigned ID token (``alg: none``) naming the IdP's kid is rejected."""
    header = {"alg": "none", "kid": idp.key.kid}
    token = f"{encode_part(header)}.{encode_part(idp.claims())}."
    with pytest.raises(UpstreamError) as info:
        await idp.client().verify_id_token(token, nonce=None)
    assert info.value.reason == "invalid_id_token"
    assert "algorithm" in str(info.value)


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_id_token_hmac_public_key_rejected(idp: Idp, alg: str) -> None:
    """An HMAC token keyed with the IdP's published JWK or PEM is rejected."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384}.get(alg, hashlib.sha512)
    async with httpx.AsyncClient() as client:
        published = (await client.get(f"{idp.issuer}/oauth2/v1/keys")).json()["keys"]
    signing_input = (
        f"{encode_part({'alg': alg, 'kid': idp.key.kid})}.{encode_part(idp.claims())}"
    )
    for secret in (json.dumps(published[0]).encode(), published[0]["n"].encode()):
        mac = hmac.new(secret, signing_input.encode(), digest).digest()
        with pytest.raises(UpstreamError) as info:
            await idp.client().verify_id_token(
                f"{signing_input}.{b64(mac)}", nonce=None
            )
        assert "algorithm" in str(info.value)


@pytest.mark.parametrize(
    "typ", ["at+jwt", "application/at+jwt", "oauth-id-jag+jwt", "AT+JWT"]
)
async def test_id_token_other_token_typ_rejected(idp: Idp, typ: str) -> None:
    """A JWT typed as another kind of token is not taken as an ID token."""
    with pytest.raises(UpstreamError) as info:
        await idp.client().verify_id_token(idp.id_token(typ=typ), nonce=None)
    assert "typ" in str(info.value)


@pytest.mark.parametrize("typ", ["JWT", "jwt", "id_token+jwt"])
async def test_id_token_plain_typ_accepted(idp: Idp, typ: str) -> None:
    """ID tokens need no particular ``typ`` (OpenID Connect Core)."""
    claims = await idp.client().verify_id_token(idp.id_token(typ=typ), nonce=None)
    assert claims["sub"] == "00u_alice"
