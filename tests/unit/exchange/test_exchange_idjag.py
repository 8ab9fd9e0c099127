"""The two ID-JAG token requests: parameters, response checks and error mapping.

The dev IdP only ever responds correctly, so these tests use an httpx
``MockTransport`` for the responses no real server in this repository sends:
malformed responses, 5xx, ``Retry-After``, timeouts. The happy path and the
OAuth errors a real IdP returns are covered against the dev IdP in
``tests/integration/test_exchange_devidp.py``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import msgspec
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.errors import ExchangeError
from gateway.exchange import idjag as idjag_module
from gateway.exchange.idjag import (
    IdJagExchanger,
    ServerUnavailableError,
    check_id_jag,
)
from tests.unit.exchange.support import (
    AS_ISSUER,
    AS_TOKEN,
    IDP_TOKEN,
    RESOURCE,
    FixedUpstream,
    id_jag_auth,
    jwt_bearer_ok,
    make_id_jag,
    token_exchange_ok,
)

pytestmark = pytest.mark.anyio

Answer = Callable[[httpx.Request], httpx.Response]


class Servers:
    """Response functions per token endpoint, and every request received."""

    def __init__(self) -> None:
        self.idp: Answer = lambda request: token_exchange_ok()
        self.authorization_server: Answer = lambda request: jwt_bearer_ok()
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if str(request.url) == IDP_TOKEN:
            return self.idp(request)
        if str(request.url) == AS_TOKEN:
            return self.authorization_server(request)
        return httpx.Response(404)

    def form(self, index: int) -> dict[str, str]:
        parsed = parse_qs(self.requests[index].content.decode())
        return {key: values[0] for key, values in parsed.items()}


@pytest.fixture
def servers() -> Servers:
    return Servers()


@pytest.fixture
async def exchanger(servers: Servers) -> AsyncIterator[IdJagExchanger]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(servers)) as http:
        yield IdJagExchanger(FixedUpstream(), http)


async def test_exchange_sends_both_requests_returns_token(
    servers: Servers, exchanger: IdJagExchanger
) -> None:
    """A successful flow sends the RFC 8693 and RFC 7523 parameters."""
    token = await exchanger.exchange(
        backend="employees", auth=id_jag_auth(), id_token="id-token-1"
    )

    assert token.access_token == "backend-token-1"
    assert token.expires_in == 3600
    assert token.scope == "employees:read"
    assert len(servers.requests) == 2
    first = servers.form(0)
    assert first == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "requested_token_type": "urn:ietf:params:oauth:token-type:id-jag",
        "subject_token": "id-token-1",
        "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
        "audience": AS_ISSUER,
        "resource": RESOURCE,
        "scope": "employees:read",
        "client_id": "agent-proxy",
    }
    assert servers.requests[0].headers["authorization"].startswith("Basic ")
    second = servers.form(1)
    assert second["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert second["assertion"].count(".") == 2
    assert second["scope"] == "employees:read"
    assert "client_secret" not in second


async def test_exchange_basic_auth_form_encodes_credentials(
    servers: Servers, exchanger: IdJagExchanger
) -> None:
    """Basic credentials are form-encoded first (RFC 6749 section 2.3.1)."""
    auth = id_jag_auth(client_id="gw:1", client_secret="a b/c")
    await exchanger.exchange(backend="employees", auth=auth, id_token="t")

    header = servers.requests[1].headers["authorization"].removeprefix("Basic ")
    assert base64.b64decode(header).decode() == "gw%3A1:a%20b%2Fc"


async def test_exchange_client_secret_post_sends_form_credentials(
    servers: Servers, exchanger: IdJagExchanger
) -> None:
    """``client_secret_post`` puts the credentials in the form, not a header."""
    auth = id_jag_auth(token_endpoint_auth_method="client_secret_post", scopes=[])
    await exchanger.exchange(backend="employees", auth=auth, id_token="t")

    second = servers.form(1)
    assert second["client_id"] == "agent-proxy-at-employees"
    assert second["client_secret"] == "employees-dev-secret"
    assert "scope" not in second
    assert "authorization" not in servers.requests[1].headers
    assert "scope" not in servers.form(0)


@pytest.mark.parametrize("token_type", ["N_A", "Bearer", "urn:example:other"])
async def test_exchange_any_token_type_tolerated(
    servers: Servers, exchanger: IdJagExchanger, token_type: str
) -> None:
    """Step 1 branches on ``issued_token_type``, whatever its ``token_type``."""
    servers.idp = lambda request: token_exchange_ok(token_type=token_type)
    token = await exchanger.exchange(backend="b", auth=id_jag_auth(), id_token="t")
    assert token.access_token == "backend-token-1"


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        (
            {"issued_token_type": "urn:ietf:params:oauth:token-type:access_token"},
            "issued_token_type",
        ),
        ({"issued_token_type": None}, "issued_token_type"),
        ({"access_token": ""}, "no access_token"),
        ({"access_token": "not-a-jwt"}, "not a readable JWT"),
    ],
)
async def test_exchange_malformed_idp_response_invalid_response(
    servers: Servers,
    exchanger: IdJagExchanger,
    fields: dict[str, Any],
    fragment: str,
) -> None:
    """A 200 from the IdP that is not an ID-JAG response is never redeemed."""
    servers.idp = lambda request: token_exchange_ok(**fields)
    with pytest.raises(ExchangeError) as caught:
        await exchanger.exchange(backend="b", auth=id_jag_auth(), id_token="t")

    assert caught.value.oauth_error == "invalid_response"
    assert caught.value.reason == "invalid_response"
    assert caught.value.step == "token_exchange"
    assert fragment in str(caught.value)
    assert len(servers.requests) == 1


async def test_exchange_wrong_aud_id_jag_not_sent(
    servers: Servers, exchanger: IdJagExchanger
) -> None:
    """An ID-JAG for another authorization server never leaves the gateway."""
    other = make_id_jag(aud=f"{AS_ISSUER}-eu")
    servers.idp = lambda request: token_exchange_ok(other)
    with pytest.raises(ExchangeError) as caught:
        await exchanger.exchange(backend="b", auth=id_jag_auth(), id_token="t")

    assert caught.value.oauth_error == "invalid_response"
    assert "aud" in str(caught.value)
    assert other not in str(caught.value)
    assert len(servers.requests) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"access_token": "x", "token_type": "DPoP", "expires_in": 60},
        {"access_token": "x", "expires_in": 60},
        {"token_type": "Bearer", "expires_in": 60},
        {"access_token": "x", "token_type": "Bearer", "expires_in": 0},
        {"access_token": "x", "token_type": "Bearer", "expires_in": "3600"},
        {"access_token": "x", "token_type": "Bearer", "expires_in": True},
    ],
)
async def test_exchange_malformed_as_response_invalid_response(
    servers: Servers, exchanger: IdJagExchanger, body: dict[str, object]
) -> None:
    """A JWT-bearer response without a usable Bearer token is rejected."""
    servers.authorization_server = lambda request: httpx.Response(200, json=body)
    with pytest.raises(ExchangeError) as caught:
        await exchanger.exchange(backend="b", auth=id_jag_auth(), id_token="t")

    assert caught.value.oauth_error == "invalid_response"
    assert caught.value.step == "jwt_bearer"


async def test_exchange_lowercase_bearer_accepted(
    servers: Servers, exchanger: IdJagExchanger
) -> None:
    """``token_type`` is compared case-insensitively (RFC 6749 section 7.1)."""
    servers.authorization_server = lambda request: jwt_bearer_ok(token_type="bearer")
    token = await exchanger.exchange(backend="b", auth=id_jag_auth(), id_token="t")
    assert token.access_token == "backend-token-1"


async def test_exchange_missing_expires_in_uses_default(
    servers: Servers, exchanger: IdJagExchanger
) -> None:
    """A token without ``expires_in`` is assumed to live 300 seconds."""
    servers.authorization_server = lambda request: httpx.Response(
        200, json={"access_token": "x", "token_type": "Bearer"}
    )
    token = await exchanger.exchange(backend="b", auth=id_jag_auth(), id_token="t")
    assert token.expires_in == 300
    assert token.scope is None


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [
        (503, {"retry-after": "120"}, 120),
        (500, {}, 30),
        (429, {"retry-after": "5"}, 5),
        (502, {"retry-after": "soon"}, 30),
        (503, {"retry-after": "999999"}, 3600),
    ],
)
async def test_exchange_idp_5xx_idp_unavailable(
    servers: Servers,
    exchanger: IdJagExchanger,
    status: int,
    headers: dict[str, str],
    retry_after: int,
) -> None:
    """5xx and 429 from the IdP are an outage with a bounded ``retry_after``."""
    servers.idp = lambda request: httpx.Response(status, headers=headers, text="busy")
    with pytest.raises(ServerUnavailableError) as caught:
        await exchanger.exchange(backend="b", auth=id_jag_auth(), id_token="t")

    assert caught.value.reason == "idp_unavailable"
    assert caught.value.step == "token_exchange"
    assert caught.value.retry_after == retry_after


async def test_exchange_retry_after_http_date_parsed(
    servers: Servers, exchanger: IdJagExchanger
) -> None:
    """A ``Retry-After`` HTTP date becomes the seconds until that date."""
    when = datetime.now(UTC) + timedelta(seconds=90)
    header = {"retry-after": format_datetime(when, usegmt=True)}
    servers.authorization_server = lambda request: httpx.Response(503, headers=header)
    with pytest.raises(ServerUnavailableError) as caught:
        await exchanger.exchange(backend="b", auth=id_jag_auth(), id_token="t")

    assert caught.value.reason == "authorization_server_unavailable"
    assert caught.value.step == "jwt_bearer"
    assert caught.value.retry_after is not None
    assert 85 <= caught.value.retry_after <= 91


async def test_exchange_timeout_idp_unavailable(
    servers: Servers, exchanger: IdJagExchanger
) -> None:
    """A timed-out IdP call is an outage, suggested retry 30 seconds."""

    def time_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    servers.idp = time_out
    with pytest.raises(ServerUnavailableError) as caught:
        await exchanger.exchange(backend="b", auth=id_jag_auth(), id_token="t")

    assert caught.value.reason == "idp_unavailable"
    assert caught.value.retry_after == 30
    assert "timed out" in str(caught.value)


@pytest.mark.parametrize(
    ("step", "error", "reason"),
    [
        ("token_exchange", "invalid_grant", "reauthentication_required"),
        (
            "token_exchange",
            "insufficient_user_authentication",
            "reauthentication_required",
        ),
        ("token_exchange", "invalid_target", "invalid_target"),
        ("token_exchange", "unauthorized_client", "unauthorized_client"),
        ("token_exchange", "invalid_client", "invalid_client"),
        ("token_exchange", "invalid_scope", "invalid_scope"),
        ("token_exchange", "invalid_request", "exchange_failed"),
        ("jwt_bearer", "invalid_grant", "invalid_grant"),
        ("jwt_bearer", "invalid_client", "invalid_client"),
    ],
)
async def test_exchange_oauth_error_mapped_to_reason(
    servers: Servers, exchanger: IdJagExchanger, step: str, error: str, reason: str
) -> None:
    """Each RFC 6749 error code maps to its stable reason, per step."""
    status = 401 if error == "invalid_client" else 400
    body = {"error": error, "error_description": "refused\nfor a test"}

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    if step == "token_exchange":
        servers.idp = refuse
    else:
        servers.authorization_server = refuse
    with pytest.raises(ExchangeError) as caught:
        await exchanger.exchange(backend="b", auth=id_jag_auth(), id_token="t")

    assert caught.value.oauth_error == error
    assert caught.value.step == step
    assert caught.value.reason == reason
    assert "refused for a test" in str(caught.value)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(400, text="<html>bad</html>"),
        httpx.Response(400, json={"message": "no error code"}),
        httpx.Response(200, json=["not", "an", "object"]),
        httpx.Response(302, headers={"location": "http://127.0.0.1:9/login"}),
    ],
)
async def test_exchange_unreadable_response_invalid_response(
    servers: Servers, exchanger: IdJagExchanger, response: httpx.Response
) -> None:
    """A response that is neither a token nor an OAuth error is invalid."""
    servers.idp = lambda request: response
    with pytest.raises(ExchangeError) as caught:
        await exchanger.exchange(backend="b", auth=id_jag_auth(), id_token="t")

    assert caught.value.oauth_error == "invalid_response"
    assert caught.value.step == "token_exchange"


def test_check_id_jag_valid_assertion_passes() -> None:
    """A well-formed ID-JAG for the configured server and resource passes."""
    check_id_jag(make_id_jag(), id_jag_auth())


@pytest.mark.parametrize(
    ("header", "claims"),
    [
        ({}, {"aud": [AS_ISSUER]}),
        ({}, {"resource": None}),
        ({}, {"resource": [RESOURCE]}),
        ({"typ": "application/oauth-id-jag+jwt"}, {}),
        ({"typ": "OAUTH-ID-JAG+JWT"}, {}),
    ],
)
def test_check_id_jag_accepted_variants_pass(
    header: dict[str, object], claims: dict[str, object]
) -> None:
    """One-element ``aud``, no ``resource`` and typ spellings are accepted."""
    check_id_jag(make_id_jag(header=header, **claims), id_jag_auth())


@pytest.mark.parametrize(
    ("header", "claims", "fragment"),
    [
        ({"typ": "JWT"}, {}, "typ"),
        ({}, {"aud": f"{AS_ISSUER}/"}, "aud"),
        ({}, {"aud": AS_ISSUER + "-eu"}, "aud"),
        ({}, {"aud": [AS_ISSUER, "http://127.0.0.1:9/other"]}, "aud"),
        ({}, {"aud": None}, "aud"),
        ({}, {"resource": "http://127.0.0.1:8001/other"}, "resource"),
        ({}, {"resource": [RESOURCE, "http://127.0.0.1:8001/x"]}, "resource"),
        ({}, {"exp": int(time.time()) - 1}, "exp"),
        ({}, {"exp": None}, "exp"),
        ({}, {"exp": "tomorrow"}, "exp"),
    ],
)
def test_check_id_jag_mismatch_invalid_response(
    header: dict[str, object], claims: dict[str, object], fragment: str
) -> None:
    """Each failed ID-JAG check names its claim and stops the exchange."""
    assertion = make_id_jag(header=header, **claims)
    with pytest.raises(ExchangeError) as caught:
        check_id_jag(assertion, id_jag_auth())

    assert caught.value.oauth_error == "invalid_response"
    assert fragment in str(caught.value)


def test_check_id_jag_missing_typ_invalid_response() -> None:
    """An ID-JAG whose header has no ``typ`` is rejected."""
    head, payload, signature = make_id_jag().split(".")
    header = msgspec.json.decode(
        base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
    )
    del header["typ"]
    encoded = base64.urlsafe_b64encode(msgspec.json.encode(header)).rstrip(b"=")
    with pytest.raises(ExchangeError) as caught:
        check_id_jag(f"{encoded.decode()}.{payload}.{signature}", id_jag_auth())

    assert "typ" in str(caught.value)


async def test_exchange_spans_per_step_without_tokens(
    servers: Servers, exchanger: IdJagExchanger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each token request gets its own span, and no span carries a token."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(idjag_module, "_tracer", provider.get_tracer("test"))

    await exchanger.exchange(backend="employees", auth=id_jag_auth(), id_token="t-1")

    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"idjag token_exchange", "idjag jwt_bearer"}
    for span in spans.values():
        attributes = dict(span.attributes or {})
        assert attributes["agent_proxy.backend"] == "employees"
        assert attributes["oauth.audience"] == AS_ISSUER
        assert "backend-token-1" not in repr(attributes)
        assert "t-1" not in attributes.values()
