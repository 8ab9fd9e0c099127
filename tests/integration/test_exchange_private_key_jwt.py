"""``private_key_jwt`` client authentication, gateway and dev IdP, over loopback HTTP.

The gateway's upstream client signs in and exchanges with a client assertion
at the org server, and redeems the ID-JAG with another assertion at the
employees authorization server. The dev IdP verifies both against the public
keys registered for each client.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from _devidp_fixtures import JWT_BEARER, decode_unverified
from _exchange_pkjwt import (
    EMPLOYEES_TOKEN_PATH,
    ORG_TOKEN_PATH,
    PKJWT_CLIENT,
    PKJWT_RAS_CLIENT,
    PkjwtIdp,
    running_pkjwt_idp,
)
from _exchange_setup import CURSOR
from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.config import GatewayConfig, IdJagAuth
from gateway.errors import ExchangeError, UpstreamError
from gateway.exchange.client_assertion import CLIENT_ASSERTION_TYPE

pytestmark = pytest.mark.anyio


@pytest.fixture
async def idp(anyio_backend: str, tmp_path: pathlib.Path) -> AsyncIterator[PkjwtIdp]:
    async with running_pkjwt_idp(tmp_path) as value:
        yield value


def _assertion(
    key: RSAKey, client_id: str, aud: str, *, iat: int, lifetime: int = 60, jti: str
) -> str:
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "iat": iat,
        "exp": iat + lifetime,
        "jti": jti,
    }
    return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)


async def test_private_key_jwt_gateway_exchange_both_servers_accept(
    idp: PkjwtIdp,
) -> None:
    """Sign-in, token exchange and JWT-bearer grant all authenticate by assertion."""
    async with idp.setup() as setup:
        principal = await idp.sign_in(setup)
        obtained = await setup.service.obtain(
            backend="employees", principal=principal, agent=CURSOR
        )

    token = obtained.credentials.headers["authorization"].removeprefix("Bearer ")
    _, claims = decode_unverified(token)
    assert claims["iss"] == idp.harness.employees_issuer
    assert claims["client_id"] == PKJWT_RAS_CLIENT
    org_forms = idp.recorder.at(ORG_TOKEN_PATH)
    as_forms = idp.recorder.at(EMPLOYEES_TOKEN_PATH)
    assert [form["grant_type"] for form in org_forms] == [
        "authorization_code",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    ]
    assert [form["grant_type"] for form in as_forms] == [JWT_BEARER]
    for form, client_id, endpoint in [
        (org_forms[0], PKJWT_CLIENT, f"{idp.issuer}{ORG_TOKEN_PATH}"),
        (org_forms[1], PKJWT_CLIENT, f"{idp.issuer}{ORG_TOKEN_PATH}"),
        (as_forms[0], PKJWT_RAS_CLIENT, f"{idp.issuer}{EMPLOYEES_TOKEN_PATH}"),
    ]:
        assert "client_secret" not in form
        assert form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
        header, assertion = decode_unverified(form["client_assertion"])
        assert header["kid"]
        assert assertion["iss"] == assertion["sub"] == client_id
        assert assertion["aud"] == endpoint
        assert assertion["exp"] - assertion["iat"] == 60
        assert abs(assertion["iat"] - time.time()) < 30
    jtis = {decode_unverified(form["client_assertion"])[1]["jti"] for form in org_forms}
    assert len(jtis) == 2


async def test_private_key_jwt_unknown_key_exchange_invalid_client(
    idp: PkjwtIdp, tmp_path: pathlib.Path
) -> None:
    """An assertion signed with a key the backend server does not know is rejected."""
    other = RSAKey.generate_key(2048, auto_kid=True)
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other.as_dict(private=True)))
    auth = idp.employees_auth(private_key_file=str(path))
    async with idp.setup() as setup:
        principal = await idp.sign_in(setup)
        setup.service.config = _with_auth(setup.config, auth)
        with pytest.raises(ExchangeError) as caught:
            await setup.service.obtain(
                backend="employees", principal=principal, agent=CURSOR
            )

    assert caught.value.oauth_error == "invalid_client"
    assert caught.value.step == "jwt_bearer"


async def test_private_key_jwt_missing_key_file_clear_error(
    idp: PkjwtIdp, tmp_path: pathlib.Path
) -> None:
    """A missing key file fails the exchange with a reason, never a crash."""
    auth = idp.employees_auth(private_key_file=str(tmp_path / "absent.json"))
    async with idp.setup() as setup:
        principal = await idp.sign_in(setup)
        setup.service.config = _with_auth(setup.config, auth)
        with pytest.raises(ExchangeError) as caught:
            await setup.service.obtain(
                backend="employees", principal=principal, agent=CURSOR
            )

    assert caught.value.reason == "client_key_unavailable"
    assert "absent.json" in str(caught.value)


@pytest.mark.parametrize("server", ["org", "employees"])
@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("wrong_aud", "aud"),
        ("expired", "expired"),
        ("replayed", "already used"),
        ("foreign_key", "invalid"),
    ],
)
async def test_devidp_private_key_jwt_bad_assertion_invalid_client(
    idp: PkjwtIdp, server: str, case: str, fragment: str
) -> None:
    """Both dev IdP servers reject a wrong aud, an expired and a replayed assertion."""
    harness = idp.harness
    if server == "org":
        path, client_id, key = ORG_TOKEN_PATH, PKJWT_CLIENT, idp.org_client_key
        tokens = await harness.sign_in("alice")
        form: dict[str, str] = {"grant_type": "refresh_token"}
        form["refresh_token"] = tokens["refresh_token"]
        # The refresh token belongs to another client: a valid assertion is
        # then rejected with invalid_grant, after client authentication passed.
    else:
        path, client_id, key = (
            EMPLOYEES_TOKEN_PATH,
            PKJWT_RAS_CLIENT,
            idp.ras_client_key,
        )
        form = {"grant_type": JWT_BEARER, "assertion": "not-a-jwt"}
    endpoint = f"{idp.issuer}{path}"
    now = int(harness.clock())

    async def post(assertion: str) -> httpx.Response:
        data = {
            **form,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        return await harness.http.post(path, data=data)

    good = _assertion(key, client_id, endpoint, iat=now, jti=f"{case}-1")
    first = await post(good)
    # Client authentication passed: the grant itself is what fails.
    assert first.status_code == 400, first.text
    assert first.json()["error"] == "invalid_grant"

    bad: dict[str, str] = {
        "wrong_aud": _assertion(key, client_id, idp.issuer, iat=now, jti="a"),
        "expired": _assertion(key, client_id, endpoint, iat=now - 600, jti="b"),
        "replayed": good,
        "foreign_key": _assertion(
            RSAKey.generate_key(2048, auto_kid=True),
            client_id,
            endpoint,
            iat=now,
            jti="c",
        ),
    }
    response = await post(bad[case])
    assert response.status_code == 401, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == "invalid_client"
    assert fragment in body["error_description"]


def _with_auth(config: GatewayConfig, auth: IdJagAuth) -> GatewayConfig:
    backend = msgspec.structs.replace(config.backends["employees"], auth=auth)
    return msgspec.structs.replace(config, backends={"employees": backend})


async def test_private_key_jwt_missing_upstream_key_idp_misconfigured(
    idp: PkjwtIdp, tmp_path: pathlib.Path
) -> None:
    """A missing upstream key file stops the exchange before any request is sent."""
    async with idp.setup() as setup:
        principal = await idp.sign_in(setup)
        sent = len(setup.posts)
        setup.upstream.config = msgspec.structs.replace(
            setup.upstream.config, private_key_file=str(tmp_path / "gone.json")
        )
        with pytest.raises(UpstreamError) as caught:
            await setup.service.obtain(
                backend="employees", principal=principal, agent=CURSOR
            )

    assert caught.value.reason == "idp_misconfigured"
    assert "gone.json" in str(caught.value)
    assert len(setup.posts) == sent
