"""Access token times at the exact edges of the leeway, on a fixed clock."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.oauth.access_tokens import AccessTokenError, verify_access_token
from gateway.oauth.keys import SigningKeys

ISSUER = "http://127.0.0.1:8000"
EMPLOYEES = "http://127.0.0.1:8000/employees/mcp"
NOW = 1_900_000_000


def claims(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "iss": ISSUER,
        "aud": EMPLOYEES,
        "sub": "00u_alice",
        "user_iss": "http://127.0.0.1:9000",
        "client_id": "c1",
        "jti": "j1",
        "grant_id": "g1",
        "iat": NOW - 60,
        "nbf": NOW - 60,
        "exp": NOW + 600,
    }
    values.update(overrides)
    return values


def verify(keys: SigningKeys, leeway: int, **overrides: Any) -> dict[str, Any]:
    return verify_access_token(
        keys,
        keys.sign(claims(**overrides)),
        issuer=ISSUER,
        audience=EMPLOYEES,
        algorithms=["ES256"],
        leeway=leeway,
        now=NOW,
    )


@pytest.mark.parametrize("leeway", [0, 30, 300])
@pytest.mark.parametrize(
    ("claim", "direction", "reason"),
    [
        ("exp", -1, "token_expired"),
        ("nbf", 1, "invalid_token"),
        ("iat", 1, "invalid_token"),
    ],
    ids=["expired", "nbf-future", "iat-future"],
)
def test_verify_leeway_edge_enforced(
    keys: SigningKeys, leeway: int, claim: str, direction: int, reason: str
) -> None:
    """A claim one second inside the leeway passes; one second outside fails."""
    inside = NOW + direction * (leeway - 1)
    assert verify(keys, leeway, **{claim: inside})[claim] == inside
    with pytest.raises(AccessTokenError) as info:
        verify(keys, leeway, **{claim: NOW + direction * (leeway + 1)})
    assert info.value.reason == reason


def test_verify_expiry_exactly_at_leeway_rejected(keys: SigningKeys) -> None:
    """A token whose exp plus the leeway is the current second is expired."""
    with pytest.raises(AccessTokenError) as info:
        verify(keys, 30, exp=NOW - 30)
    assert info.value.reason == "token_expired"
