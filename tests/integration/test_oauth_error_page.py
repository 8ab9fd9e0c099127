"""Errors at authorize for unverified clients: a page with a link, no redirect.

Anyone can register a client with any redirect URI, so redirecting an
authorize error there at once would make the gateway an open redirector
(RFC 9700 section 4.11.2). For such clients the gateway shows the error and
a link back; the tests follow that link as a user would click it. Verified
and pre-registered clients, and errors after the user acted, keep the
automatic redirect. The servers are those of the flow tests: the gateway
and the dev IdP with uvicorn on loopback.
"""

from __future__ import annotations

import pytest
from tests.integration import test_oauth_flow
from tests.integration.test_oauth_flow import (
    CLIENT_CALLBACK,
    Gateway,
    error_link,
    query_of,
)

from gateway.events import AuthorizationRejected
from gateway.oauth.clients import ClientRecord, ClientRegistry

pytestmark = pytest.mark.anyio

servers = test_oauth_flow.servers
gateway = test_oauth_flow.gateway

PHISH = "https://phish.example/login"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def test_authorize_registered_client_error_page_not_redirect(
    gateway: Gateway,
) -> None:
    """A bare authorize request for a registered client shows a page."""
    client = await gateway.register("cursor", redirect_uris=[PHISH])

    response = await gateway.browser.get(
        "/oauth2/authorize", params={"client_id": client["client_id"]}
    )

    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert "invalid_request" in response.text
    assert "Return to phish.example" in response.text
    params = query_of(error_link(response))
    assert params["error"] == "invalid_request"
    assert params["iss"] == gateway.url
    await gateway.settle()
    (rejected,) = gateway.events_of(AuthorizationRejected)
    assert rejected.reason == "invalid_request"


async def test_authorize_error_link_goes_to_redirect_uri(gateway: Gateway) -> None:
    """The link carries the error, state and iss to the client's redirect URI."""
    client = await gateway.register("cursor", redirect_uris=[PHISH])

    response, _, state = await gateway.authorize(
        client, redirect_uri=PHISH, scope="mcp unknown:scope"
    )

    location = error_link(response)
    assert location.startswith(PHISH + "?")
    params = query_of(location)
    assert params["error"] == "invalid_scope"
    assert params["state"] == state
    assert params["iss"] == gateway.url


async def test_authorize_agent_not_allowed_unverified_page(gateway: Gateway) -> None:
    """access_denied for an unmatched client name is shown, not redirected."""
    client = await gateway.register("mystery-tool", redirect_uris=[PHISH])

    response, _, _ = await gateway.authorize(client, redirect_uri=PHISH)

    assert response.status_code == 403
    assert "location" not in response.headers
    assert "access_denied" in response.text
    assert query_of(error_link(response))["error"] == "access_denied"


async def test_authorize_page_escapes_description_and_link(gateway: Gateway) -> None:
    """Values from the request are escaped in the page."""
    client = await gateway.register("cursor")

    response, _, _ = await gateway.authorize(
        client, scope='"><script>alert(1)</script>'
    )

    assert "<script>" not in response.text
    assert "&lt;script&gt;" in response.text or "%3Cscript%3E" in response.text


async def test_consent_denied_unverified_client_still_redirects(
    gateway: Gateway,
) -> None:
    """After the user clicked Deny, the error goes back automatically."""
    client = await gateway.register("cursor", redirect_uris=[PHISH])
    page, _, _ = await gateway.authorize(client, redirect_uri=PHISH)

    response = await gateway.consent(page, "deny")

    assert response.status_code == 302
    assert response.headers["location"].startswith(PHISH)
    assert query_of(response.headers["location"])["error"] == "access_denied"


async def save_pre_registered(gateway: Gateway, **fields: object) -> str:
    record = ClientRecord(
        client_id="configured-client",
        client_name="cursor",
        redirect_uris=[CLIENT_CALLBACK],
        created_at=0,
        pre_registered=True,
        **fields,  # type: ignore[arg-type]
    )
    await ClientRegistry(gateway.runtime.store).save(record)
    return record.client_id


async def test_authorize_pre_registered_public_client_error_redirects(
    gateway: Gateway,
) -> None:
    """A pre-registered client's redirect URI is trusted, so errors redirect."""
    client_id = await save_pre_registered(gateway)

    response, _, _ = await gateway.authorize(
        {"client_id": client_id}, code_challenge_method="plain"
    )

    assert response.status_code == 302
    assert query_of(response.headers["location"])["error"] == "invalid_request"


async def test_authorize_pre_registered_confidential_client_error_redirects(
    gateway: Gateway,
) -> None:
    """A verified client's errors redirect at once."""
    client_id = await save_pre_registered(
        gateway, token_endpoint_auth_method="client_secret_basic", secret_hash="x"
    )

    response, _, _ = await gateway.authorize({"client_id": client_id}, state=None)

    assert response.status_code == 302
    assert query_of(response.headers["location"])["error"] == "invalid_request"
