"""The callback's check of the IdP's ``iss`` response parameter (RFC 9207).

The dev IdP advertises ``authorization_response_iss_parameter_supported``,
so a response without ``iss`` must be rejected: it may come from another
IdP in a mix-up attack. The test browser removes ``iss`` from the IdP's
redirect before following it, as an attacker relaying a response would. The
servers are those of the flow tests, with uvicorn on loopback.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from tests.integration import test_oauth_flow
from tests.integration.test_oauth_flow import Gateway, query_of

from gateway.events import AuthorizationRejected, UserSignedIn
from gateway.oauth.callback import response_issuer_problem

pytestmark = pytest.mark.anyio

servers = test_oauth_flow.servers
gateway = test_oauth_flow.gateway


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def with_iss(url: str, iss: str | None) -> str:
    """``url`` with its ``iss`` parameter replaced, or removed when None."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "iss"]
    if iss is not None:
        query.append(("iss", iss))
    return urlunsplit(parts._replace(query=urlencode(query)))


async def callback_with_iss(gateway: Gateway, iss: str | None) -> httpx.Response:
    client = await gateway.register("cursor")
    page, _, _ = await gateway.authorize(client)
    upstream = await gateway.consent(page)
    at_idp = await gateway.browser.get(upstream.headers["location"])
    back = at_idp.headers["location"]
    assert query_of(back)["iss"] == gateway.idp
    return await gateway.browser.get(with_iss(back, iss))


async def test_callback_missing_iss_advertised_rejected(gateway: Gateway) -> None:
    """An IdP that advertises iss must send it; a response without it fails."""
    response = await callback_with_iss(gateway, None)

    assert response.status_code == 302
    params = query_of(response.headers["location"])
    assert params["error"] == "server_error"
    assert "code" not in params
    await gateway.settle()
    assert gateway.events_of(UserSignedIn) == []
    (rejected,) = gateway.events_of(AuthorizationRejected)
    assert rejected.reason == "upstream_issuer_missing"


async def test_callback_other_iss_rejected(gateway: Gateway) -> None:
    """A response naming another issuer fails as a mix-up."""
    response = await callback_with_iss(gateway, "https://other-idp.example")

    params = query_of(response.headers["location"])
    assert params["error"] == "server_error"
    await gateway.settle()
    (rejected,) = gateway.events_of(AuthorizationRejected)
    assert rejected.reason == "upstream_issuer_mismatch"


async def test_callback_matching_iss_signs_in(gateway: Gateway) -> None:
    """The IdP's own issuer passes the check."""
    response = await callback_with_iss(gateway, gateway.idp)

    assert "code" in query_of(response.headers["location"])


@pytest.mark.parametrize(
    ("iss", "advertised", "expected"),
    [
        (None, True, "upstream_issuer_missing"),
        (None, False, None),
        ("https://idp.example", True, None),
        ("https://idp.example", False, None),
        ("https://other.example", False, "upstream_issuer_mismatch"),
        ("", True, "upstream_issuer_mismatch"),
    ],
)
def test_response_issuer_problem_cases(
    iss: str | None, advertised: bool, expected: str | None
) -> None:
    """iss may be absent only when the IdP does not advertise it."""
    assert response_issuer_problem(iss, "https://idp.example", advertised) == expected
