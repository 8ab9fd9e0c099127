"""Okta's own ID-JAG SDK (``okta-ai-sdk-proto``) against the dev IdP.

The SDK is synchronous (``requests``), so it runs in a worker thread while the
dev IdP serves on 127.0.0.1 in the test's event loop. It authenticates with
``private_key_jwt`` as an Okta AI agent does (``principal_id`` and a private
JWK). A recording wrapper around the dev IdP keeps each token request's form,
so the gateway's request can be compared with the SDK's parameter by
parameter.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
import pytest
from _devidp_fixtures import decode_unverified
from _exchange_pkjwt import (
    AI_AGENT_CLIENT,
    EMPLOYEES_TOKEN_PATH,
    ORG_TOKEN_PATH,
    PKJWT_CLIENT,
    PkjwtIdp,
    private_jwk,
    running_pkjwt_idp,
)
from _exchange_setup import CURSOR
from okta_ai_sdk import AuthServerTokenRequest, OktaAIConfig, OktaAISDK

pytestmark = pytest.mark.anyio

T = TypeVar("T")

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
SCOPE = "employees:read employees:write"
SDK_PARAMETERS = (
    "grant_type",
    "requested_token_type",
    "subject_token_type",
    "audience",
    "scope",
    "client_assertion_type",
)
ASSERTION_CLAIMS = ("iss", "sub", "aud", "exp", "jti")


@pytest.fixture
async def idp(anyio_backend: str, tmp_path: pathlib.Path) -> AsyncIterator[PkjwtIdp]:
    async with running_pkjwt_idp(tmp_path) as value:
        yield value


def okta_sdk(idp: PkjwtIdp, client_id: str = PKJWT_CLIENT) -> OktaAISDK:
    """Return the SDK configured as a client registered at the dev IdP by key."""
    return OktaAISDK(
        OktaAIConfig(
            okta_domain=idp.issuer,
            client_id=client_id,
            principal_id=client_id,
            private_jwk=private_jwk(idp.org_client_key),
            timeout=10_000,
        )
    )


async def in_thread(sdk: OktaAISDK, call: Callable[[], T]) -> T:
    """Run a blocking SDK call off the event loop that serves the dev IdP."""
    try:
        return await anyio.to_thread.run_sync(call)
    finally:
        for client in (sdk.cross_app_access, sdk.token_exchange):
            client.session.close()


def exchange_forms(idp: PkjwtIdp) -> list[dict[str, str]]:
    return [
        form
        for form in idp.recorder.at(ORG_TOKEN_PATH)
        if form["grant_type"] == TOKEN_EXCHANGE
    ]


async def test_okta_sdk_exchange_devidp_issues_verified_id_jag(idp: PkjwtIdp) -> None:
    """The SDK's token exchange succeeds and its own verification accepts the ID-JAG."""
    async with idp.setup() as setup:
        id_token = await idp.id_token(setup)
    sdk = okta_sdk(idp)
    audience = idp.harness.employees_issuer

    def run() -> tuple[Any, Any]:
        issued = sdk.cross_app_access.exchange_token(
            token=id_token, audience=audience, scope=SCOPE
        )
        verified = sdk.cross_app_access.verify_id_jag_token(
            issued.access_token, audience=audience
        )
        return issued, verified

    issued, verified = await in_thread(sdk, run)

    assert issued.issued_token_type == "urn:ietf:params:oauth:token-type:id-jag"
    assert verified.valid, verified.error
    assert verified.iss == idp.issuer
    assert verified.aud == audience
    assert verified.sub == "00u_alice"
    assert verified.email == "alice@example.com"
    header, _ = decode_unverified(issued.access_token)
    assert header["typ"] == "oauth-id-jag+jwt"


async def test_okta_sdk_verification_foreign_audience_rejected(idp: PkjwtIdp) -> None:
    """The SDK's verification rejects an ID-JAG checked against another audience."""
    async with idp.setup() as setup:
        id_token = await idp.id_token(setup)
    sdk = okta_sdk(idp)
    audience = idp.harness.employees_issuer

    def run() -> Any:
        issued = sdk.cross_app_access.exchange_token(
            token=id_token, audience=audience, scope=SCOPE
        )
        return sdk.cross_app_access.verify_id_jag_token(
            issued.access_token, audience=f"{audience}-eu"
        )

    verified = await in_thread(sdk, run)

    assert not verified.valid
    assert "audience" in (verified.error or "").lower()


async def test_gateway_exchange_request_carries_every_sdk_parameter(
    idp: PkjwtIdp,
) -> None:
    """The gateway sends what the SDK sends, same assertion claims, plus resource."""
    async with idp.setup() as setup:
        principal = await idp.sign_in(setup)
        await setup.service.obtain(
            backend="employees", principal=principal, agent=CURSOR
        )
        id_token = await idp.id_token(setup)
    sdk = okta_sdk(idp)
    audience = idp.harness.employees_issuer
    await in_thread(
        sdk,
        lambda: sdk.cross_app_access.exchange_token(
            token=id_token, audience=audience, scope=SCOPE
        ),
    )

    gateway_form, sdk_form = exchange_forms(idp)
    for name in SDK_PARAMETERS:
        assert name in sdk_form, name
        assert gateway_form.get(name) == sdk_form[name], name
    assert set(sdk_form) - {"subject_token", "client_assertion"} <= set(gateway_form)
    assert "resource" not in sdk_form
    assert gateway_form["resource"] == idp.harness.employees_resource

    _, gateway_claims = decode_unverified(gateway_form["client_assertion"])
    _, sdk_claims = decode_unverified(sdk_form["client_assertion"])
    for claim in ASSERTION_CLAIMS:
        assert claim in sdk_claims, claim
        assert claim in gateway_claims, claim
    for claim in ("iss", "sub", "aud"):
        assert gateway_claims[claim] == sdk_claims[claim], claim
    assert (
        gateway_claims["exp"] - gateway_claims["iat"]
        == sdk_claims["exp"] - sdk_claims["iat"]
    )
    assert gateway_claims["jti"] != sdk_claims["jti"]


async def test_okta_sdk_verification_accepts_gateway_id_jag(idp: PkjwtIdp) -> None:
    """The ID-JAG the gateway obtained and redeemed passes the SDK's verification."""
    async with idp.setup() as setup:
        principal = await idp.sign_in(setup)
        await setup.service.obtain(
            backend="employees", principal=principal, agent=CURSOR
        )
    (redeemed,) = idp.recorder.at(EMPLOYEES_TOKEN_PATH)
    sdk = okta_sdk(idp)
    audience = idp.harness.employees_issuer

    verified = await in_thread(
        sdk,
        lambda: sdk.cross_app_access.verify_id_jag_token(
            redeemed["assertion"], audience=audience
        ),
    )

    assert verified.valid, verified.error
    assert verified.aud == audience
    assert verified.payload is not None
    assert verified.payload["resource"] == idp.harness.employees_resource


async def test_okta_sdk_redeems_id_jag_at_devidp_backend(idp: PkjwtIdp) -> None:
    """The SDK's whole flow as an AI agent: exchange, redeem and verify both tokens."""
    async with idp.setup(client_id=AI_AGENT_CLIENT) as setup:
        id_token = await idp.id_token(setup)
    sdk = okta_sdk(idp, client_id=AI_AGENT_CLIENT)
    audience = idp.harness.employees_issuer
    resource = idp.harness.employees_resource

    def run() -> Any:
        issued = sdk.cross_app_access.exchange_token(
            token=id_token, audience=audience, scope="employees:read"
        )
        redeemed = sdk.cross_app_access.exchange_id_jag_for_auth_server_token(
            AuthServerTokenRequest(
                id_jag_token=issued.access_token, authorization_server_id="employees"
            )
        )
        return sdk.cross_app_access.verify_auth_server_token(
            redeemed.access_token,
            authorization_server_id="employees",
            audience=resource,
        )

    verified = await in_thread(sdk, run)

    assert verified.valid, verified.error
    assert verified.iss == audience
    assert verified.sub == "00u_alice"
    assert verified.payload is not None
    assert verified.payload["client_id"] == AI_AGENT_CLIENT
