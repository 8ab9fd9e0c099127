"""The callback completes a sign-in only in the browser that started it.

An attacker can start a sign-in for a client it registered, approve the
consent page in its own browser, and send the IdP URL it was redirected to
to a victim. The victim's browser then arrives at the callback with a valid
``state``, but without the cookie the gateway set in the attacker's browser.
The servers are those of the flow tests: the gateway and the dev IdP with
uvicorn on loopback. Each browser is an ``httpx.AsyncClient`` with its own
cookie jar.
"""

from __future__ import annotations

from collections.abc import Iterator
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import msgspec
import pytest
from tests.integration import test_oauth_flow
from tests.integration.test_oauth_flow import CLIENT_CALLBACK, Gateway, query_of

from gateway.config.model import OAuthConfig
from gateway.events import AuthorizationRejected, UserSignedIn
from gateway.oauth.clients import ClientRecord, ClientRegistry

pytestmark = pytest.mark.anyio

servers = test_oauth_flow.servers
gateway = test_oauth_flow.gateway

ATTACKER_CALLBACK = "https://attacker.example/cb"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def as_user(idp_url: str, login_hint: str) -> str:
    """The IdP URL with another ``login_hint``: the dev IdP's stand-in for SSO."""
    parts = urlsplit(idp_url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "login_hint"]
    query.append(("login_hint", login_hint))
    return urlunsplit(parts._replace(query=urlencode(query)))


def sign_in_cookies(response: httpx.Response) -> SimpleCookie:
    """The sign-in cookies a response sets, parsed with their attributes."""
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        if "signin" in header.split("=", 1)[0]:
            jar.load(header)
    return jar


async def victim_callback(gateway: Gateway, idp_url: str) -> httpx.Response:
    """Open ``idp_url`` in a fresh browser signed in as bob; return the callback."""
    async with httpx.AsyncClient() as victim:
        at_idp = await victim.get(as_user(idp_url, "bob"))
        assert at_idp.status_code == 302, at_idp.text
        back = at_idp.headers["location"]
        assert back.startswith(f"{gateway.url}/oauth2/callback")
        return await victim.get(back)


async def test_callback_other_browser_error_page(gateway: Gateway) -> None:
    """A sign-in approved in one browser and finished in another gets no code."""
    client = await gateway.register("cursor", redirect_uris=[ATTACKER_CALLBACK])
    page, _, _ = await gateway.authorize(client, redirect_uri=ATTACKER_CALLBACK)
    upstream = await gateway.consent(page)
    assert upstream.status_code == 302, upstream.text

    response = await victim_callback(gateway, upstream.headers["location"])

    assert response.status_code == 403
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    assert "not started in this browser" in response.text
    await gateway.settle()
    assert gateway.events_of(UserSignedIn) == []
    (rejected,) = gateway.events_of(AuthorizationRejected)
    assert rejected.reason == "sign_in_other_browser"
    assert rejected.client_id == client["client_id"]


async def test_callback_other_browser_state_used_up(gateway: Gateway) -> None:
    """After a refused callback the starting browser cannot finish either."""
    client = await gateway.register("cursor")
    page, _, _ = await gateway.authorize(client)
    upstream = await gateway.consent(page)
    refused = await victim_callback(gateway, upstream.headers["location"])
    assert refused.status_code == 403

    at_idp = await gateway.browser.get(upstream.headers["location"])
    again = await gateway.browser.get(at_idp.headers["location"])

    assert again.status_code == 400
    assert "location" not in again.headers


async def test_callback_same_browser_without_cookie_refused(gateway: Gateway) -> None:
    """The starting browser is refused too once its sign-in cookie is gone."""
    client = await gateway.register("cursor")
    page, _, _ = await gateway.authorize(client)
    upstream = await gateway.consent(page)
    gateway.browser.cookies.clear()

    response = await gateway.follow_idp(upstream)

    assert response.status_code == 403
    assert "location" not in response.headers


async def test_callback_wrong_cookie_value_refused(gateway: Gateway) -> None:
    """A sign-in cookie of the right name but another value is refused."""
    client = await gateway.register("cursor")
    page, _, _ = await gateway.authorize(client)
    upstream = await gateway.consent(page)
    (name,) = sign_in_cookies(upstream)
    gateway.browser.cookies.set(name, "guessed", path="/oauth2/callback")

    response = await gateway.follow_idp(upstream)

    assert response.status_code == 403
    assert "location" not in response.headers


async def test_consent_approve_sets_sign_in_cookie(gateway: Gateway) -> None:
    """The redirect to the IdP sets an HttpOnly, SameSite=Lax callback cookie."""
    client = await gateway.register("cursor")
    page, _, _ = await gateway.authorize(client)
    upstream = await gateway.consent(page)

    cookies = sign_in_cookies(upstream)

    assert len(cookies) == 1
    (morsel,) = cookies.values()
    assert len(morsel.value) >= 43
    assert morsel["path"] == "/oauth2/callback"
    assert morsel["httponly"] is True
    assert morsel["samesite"].lower() == "lax"
    assert morsel["secure"] == ""
    assert morsel["max-age"] == "600"


async def test_callback_success_clears_sign_in_cookie(gateway: Gateway) -> None:
    """A finished sign-in removes its cookie from the browser."""
    client = await gateway.register("cursor")
    sign_in = await gateway.sign_in(client)
    assert "code" in sign_in.params
    names = [name for name in gateway.browser.cookies if "signin" in name]
    assert names == []


async def test_callback_remembered_consent_other_browser_refused(
    gateway: Gateway,
) -> None:
    """A sign-in that skipped the page by remembered consent is bound as well."""
    client = await gateway.register("cursor")
    await gateway.sign_in(client)
    response, _, _ = await gateway.authorize(client)
    assert response.status_code == 302
    assert sign_in_cookies(response)

    refused = await victim_callback(gateway, response.headers["location"])

    assert refused.status_code == 403
    assert "location" not in refused.headers


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


async def test_callback_pre_approved_other_browser_refused(
    gateway: Gateway, pre_approved: str
) -> None:
    """A pre-approved client's sign-in, which shows no page, is bound as well."""
    await ClientRegistry(gateway.runtime.store).save(
        ClientRecord(
            client_id=pre_approved,
            client_name="cursor",
            redirect_uris=[CLIENT_CALLBACK],
            created_at=0,
        )
    )
    response, _, _ = await gateway.authorize({"client_id": pre_approved})
    assert response.status_code == 302
    assert sign_in_cookies(response)

    refused = await victim_callback(gateway, response.headers["location"])
    at_idp = await gateway.browser.get(response.headers["location"])
    own = await gateway.browser.get(at_idp.headers["location"])

    assert refused.status_code == 403
    assert own.status_code == 400  # the refused attempt used the state up


async def test_callback_pre_approved_same_browser_completes(
    gateway: Gateway, pre_approved: str
) -> None:
    """The browser that started a pre-approved sign-in finishes it."""
    await ClientRegistry(gateway.runtime.store).save(
        ClientRecord(
            client_id=pre_approved,
            client_name="cursor",
            redirect_uris=[CLIENT_CALLBACK],
            created_at=0,
        )
    )
    response, _, state = await gateway.authorize({"client_id": pre_approved})

    final = await gateway.follow_idp(response)

    assert final.status_code == 302
    params = query_of(final.headers["location"])
    assert params["state"] == state
    assert "code" in params
