"""Remembered consent per user, client and backend, and configured pre-approval."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest
from tests.integration import test_oauth_flow
from tests.integration.test_oauth_flow import Gateway, query_of

from gateway.config.model import OAuthConfig
from gateway.events import AuthorizationRejected, ConsentGranted
from gateway.oauth.clients import ClientRecord, ClientRegistry
from gateway.oauth.consents import COOKIE_NAME, ConsentStore

pytestmark = pytest.mark.anyio

# The sign-in servers of the flow tests, started once for this module too.
servers = test_oauth_flow.servers
gateway = test_oauth_flow.gateway


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def test_consent_remembered_second_sign_in_skips_page(gateway: Gateway) -> None:
    """After one approval the same browser goes straight to the IdP."""
    client = await gateway.register("cursor")
    await gateway.sign_in(client)
    assert gateway.browser.cookies.get(COOKIE_NAME)
    response, _, state = await gateway.authorize(client)
    assert response.status_code == 302
    assert response.headers["location"].startswith(gateway.idp)
    final = await gateway.follow_idp(response)
    params = query_of(final.headers["location"])
    assert "code" in params
    assert params["state"] == state
    await gateway.settle()
    reasons = [event.reason for event in gateway.events_of(ConsentGranted)]
    assert reasons == [None, "remembered_consent"]


async def test_consent_remembered_per_client(gateway: Gateway) -> None:
    """An approval of one client does not cover another client."""
    first = await gateway.register("cursor")
    await gateway.sign_in(first)
    second = await gateway.register("cursor")
    response, _, _ = await gateway.authorize(second)
    assert response.status_code == 200
    assert "Allow" in response.text


async def test_consent_remembered_per_backend(gateway: Gateway) -> None:
    """An approval for one backend does not cover another backend."""
    client = await gateway.register("cursor")
    await gateway.sign_in(client)
    response, _, _ = await gateway.authorize(
        client, resource=gateway.resource("partners")
    )
    assert response.status_code == 200
    assert "Allow" in response.text


async def test_consent_denied_not_remembered(gateway: Gateway) -> None:
    """A denial leaves no approval behind."""
    client = await gateway.register("cursor")
    page, _, _ = await gateway.authorize(client)
    await gateway.consent(page, "deny")
    response, _, _ = await gateway.authorize(client)
    assert response.status_code == 200
    assert COOKIE_NAME not in gateway.browser.cookies


async def test_consent_revoked_page_shown_again(gateway: Gateway) -> None:
    """A revoked approval brings the consent page back."""
    client = await gateway.register("cursor")
    await gateway.sign_in(client)
    consents = ConsentStore(gateway.runtime.store)
    record = await consents.get(gateway.idp, "00u_alice", client["client_id"])
    assert record is not None
    assert record.backends == ["employees"]
    await consents.revoke(gateway.idp, "00u_alice", client["client_id"])
    response, _, _ = await gateway.authorize(client)
    assert response.status_code == 200
    assert "Allow" in response.text


async def test_consent_remembered_other_user_rejected(gateway: Gateway) -> None:
    """A skipped page is no consent for another user who signs in."""
    client = await gateway.register("cursor")
    await gateway.sign_in(client)
    response, _, state = await gateway.authorize(client, login_hint="bob")
    final = await gateway.follow_idp(response)
    params = query_of(final.headers["location"])
    assert params["error"] == "access_denied"
    assert params["state"] == state
    assert "code" not in params
    await gateway.settle()
    (rejected,) = gateway.events_of(AuthorizationRejected)
    assert rejected.reason == "consent_user_mismatch"
    again, _, _ = await gateway.authorize(client, login_hint="bob")
    assert again.status_code == 200
    assert "Allow" in again.text


@pytest.fixture
def pre_approved(gateway: Gateway) -> Iterator[str]:
    """Configure the client id ``configured-client`` as pre-approved."""
    runtime = gateway.runtime
    original = runtime.config
    runtime.config = msgspec.structs.replace(
        original, oauth=OAuthConfig(pre_approved_clients=["configured-client"])
    )
    yield "configured-client"
    runtime.config = original


async def test_consent_configured_pre_approved_client_skips_page(
    gateway: Gateway, pre_approved: str
) -> None:
    """A client listed in oauth.pre_approved_clients never sees the page."""
    await ClientRegistry(gateway.runtime.store).save(
        ClientRecord(
            client_id=pre_approved,
            client_name="cursor",
            redirect_uris=[test_oauth_flow.CLIENT_CALLBACK],
            created_at=0,
        )
    )
    response, _, _ = await gateway.authorize({"client_id": pre_approved})
    assert response.status_code == 302
    assert response.headers["location"].startswith(gateway.idp)
