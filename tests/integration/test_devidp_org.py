"""The dev IdP org server: discovery, PKCE sign-in, refresh rotation, client auth."""

from __future__ import annotations

import secrets

import httpx
import msgspec
import pytest
from _devidp_fixtures import (
    ASSERTION_KEY,
    BASIC_CLIENT,
    GATEWAY_CALLBACK,
    POST_CLIENT,
    POST_CLIENT_CALLBACK,
    DevIdpHarness,
    decode_unverified,
    pkce_pair,
    query_of,
)
from joserfc import jwt
from joserfc.jwk import KeySet

from gateway.demo.serve import bind_socket, run_app
from gateway.devidp import SigningKey, create_devidp_app

pytestmark = pytest.mark.anyio

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


async def test_discovery_metadata_lists_endpoints_and_id_jag(
    devidp: DevIdpHarness,
) -> None:
    """Both discovery documents name the Okta-style endpoints and the ID-JAG type."""
    for path in (
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ):
        metadata = (await devidp.http.get(path)).json()
        assert metadata["issuer"] == devidp.issuer
        assert (
            metadata["authorization_endpoint"] == f"{devidp.issuer}/oauth2/v1/authorize"
        )
        assert metadata["token_endpoint"] == f"{devidp.issuer}/oauth2/v1/token"
        assert metadata["jwks_uri"] == f"{devidp.issuer}/oauth2/v1/keys"
        assert metadata["code_challenge_methods_supported"] == ["S256"]
        assert metadata["id_token_signing_alg_values_supported"] == ["RS256"]
        assert metadata["response_types_supported"] == ["code"]
        assert (
            "urn:ietf:params:oauth:grant-type:token-exchange"
            in (metadata["grant_types_supported"])
        )
        assert metadata["identity_chaining_requested_token_types_supported"] == [
            "urn:ietf:params:oauth:token-type:id-jag"
        ]


async def test_jwks_public_keys_only(devidp: DevIdpHarness) -> None:
    """The JWK Set contains the org key's public half and no private member."""
    keys = (await devidp.http.get("/oauth2/v1/keys")).json()["keys"]
    assert [key["kid"] for key in keys] == [devidp.org_key.kid]
    assert keys[0]["kty"] == "RSA"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(keys[0])


async def test_authorize_valid_request_redirects_with_code(
    devidp: DevIdpHarness,
) -> None:
    """A valid request redirects to the callback with code, state and iss."""
    response = await devidp.authorize(state="state-123", login_hint="bob")
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(f"{GATEWAY_CALLBACK}?")
    query = query_of(location)
    assert query["state"] == "state-123"
    assert query["iss"] == devidp.issuer
    assert len(query["code"]) >= 40


async def test_code_grant_valid_verifier_returns_verified_id_token(
    devidp: DevIdpHarness,
) -> None:
    """The code grant returns an ID token that verifies with the published keys."""
    code, verifier = await devidp.code_for(login_hint="bob@example.com", nonce="n-42")
    response = await devidp.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": GATEWAY_CALLBACK,
            "code_verifier": verifier,
        }
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"

    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "openid profile email offline_access"
    assert body["refresh_token"]

    jwks = (await devidp.http.get("/oauth2/v1/keys")).json()
    token = jwt.decode(
        body["id_token"], KeySet.import_key_set(jwks), algorithms=["RS256"]
    )
    assert token.header["kid"] == devidp.org_key.kid
    claims = token.claims
    assert claims["iss"] == devidp.issuer
    assert claims["sub"] == "00u_bob"
    assert claims["aud"] == BASIC_CLIENT[0]
    assert claims["nonce"] == "n-42"
    assert claims["email"] == "bob@example.com"
    assert claims["name"] == "Bob Example"
    assert claims["preferred_username"] == "bob@example.com"
    assert claims["exp"] - claims["iat"] == 3600
    assert isinstance(claims["auth_time"], int)


async def test_code_grant_wrong_verifier_rejected(devidp: DevIdpHarness) -> None:
    """A code_verifier that does not hash to the challenge gets invalid_grant."""
    code, _ = await devidp.code_for()
    other_verifier, _ = pkce_pair()
    response = await devidp.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": GATEWAY_CALLBACK,
            "code_verifier": other_verifier,
        }
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


async def test_code_grant_missing_verifier_rejected(devidp: DevIdpHarness) -> None:
    """A code grant without code_verifier gets invalid_request."""
    code, _ = await devidp.code_for()
    response = await devidp.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": GATEWAY_CALLBACK,
        }
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_authorize_missing_challenge_redirects_error(
    devidp: DevIdpHarness,
) -> None:
    """A request without code_challenge is sent back with invalid_request."""
    response = await devidp.authorize(code_challenge=None, state="s1")
    assert response.status_code == 302
    query = query_of(response.headers["location"])
    assert query["error"] == "invalid_request"
    assert query["state"] == "s1"
    assert "code" not in query


async def test_authorize_plain_method_redirects_error(devidp: DevIdpHarness) -> None:
    """PKCE method plain is refused with invalid_request."""
    verifier, _ = pkce_pair()
    response = await devidp.authorize(
        code_challenge=verifier, code_challenge_method="plain"
    )
    assert query_of(response.headers["location"])["error"] == "invalid_request"


async def test_code_grant_reused_code_revokes_tokens(devidp: DevIdpHarness) -> None:
    """A second use of a code fails and revokes the refresh token of the first."""
    code, verifier = await devidp.code_for()
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": GATEWAY_CALLBACK,
        "code_verifier": verifier,
    }
    first = await devidp.token(form)
    assert first.status_code == 200
    second = await devidp.token(form)
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"
    refresh = await devidp.token(
        {"grant_type": "refresh_token", "refresh_token": first.json()["refresh_token"]}
    )
    assert refresh.status_code == 400
    assert refresh.json()["error"] == "invalid_grant"


async def test_code_grant_wrong_redirect_uri_rejected(devidp: DevIdpHarness) -> None:
    """The token request must repeat the authorization request's redirect_uri."""
    code, verifier = await devidp.code_for()
    response = await devidp.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": "http://127.0.0.1:8000/other",
            "code_verifier": verifier,
        }
    )
    assert response.json()["error"] == "invalid_grant"


async def test_code_grant_expired_code_rejected(devidp: DevIdpHarness) -> None:
    """A code presented after its lifetime gets invalid_grant."""
    code, verifier = await devidp.code_for()
    devidp.clock.advance(devidp.settings.authorization_code_ttl + 1)
    response = await devidp.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": GATEWAY_CALLBACK,
            "code_verifier": verifier,
        }
    )
    assert response.json()["error"] == "invalid_grant"


async def test_authorize_unknown_client_shows_error_page(devidp: DevIdpHarness) -> None:
    """An unknown client_id gets a 400 page, never a redirect."""
    response = await devidp.authorize(client_id="nobody")
    assert response.status_code == 400
    assert "location" not in response.headers


async def test_authorize_unregistered_redirect_shows_error_page(
    devidp: DevIdpHarness,
) -> None:
    """A redirect_uri that is not registered exactly gets a 400 JSON error."""
    response = await devidp.http.get(
        "/oauth2/v1/authorize",
        params={
            "response_type": "code",
            "client_id": BASIC_CLIENT[0],
            "redirect_uri": f"{GATEWAY_CALLBACK}/",
            "scope": "openid",
            "state": "s",
        },
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.json()["error"] == "invalid_request"


async def test_authorize_unknown_login_hint_access_denied(
    devidp: DevIdpHarness,
) -> None:
    """A login_hint naming no user is sent back with access_denied."""
    response = await devidp.authorize(login_hint="mallory")
    assert query_of(response.headers["location"])["error"] == "access_denied"


async def test_authorize_without_openid_invalid_scope(devidp: DevIdpHarness) -> None:
    """A scope without openid is sent back with invalid_scope."""
    response = await devidp.authorize(scope="profile")
    assert query_of(response.headers["location"])["error"] == "invalid_scope"


async def test_authorize_repeated_parameter_invalid_request(
    devidp: DevIdpHarness,
) -> None:
    """A repeated parameter is sent back with invalid_request."""
    _, challenge = pkce_pair()
    query = (
        f"response_type=code&client_id={BASIC_CLIENT[0]}&redirect_uri={GATEWAY_CALLBACK}"
        f"&scope=openid&state=a&state=b&code_challenge={challenge}"
        "&code_challenge_method=S256"
    )
    response = await devidp.http.get(f"/oauth2/v1/authorize?{query}")
    assert query_of(response.headers["location"])["error"] == "invalid_request"


async def test_code_grant_without_offline_access_no_refresh_token(
    devidp: DevIdpHarness,
) -> None:
    """Without offline_access the token response has no refresh token."""
    tokens = await devidp.sign_in(scope="openid email")
    assert "refresh_token" not in tokens
    assert tokens["id_token"]


async def test_refresh_token_rotation_invalidates_old_token(
    devidp: DevIdpHarness,
) -> None:
    """A refresh rotates the refresh token and returns a new ID token."""
    tokens = await devidp.sign_in("alice")
    first = await devidp.token(
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert first.status_code == 200
    rotated = first.json()
    assert rotated["refresh_token"] != tokens["refresh_token"]
    _, claims = decode_unverified(rotated["id_token"])
    assert claims["sub"] == "00u_alice"
    assert "nonce" not in claims
    second = await devidp.token(
        {"grant_type": "refresh_token", "refresh_token": rotated["refresh_token"]}
    )
    assert second.status_code == 200


async def test_refresh_token_reuse_revokes_family(devidp: DevIdpHarness) -> None:
    """Reusing a rotated refresh token fails and revokes its successor too."""
    tokens = await devidp.sign_in()
    rotated = await devidp.token(
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    reused = await devidp.token(
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    successor = await devidp.token(
        {
            "grant_type": "refresh_token",
            "refresh_token": rotated.json()["refresh_token"],
        }
    )
    assert successor.status_code == 400
    assert successor.json()["error"] == "invalid_grant"


async def test_refresh_token_wider_scope_invalid_scope(devidp: DevIdpHarness) -> None:
    """A refresh may narrow the scope but not widen it."""
    tokens = await devidp.sign_in(scope="openid offline_access")
    response = await devidp.token(
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "scope": "openid email",
        }
    )
    assert response.json()["error"] == "invalid_scope"


async def test_token_wrong_secret_invalid_client(devidp: DevIdpHarness) -> None:
    """A wrong client secret gets 401 invalid_client with a Basic challenge."""
    response = await devidp.token(
        {"grant_type": "refresh_token", "refresh_token": "x"},
        auth=(BASIC_CLIENT[0], "wrong"),
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic ")


async def test_token_method_not_registered_invalid_client(
    devidp: DevIdpHarness,
) -> None:
    """A basic-auth client that sends its secret in the body gets invalid_client."""
    response = await devidp.token(
        {
            "grant_type": "refresh_token",
            "refresh_token": "x",
            "client_id": BASIC_CLIENT[0],
            "client_secret": BASIC_CLIENT[1],
        },
        auth=None,
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


async def test_token_client_secret_post_accepted(devidp: DevIdpHarness) -> None:
    """A client_secret_post client signs in and redeems its code."""
    code, verifier = await devidp.code_for(
        client_id=POST_CLIENT[0], redirect_uri=POST_CLIENT_CALLBACK
    )
    response = await devidp.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": POST_CLIENT_CALLBACK,
            "code_verifier": verifier,
            "client_id": POST_CLIENT[0],
            "client_secret": POST_CLIENT[1],
        },
        auth=None,
    )
    assert response.status_code == 200
    _, claims = decode_unverified(response.json()["id_token"])
    assert claims["aud"] == POST_CLIENT[0]


def _client_assertion(
    key: SigningKey, audience: str, *, now: int, jti: str | None = None
) -> str:
    claims = {
        "iss": ASSERTION_KEY,
        "sub": ASSERTION_KEY,
        "aud": audience,
        "iat": now,
        "exp": now + 60,
        "jti": jti or secrets.token_urlsafe(8),
    }
    return key.sign(claims, typ="JWT")


async def test_private_key_jwt_assertion_checked(
    devidp: DevIdpHarness, assertion_key: SigningKey
) -> None:
    """A client assertion must name the token endpoint and may be used only once."""
    endpoint = f"{devidp.issuer}/oauth2/v1/token"
    now = int(devidp.clock())

    async def redeem(assertion: str) -> httpx.Response:
        code, verifier = await devidp.code_for(
            client_id=ASSERTION_KEY, redirect_uri=POST_CLIENT_CALLBACK
        )
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": POST_CLIENT_CALLBACK,
            "code_verifier": verifier,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        return await devidp.token(form, auth=None)

    assertion = _client_assertion(assertion_key, endpoint, now=now)
    assert (await redeem(assertion)).status_code == 200
    replayed = await redeem(assertion)
    assert replayed.status_code == 401
    wrong_audience = await redeem(
        _client_assertion(assertion_key, devidp.issuer, now=now)
    )
    assert wrong_audience.status_code == 401
    wrong_key = await redeem(
        _client_assertion(SigningKey.generate(), endpoint, now=now)
    )
    assert wrong_key.status_code == 401
    assert wrong_key.json()["error"] == "invalid_client"


async def test_token_unknown_grant_type_unsupported(devidp: DevIdpHarness) -> None:
    """An unknown grant_type gets unsupported_grant_type."""
    response = await devidp.token({"grant_type": "password"})
    assert response.json()["error"] == "unsupported_grant_type"


async def test_token_json_body_invalid_request(devidp: DevIdpHarness) -> None:
    """A JSON body instead of a form gets invalid_request, not a server error."""
    response = await devidp.http.post("/oauth2/v1/token", json={"grant_type": "x"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_authorize_without_auto_login_shows_user_picker(
    anyio_backend: str, devidp: DevIdpHarness, org_key: SigningKey
) -> None:
    """With auto_login off, the sign-in page posts the chosen user and redirects."""
    sock = bind_socket()
    issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = msgspec.structs.replace(devidp.settings, issuer=issuer, auto_login=False)
    app = create_devidp_app(settings, org_key=org_key)
    async with (
        run_app(app, sock=sock),
        httpx.AsyncClient(base_url=issuer) as http,
    ):
        _, challenge = pkce_pair()
        page = await http.get(
            "/oauth2/v1/authorize",
            params={
                "response_type": "code",
                "client_id": BASIC_CLIENT[0],
                "redirect_uri": GATEWAY_CALLBACK,
                "scope": "openid",
                "state": "st",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
        )
        assert page.status_code == 200
        assert "Bob Example" in page.text
        transaction = page.text.split("name='transaction' value='")[1].split("'")[0]
        response = await http.post(
            "/oauth2/v1/authorize/login",
            data={"transaction": transaction, "user": "bob"},
        )
        assert response.status_code == 302
        query = query_of(response.headers["location"])
        assert query["state"] == "st"
        assert "code" in query
        again = await http.post(
            "/oauth2/v1/authorize/login",
            data={"transaction": transaction, "user": "bob"},
        )
        assert again.status_code == 400
