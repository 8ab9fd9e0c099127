"""The dev IdP's ID-JAG issuance by token exchange, and each of its rejections."""

from __future__ import annotations

import pytest
from _devidp_fixtures import (
    POST_CLIENT,
    RAS_CLIENT,
    DevIdpHarness,
    decode_unverified,
)

from gateway.devidp import SigningKey

pytestmark = pytest.mark.anyio


async def test_exchange_valid_id_token_issues_id_jag(devidp: DevIdpHarness) -> None:
    """An ID token of the calling client yields an Okta-shaped ID-JAG."""
    tokens = await devidp.sign_in("bob")
    response = await devidp.exchange(tokens["id_token"])
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:id-jag"
    assert body["token_type"] == "N_A"
    assert body["expires_in"] == 300
    assert body["scope"] == "employees:read employees:write"
    assert "refresh_token" not in body
    header, claims = decode_unverified(body["access_token"])
    assert header["typ"] == "oauth-id-jag+jwt"
    assert header["alg"] == "RS256"
    assert header["kid"] == devidp.org_key.kid
    assert claims["iss"] == devidp.issuer
    assert claims["sub"] == "00u_bob"
    assert claims["aud"] == devidp.employees_issuer
    assert claims["client_id"] == RAS_CLIENT[0]
    assert claims["jti"].startswith("IDAAG.")
    assert claims["exp"] - claims["iat"] == 300
    assert claims["resource"] == devidp.employees_resource
    assert claims["scope"] == "employees:read employees:write"
    assert claims["email"] == "bob@example.com"


async def test_exchange_narrower_scope_granted(devidp: DevIdpHarness) -> None:
    """A request for fewer scopes gets exactly those scopes."""
    tokens = await devidp.sign_in()
    response = await devidp.exchange(tokens["id_token"], scope="employees:read")
    assert response.json()["scope"] == "employees:read"
    _, claims = decode_unverified(response.json()["access_token"])
    assert claims["scope"] == "employees:read"


async def test_exchange_without_resource_uses_backend_resource(
    devidp: DevIdpHarness,
) -> None:
    """Without ``resource`` the ID-JAG names the backend's registered resource."""
    tokens = await devidp.sign_in()
    response = await devidp.exchange(tokens["id_token"], resource=None)
    assert response.status_code == 200
    _, claims = decode_unverified(response.json()["access_token"])
    assert claims["resource"] == devidp.employees_resource


async def test_exchange_id_token_of_other_client_invalid_grant(
    devidp: DevIdpHarness,
) -> None:
    """An ID token issued to another client is refused with invalid_grant."""
    tokens = await devidp.sign_in()
    response = await devidp.token(
        {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "requested_token_type": "urn:ietf:params:oauth:token-type:id-jag",
            "subject_token": tokens["id_token"],
            "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
            "audience": devidp.employees_issuer,
            "client_id": POST_CLIENT[0],
            "client_secret": POST_CLIENT[1],
        },
        auth=None,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


async def test_exchange_unknown_audience_invalid_target(devidp: DevIdpHarness) -> None:
    """An audience that is no backend issuer is refused with invalid_target."""
    tokens = await devidp.sign_in()
    for audience in (
        f"{devidp.issuer}/oauth2/unknown",
        f"{devidp.employees_issuer}/",
        devidp.issuer,
    ):
        response = await devidp.exchange(tokens["id_token"], audience=audience)
        assert response.status_code == 400, audience
        assert response.json()["error"] == "invalid_target", audience


async def test_exchange_missing_audience_invalid_request(devidp: DevIdpHarness) -> None:
    """A request without audience is refused with invalid_request."""
    tokens = await devidp.sign_in()
    response = await devidp.exchange(tokens["id_token"], audience=None)
    assert response.json()["error"] == "invalid_request"


async def test_exchange_foreign_resource_invalid_target(devidp: DevIdpHarness) -> None:
    """A resource that is not the audience's backend is refused with invalid_target."""
    tokens = await devidp.sign_in()
    for resource in (
        "http://127.0.0.1:8000/employees/mcp",
        f"{devidp.employees_resource}/",
    ):
        response = await devidp.exchange(tokens["id_token"], resource=resource)
        assert response.status_code == 400, resource
        assert response.json()["error"] == "invalid_target", resource


async def test_exchange_unmapped_client_unauthorized_client(
    devidp: DevIdpHarness,
) -> None:
    """A client with no mapping at the backend is refused with unauthorized_client."""
    code, verifier = await devidp.code_for(
        client_id=POST_CLIENT[0], redirect_uri="http://127.0.0.1:7777/callback"
    )
    credentials = {"client_id": POST_CLIENT[0], "client_secret": POST_CLIENT[1]}
    tokens = await devidp.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": "http://127.0.0.1:7777/callback",
            "code_verifier": verifier,
            **credentials,
        },
        auth=None,
    )
    response = await devidp.token(
        {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "requested_token_type": "urn:ietf:params:oauth:token-type:id-jag",
            "subject_token": tokens.json()["id_token"],
            "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
            "audience": devidp.employees_issuer,
            **credentials,
        },
        auth=None,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "unauthorized_client"


async def test_exchange_unknown_scope_invalid_scope(devidp: DevIdpHarness) -> None:
    """A scope the backend does not offer is refused with invalid_scope."""
    tokens = await devidp.sign_in()
    response = await devidp.exchange(tokens["id_token"], scope="employees:read admin")
    assert response.json()["error"] == "invalid_scope"


async def test_exchange_other_requested_type_invalid_request(
    devidp: DevIdpHarness,
) -> None:
    """Only the ID-JAG token type can be requested."""
    tokens = await devidp.sign_in()
    response = await devidp.exchange(
        tokens["id_token"],
        requested_token_type="urn:ietf:params:oauth:token-type:access_token",
    )
    assert response.json()["error"] == "invalid_request"


async def test_exchange_access_token_as_subject_invalid_grant(
    devidp: DevIdpHarness,
) -> None:
    """The org access token is not accepted where an ID token is required."""
    tokens = await devidp.sign_in()
    response = await devidp.exchange(tokens["access_token"])
    assert response.json()["error"] == "invalid_grant"


async def test_exchange_expired_id_token_invalid_grant(devidp: DevIdpHarness) -> None:
    """An expired ID token is refused with invalid_grant."""
    tokens = await devidp.sign_in()
    devidp.clock.advance(devidp.settings.id_token_ttl + devidp.settings.clock_skew + 1)
    response = await devidp.exchange(tokens["id_token"])
    assert response.json()["error"] == "invalid_grant"
    assert "expired" in response.json()["error_description"]


async def test_exchange_forged_id_token_invalid_grant(devidp: DevIdpHarness) -> None:
    """An ID token signed by another key under the org's kid is refused."""
    tokens = await devidp.sign_in()
    _, claims = decode_unverified(tokens["id_token"])
    forger = SigningKey.from_jwk(
        {**SigningKey.generate().private_jwk(), "kid": devidp.org_key.kid}
    )
    response = await devidp.exchange(forger.sign(claims, typ="JWT"))
    assert response.json()["error"] == "invalid_grant"


async def test_exchange_wrong_client_secret_invalid_client(
    devidp: DevIdpHarness,
) -> None:
    """Token exchange needs client authentication like every grant."""
    tokens = await devidp.sign_in()
    response = await devidp.exchange(tokens["id_token"], auth=("agent-proxy", "nope"))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
