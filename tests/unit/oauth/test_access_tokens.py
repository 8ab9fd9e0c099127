"""Minting and verifying the gateway's RFC 9068 access tokens."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.oauth.access_tokens import (
    AccessTokenError,
    agent_claim,
    mint_access_token,
    verify_access_token,
)
from gateway.oauth.grants import Grant
from gateway.oauth.keys import SigningKeys

ISSUER = "http://127.0.0.1:8000"
EMPLOYEES = "http://127.0.0.1:8000/employees/mcp"
PARTNERS = "http://127.0.0.1:8000/partners/mcp"


def grant(**overrides: Any) -> Grant:
    values: dict[str, Any] = {
        "grant_id": "g1",
        "user_iss": "http://127.0.0.1:9000",
        "user_sub": "00u_alice",
        "email": "alice@example.com",
        "client_id": "c1",
        "agent_id": "cursor",
        "resource": EMPLOYEES,
        "upstream_id_token": "x",
        "id_token_expires_at": 0,
        "created_at": 0,
        "expires_at": 0,
    }
    values.update(overrides)
    return Grant(**values)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": ISSUER,
        "aud": EMPLOYEES,
        "sub": "00u_alice",
        "user_iss": "http://127.0.0.1:9000",
        "client_id": "c1",
        "jti": "j1",
        "grant_id": "g1",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    values.update(overrides)
    return {name: value for name, value in values.items() if value is not None}


def verify(keys: SigningKeys, token: str, **options: Any) -> dict[str, Any]:
    options.setdefault("issuer", ISSUER)
    options.setdefault("audience", EMPLOYEES)
    options.setdefault("algorithms", ["ES256"])
    return verify_access_token(keys, token, **options)


def rejection(keys: SigningKeys, token: str, **options: Any) -> AccessTokenError:
    with pytest.raises(AccessTokenError) as info:
        verify(keys, token, **options)
    return info.value


def test_mint_access_token_claims_verify(keys: SigningKeys) -> None:
    """A minted token verifies and carries the grant's user, client and agent."""
    token, minted = mint_access_token(
        keys, issuer=ISSUER, grant=grant(), scopes=["mcp"], ttl=600
    )
    verified = verify(keys, token)
    assert verified == minted
    assert verified["aud"] == EMPLOYEES
    assert verified["sub"] == "00u_alice"
    assert verified["user_iss"] == "http://127.0.0.1:9000"
    assert verified["client_id"] == "c1"
    assert verified["grant_id"] == "g1"
    assert verified["scope"] == "mcp"
    assert verified["email"] == "alice@example.com"
    assert verified["agent"] == {
        "id": "cursor",
        "verified": False,
        "trust": "self-asserted",
    }
    assert verified["exp"] - verified["iat"] == 600


def test_agent_claim_trust_levels() -> None:
    """The agent claim's trust is verified, self-asserted or unknown."""
    assert agent_claim(grant(agent_verified=True))["trust"] == "verified"
    assert agent_claim(grant(agent_id="default"))["trust"] == "unknown"
    assert agent_claim(grant())["trust"] == "self-asserted"


def test_verify_expired_token_rejected(keys: SigningKeys) -> None:
    """A token past exp plus leeway is token_expired."""
    token = keys.sign(claims(exp=int(time.time()) - 31))
    assert rejection(keys, token, leeway=30).reason == "token_expired"


def test_verify_expired_within_leeway_accepted(keys: SigningKeys) -> None:
    """A token expired less than the leeway ago still verifies."""
    token = keys.sign(claims(exp=int(time.time()) - 10))
    assert verify(keys, token, leeway=30)["sub"] == "00u_alice"


def test_verify_nbf_in_future_rejected(keys: SigningKeys) -> None:
    """A token not valid yet beyond the leeway is rejected."""
    token = keys.sign(claims(nbf=int(time.time()) + 120))
    error = rejection(keys, token)
    assert error.reason == "invalid_token"
    assert "nbf" in str(error)


def test_verify_iat_in_future_rejected(keys: SigningKeys) -> None:
    """A token issued in the future beyond the leeway is rejected."""
    token = keys.sign(claims(iat=int(time.time()) + 120))
    assert rejection(keys, token).reason == "invalid_token"


def test_verify_wrong_audience_rejected(keys: SigningKeys) -> None:
    """A token for another backend is wrong_audience."""
    token = keys.sign(claims(aud=PARTNERS))
    assert rejection(keys, token).reason == "wrong_audience"


def test_verify_trailing_slash_audience_rejected(keys: SigningKeys) -> None:
    """The audience must be the canonical resource byte for byte."""
    token = keys.sign(claims(aud=EMPLOYEES + "/"))
    assert rejection(keys, token).reason == "wrong_audience"


def test_verify_multi_audience_with_other_rejected(keys: SigningKeys) -> None:
    """An array naming this resource and another one is rejected."""
    token = keys.sign(claims(aud=[EMPLOYEES, PARTNERS]))
    assert rejection(keys, token).reason == "wrong_audience"


def test_verify_array_audience_only_ours_accepted(keys: SigningKeys) -> None:
    """An array whose only member is this resource is accepted."""
    token = keys.sign(claims(aud=[EMPLOYEES]))
    assert verify(keys, token)["aud"] == [EMPLOYEES]


def test_verify_empty_or_missing_audience_rejected(keys: SigningKeys) -> None:
    """No audience, or an empty array, is wrong_audience."""
    assert rejection(keys, keys.sign(claims(aud=None))).reason == "wrong_audience"
    assert rejection(keys, keys.sign(claims(aud=[]))).reason == "wrong_audience"


def test_verify_wrong_issuer_rejected(keys: SigningKeys) -> None:
    """A token naming another issuer is rejected, even with a valid signature."""
    token = keys.sign(claims(iss="http://127.0.0.1:8000/other"))
    assert rejection(keys, token).reason == "invalid_token"


def test_verify_wrong_typ_rejected(keys: SigningKeys) -> None:
    """A plain JWT (typ JWT) is not accepted as an access token."""
    token = keys.sign(claims(), typ="JWT")
    assert "type" in str(rejection(keys, token))


def test_verify_typ_check_disabled_accepted(keys: SigningKeys) -> None:
    """With require_typ off, another typ passes."""
    token = keys.sign(claims(), typ="JWT")
    assert verify(keys, token, require_typ=False)["jti"] == "j1"


def test_verify_application_at_jwt_typ_accepted(keys: SigningKeys) -> None:
    """The long form application/at+jwt is accepted (RFC 9068 section 4)."""
    token = keys.sign(claims(), typ="application/at+jwt")
    assert verify(keys, token)["jti"] == "j1"


@pytest.mark.parametrize("missing", ["sub", "client_id", "jti", "grant_id", "user_iss"])
def test_verify_missing_required_claim_rejected(
    keys: SigningKeys, missing: str
) -> None:
    """Each required claim must be a non-empty string."""
    token = keys.sign(claims(**{missing: None}))
    assert missing in str(rejection(keys, token))


def test_verify_missing_exp_rejected(keys: SigningKeys) -> None:
    """A token without exp never verifies."""
    token = keys.sign(claims(exp=None))
    assert "exp" in str(rejection(keys, token))


def test_verify_boolean_exp_rejected(keys: SigningKeys) -> None:
    """exp must be a number, and true is not one."""
    token = keys.sign(claims(exp=True))
    assert "exp" in str(rejection(keys, token))


def test_verify_unsigned_token_rejected(keys: SigningKeys) -> None:
    """A garbage token is invalid_token."""
    assert rejection(keys, "a.b.c").reason == "invalid_token"
