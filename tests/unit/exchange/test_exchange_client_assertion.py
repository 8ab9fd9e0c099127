"""``private_key_jwt`` client assertions and client authentication of token requests."""

from __future__ import annotations

import base64
import json
import os
import pathlib
from typing import Any

import httpx
import msgspec
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from gateway.config import IdJagAuth, UpstreamConfig
from gateway.exchange.client_assertion import (
    CLIENT_ASSERTION_TYPE,
    ClientAssertionSigner,
    ClientKeyError,
    authenticate_request,
    load_signer,
)

ENDPOINT = "http://127.0.0.1:9/oauth2/v1/token"
_RSA = RSAKey.generate_key(2048, auto_kid=True)
_EC = ECKey.generate_key("P-256", auto_kid=True)


def _write(tmp_path: pathlib.Path, value: Any, name: str = "key.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(value))
    return str(path)


def _decode(assertion: str, key: RSAKey | ECKey) -> jwt.Token:
    return jwt.decode(assertion, key, algorithms=["RS256", "ES256", "PS256"])


def test_signer_assertion_has_required_claims() -> None:
    """iss = sub = client_id, aud = the exact endpoint, 60 s lifetime, jti, kid."""
    signer = ClientAssertionSigner(
        _RSA, kid="k1", algorithm="RS256", clock=lambda: 1_000_000.0
    )
    token = _decode(signer.assertion("agent-proxy", ENDPOINT), _RSA)

    assert token.header == {"alg": "RS256", "kid": "k1", "typ": "JWT"}
    claims = token.claims
    assert claims["iss"] == claims["sub"] == "agent-proxy"
    assert claims["aud"] == ENDPOINT
    assert claims["iat"] == 1_000_000
    assert claims["exp"] == 1_000_060
    assert len(claims["jti"]) >= 32


def test_signer_each_assertion_new_jti() -> None:
    """Two assertions for the same endpoint carry different ``jti`` values."""
    signer = ClientAssertionSigner(_EC, kid="k", algorithm="ES256")
    jtis = {
        _decode(signer.assertion("c", ENDPOINT), _EC).claims["jti"] for _ in range(5)
    }
    assert len(jtis) == 5


@pytest.mark.parametrize(
    ("key", "algorithm", "fragment"),
    [
        (_RSA, "ES256", "EC P-256"),
        (_EC, "RS256", "RSA"),
        (_EC, "ES384", "EC P-384"),
        (_RSA, "HS256", "not supported"),
        (RSAKey.import_key(_RSA.as_dict(private=False)), "RS256", "public key"),
    ],
)
def test_signer_unfit_key_rejected(
    key: RSAKey | ECKey, algorithm: str, fragment: str
) -> None:
    """A public key, a key of the wrong type or an unknown algorithm is rejected."""
    with pytest.raises(ClientKeyError, match=fragment):
        ClientAssertionSigner(key, kid="k", algorithm=algorithm)


def test_load_signer_kid_from_jwk_or_config(tmp_path: pathlib.Path) -> None:
    """The JWK's own ``kid`` is sent unless the config names another."""
    path = _write(tmp_path, _RSA.as_dict(private=True))

    assert load_signer(path, kid="", algorithm="RS256").kid == _RSA.kid
    assert load_signer(path, kid="okta-kid", algorithm="RS256").kid == "okta-kid"


def test_load_signer_replaced_file_read_again(tmp_path: pathlib.Path) -> None:
    """Replacing the key file rotates the key without a restart."""
    path = _write(tmp_path, _RSA.as_dict(private=True))
    first = load_signer(path, kid="", algorithm="RS256")
    assert load_signer(path, kid="", algorithm="RS256") is first

    other = RSAKey.generate_key(2048, auto_kid=True)
    _write(tmp_path, other.as_dict(private=True))
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    second = load_signer(path, kid="", algorithm="RS256")

    assert second.kid == other.kid
    _decode(second.assertion("c", ENDPOINT), other)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot be read"),
        ("not json", "not JSON"),
        ("[1]", "one JWK object"),
        ('{"kty": "oct", "k": "AAAA"}', "kty 'oct'"),
        ('{"kty": "RSA", "n": "x"}', "invalid RSA key"),
    ],
)
def test_load_signer_bad_file_names_it(
    tmp_path: pathlib.Path, content: str | None, fragment: str
) -> None:
    """An unusable key file fails with its path and the problem."""
    path = tmp_path / "client.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ClientKeyError, match=fragment) as caught:
        load_signer(str(path), kid="", algorithm="RS256")
    assert "client.json" in str(caught.value)


def test_load_signer_key_without_kid_rejected(tmp_path: pathlib.Path) -> None:
    """A key with no ``kid`` in the JWK or the config is rejected."""
    value = _RSA.as_dict(private=True)
    del value["kid"]
    path = _write(tmp_path, value)
    with pytest.raises(ClientKeyError, match="kid"):
        load_signer(path, kid="", algorithm="RS256")


def test_authenticate_request_private_key_jwt_no_secret(tmp_path: pathlib.Path) -> None:
    """``private_key_jwt`` sends an assertion for the endpoint and no secret."""
    path = _write(tmp_path, _EC.as_dict(private=True))
    form, auth = authenticate_request(
        {"grant_type": "x"},
        method="private_key_jwt",
        client_id="c",
        client_secret="unused",
        token_endpoint=ENDPOINT,
        key_file=path,
        algorithm="ES256",
    )

    assert auth is None
    assert form["client_id"] == "c"
    assert form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    assert "client_secret" not in form
    assert _decode(form["client_assertion"], _EC).claims["aud"] == ENDPOINT


def test_authenticate_request_secret_methods() -> None:
    """``client_secret_post`` puts the secret in the form, Basic in a header."""
    form, auth = authenticate_request(
        {},
        method="client_secret_post",
        client_id="c",
        client_secret="s",
        token_endpoint=ENDPOINT,
    )
    assert form == {"client_id": "c", "client_secret": "s"}
    assert auth is None

    form, auth = authenticate_request(
        {},
        method="client_secret_basic",
        client_id="c d",
        client_secret="s:t",
        token_endpoint=ENDPOINT,
    )
    assert form == {"client_id": "c d"}
    assert isinstance(auth, httpx.BasicAuth)
    request = next(auth.auth_flow(httpx.Request("POST", ENDPOINT)))
    expected = base64.b64encode(b"c%20d:s%3At").decode()
    assert request.headers["authorization"] == f"Basic {expected}"


@pytest.mark.parametrize("kind", [UpstreamConfig, IdJagAuth])
def test_config_private_key_jwt_without_key_file_rejected(kind: type[Any]) -> None:
    """Choosing ``private_key_jwt`` without ``private_key_file`` fails at load."""
    values: dict[str, Any] = {
        "issuer": "http://127.0.0.1:9",
        "client_id": "c",
        "token_endpoint_auth_method": "private_key_jwt",
    }
    if kind is IdJagAuth:
        values.update(kind="id-jag", token_endpoint=ENDPOINT, resource="http://r/mcp")
    with pytest.raises(msgspec.ValidationError, match="private_key_file"):
        msgspec.convert(values, kind)
