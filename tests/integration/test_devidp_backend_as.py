"""The dev IdP's backend authorization servers: ID-JAG redemption and its checks.

Most rejection cases need an ID-JAG that no honest IdP issues (two audiences,
a wrong ``typ``). The tests build those with the org's own signing key, which
the fixture keeps, so that each case differs from a valid ID-JAG in one claim.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest
from _devidp_fixtures import (
    OTHER_RAS_CLIENT,
    RAS_CLIENT,
    DevIdpHarness,
    decode_unverified,
)
from joserfc import jwt
from joserfc.jwk import KeySet

from gateway.devidp import SigningKey

pytestmark = pytest.mark.anyio


def _id_jag_claims(devidp: DevIdpHarness, **changes: Any) -> dict[str, Any]:
    now = int(devidp.clock())
    claims: dict[str, Any] = {
        "iss": devidp.issuer,
        "sub": "00u_alice",
        "aud": devidp.employees_issuer,
        "client_id": RAS_CLIENT[0],
        "jti": f"IDAAG.{secrets.token_urlsafe(12)}",
        "iat": now,
        "exp": now + 300,
        "resource": devidp.employees_resource,
        "scope": "employees:read",
        "email": "alice@example.com",
    }
    claims.update(changes)
    return claims


def _sign(
    devidp: DevIdpHarness, claims: dict[str, Any], typ: str = "oauth-id-jag+jwt"
) -> str:
    return devidp.org_key.sign(claims, typ=typ)


async def _assert_invalid_grant(
    devidp: DevIdpHarness, assertion: str, reason: str
) -> None:
    response = await devidp.redeem(assertion)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_grant"
    assert reason in body["error_description"]


async def test_metadata_advertises_id_jag_profile(devidp: DevIdpHarness) -> None:
    """Both metadata locations describe the jwt-bearer server and its profile."""
    for path in (
        "/oauth2/employees/.well-known/oauth-authorization-server",
        "/.well-known/oauth-authorization-server/oauth2/employees",
    ):
        metadata = (await devidp.http.get(path)).json()
        assert metadata["issuer"] == devidp.employees_issuer
        assert metadata["token_endpoint"] == f"{devidp.employees_issuer}/v1/token"
        assert metadata["jwks_uri"] == f"{devidp.employees_issuer}/v1/keys"
        assert metadata["grant_types_supported"] == [
            "urn:ietf:params:oauth:grant-type:jwt-bearer"
        ]
        assert metadata["authorization_grant_profiles_supported"] == [
            "urn:ietf:params:oauth:grant-profile:id-jag"
        ]
        assert (
            "client_secret_basic" in metadata["token_endpoint_auth_methods_supported"]
        )


async def test_redeem_valid_id_jag_returns_access_token(devidp: DevIdpHarness) -> None:
    """A fresh ID-JAG yields an at+jwt for the resource, signed by the backend key."""
    response = await devidp.redeem(await devidp.id_jag("bob"))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "employees:read employees:write"
    assert "refresh_token" not in body
    jwks = (await devidp.http.get("/oauth2/employees/v1/keys")).json()
    token = jwt.decode(
        body["access_token"], KeySet.import_key_set(jwks), algorithms=["RS256"]
    )
    assert token.header["typ"] == "at+jwt"
    assert token.header["kid"] != devidp.org_key.kid
    claims = token.claims
    assert claims["iss"] == devidp.employees_issuer
    assert claims["sub"] == "00u_bob"
    assert claims["aud"] == devidp.employees_resource
    assert claims["client_id"] == RAS_CLIENT[0]
    assert claims["scope"] == "employees:read employees:write"
    assert claims["email"] == "bob@example.com"
    assert claims["jti"]
    assert claims["exp"] - claims["iat"] == 3600


async def test_redeem_forged_valid_id_jag_accepted(devidp: DevIdpHarness) -> None:
    """The test's own ID-JAG builder yields an acceptable ID-JAG (control case)."""
    response = await devidp.redeem(_sign(devidp, _id_jag_claims(devidp)))
    assert response.status_code == 200


async def test_redeem_narrower_scope_granted(devidp: DevIdpHarness) -> None:
    """A request may narrow the granted scopes."""
    response = await devidp.redeem(await devidp.id_jag(), scope="employees:read")
    assert response.json()["scope"] == "employees:read"


async def test_redeem_wider_scope_invalid_scope(devidp: DevIdpHarness) -> None:
    """A request may not widen the scopes of the ID-JAG."""
    assertion = await devidp.id_jag(scope="employees:read")
    response = await devidp.redeem(assertion, scope="employees:read employees:write")
    assert response.json()["error"] == "invalid_scope"


async def test_redeem_wrong_typ_rejected(devidp: DevIdpHarness) -> None:
    """A JWT whose typ is not oauth-id-jag+jwt is refused."""
    await _assert_invalid_grant(
        devidp, _sign(devidp, _id_jag_claims(devidp), "JWT"), "typ"
    )


async def test_redeem_id_token_as_assertion_rejected(devidp: DevIdpHarness) -> None:
    """An ID token of the org server is not an ID-JAG."""
    tokens = await devidp.sign_in()
    await _assert_invalid_grant(devidp, tokens["id_token"], "typ")


async def test_redeem_at_prefixed_issuer_rejected(devidp: DevIdpHarness) -> None:
    """An ID-JAG for employees is refused at employees-eu, whose issuer it prefixes."""
    response = await devidp.redeem(await devidp.id_jag(), backend="employees-eu")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert "aud" in response.json()["error_description"]


async def test_redeem_two_audiences_rejected(devidp: DevIdpHarness) -> None:
    """An aud array with this issuer and another one is refused."""
    claims = _id_jag_claims(
        devidp, aud=[devidp.employees_issuer, "https://other.example"]
    )
    await _assert_invalid_grant(devidp, _sign(devidp, claims), "aud")


async def test_redeem_single_element_audience_accepted(devidp: DevIdpHarness) -> None:
    """An aud array holding only this issuer is accepted."""
    claims = _id_jag_claims(devidp, aud=[devidp.employees_issuer])
    response = await devidp.redeem(_sign(devidp, claims))
    assert response.status_code == 200


async def test_redeem_audience_with_trailing_slash_rejected(
    devidp: DevIdpHarness,
) -> None:
    """aud must match the issuer byte for byte."""
    claims = _id_jag_claims(devidp, aud=f"{devidp.employees_issuer}/")
    await _assert_invalid_grant(devidp, _sign(devidp, claims), "aud")


async def test_redeem_client_id_mismatch_rejected(devidp: DevIdpHarness) -> None:
    """An ID-JAG issued for one backend client is refused for another."""
    response = await devidp.redeem(await devidp.id_jag(), auth=OTHER_RAS_CLIENT)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert "another client" in response.json()["error_description"]


async def test_redeem_replayed_jti_rejected(devidp: DevIdpHarness) -> None:
    """The same ID-JAG is redeemable once."""
    assertion = await devidp.id_jag()
    assert (await devidp.redeem(assertion)).status_code == 200
    await _assert_invalid_grant(devidp, assertion, "already used")


async def test_redeem_expired_id_jag_rejected(devidp: DevIdpHarness) -> None:
    """An ID-JAG presented after exp plus the allowed skew is refused."""
    assertion = await devidp.id_jag()
    devidp.clock.advance(devidp.settings.idjag_ttl + devidp.settings.clock_skew + 1)
    await _assert_invalid_grant(devidp, assertion, "expired")


async def test_redeem_future_iat_rejected(devidp: DevIdpHarness) -> None:
    """An ID-JAG issued in the future beyond the allowed skew is refused."""
    future = int(time.time()) + 600
    claims = _id_jag_claims(devidp, iat=future, exp=future + 300)
    await _assert_invalid_grant(devidp, _sign(devidp, claims), "future")


async def test_redeem_long_lived_id_jag_rejected(devidp: DevIdpHarness) -> None:
    """An ID-JAG valid for more than an hour is refused."""
    claims = _id_jag_claims(devidp)
    claims["exp"] = claims["iat"] + 7200
    await _assert_invalid_grant(devidp, _sign(devidp, claims), "lifetime")


async def test_redeem_wrong_signer_rejected(devidp: DevIdpHarness) -> None:
    """An ID-JAG signed by a key that is not the org's is refused."""
    stranger = SigningKey.generate()
    same_kid = SigningKey.from_jwk(
        {**stranger.private_jwk(), "kid": devidp.org_key.kid}
    )
    claims = _id_jag_claims(devidp)
    await _assert_invalid_grant(
        devidp, stranger.sign(claims, typ="oauth-id-jag+jwt"), "kid"
    )
    await _assert_invalid_grant(
        devidp, same_kid.sign(claims, typ="oauth-id-jag+jwt"), "signature"
    )


async def test_redeem_foreign_issuer_rejected(devidp: DevIdpHarness) -> None:
    """An ID-JAG naming another issuer is refused even with a valid signature."""
    claims = _id_jag_claims(devidp, iss=f"{devidp.issuer}/")
    await _assert_invalid_grant(devidp, _sign(devidp, claims), "issuer")


async def test_redeem_foreign_resource_rejected(devidp: DevIdpHarness) -> None:
    """An ID-JAG for another resource is refused."""
    claims = _id_jag_claims(devidp, resource="http://127.0.0.1:8000/employees/mcp")
    await _assert_invalid_grant(devidp, _sign(devidp, claims), "resource")


async def test_redeem_missing_jti_rejected(devidp: DevIdpHarness) -> None:
    """An ID-JAG without jti is refused, because replay could not be detected."""
    claims = _id_jag_claims(devidp)
    del claims["jti"]
    await _assert_invalid_grant(devidp, _sign(devidp, claims), "jti")


async def test_redeem_key_bound_id_jag_rejected(devidp: DevIdpHarness) -> None:
    """An ID-JAG bound to a DPoP key is refused, since no proof is verified."""
    claims = _id_jag_claims(devidp, cnf={"jkt": "abc"})
    await _assert_invalid_grant(devidp, _sign(devidp, claims), "cnf")


async def test_redeem_wrong_client_secret_invalid_client(devidp: DevIdpHarness) -> None:
    """Client authentication failures are invalid_client with status 401."""
    response = await devidp.redeem(await devidp.id_jag(), auth=(RAS_CLIENT[0], "wrong"))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


async def test_redeem_org_client_credentials_invalid_client(
    devidp: DevIdpHarness,
) -> None:
    """The org client's credentials do not work at a backend server."""
    response = await devidp.redeem(
        await devidp.id_jag(), auth=("agent-proxy", "agent-proxy-dev-secret")
    )
    assert response.status_code == 401


async def test_redeem_other_grant_type_unsupported(devidp: DevIdpHarness) -> None:
    """Only the jwt-bearer grant is accepted."""
    response = await devidp.http.post(
        "/oauth2/employees/v1/token",
        data={"grant_type": "client_credentials"},
        auth=RAS_CLIENT,
    )
    assert response.json()["error"] == "unsupported_grant_type"


async def test_org_token_endpoint_jwt_bearer_unsupported(devidp: DevIdpHarness) -> None:
    """The org server never redeems its own ID-JAGs."""
    response = await devidp.token(
        {
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": await devidp.id_jag(),
        }
    )
    assert response.json()["error"] == "unsupported_grant_type"


async def test_redeem_id_jag_header_keeps_org_kid(devidp: DevIdpHarness) -> None:
    """Issued ID-JAGs name the org key, the one the backend server trusts."""
    header, _ = decode_unverified(await devidp.id_jag())
    assert header["kid"] == devidp.org_key.kid
