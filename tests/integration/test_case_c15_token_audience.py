"""Case C15: an inbound token must be issued by this gateway for this resource.

The tokens are real JWTs, signed by the running gateway's own keys (or
deliberately by other keys) and sent to the assembled demo gateway over
HTTP. A token is accepted only when its signature verifies with an allowed
algorithm, ``iss`` is the gateway exactly, and ``aud`` is the backend's
canonical resource: a string, or an array that names nothing else. The
gateway's policy for several audiences (T4) is to reject the token, and a
trailing-slash spelling of the resource (T7) is not an alias. Every
rejection is a 401 with the ``invalid_token`` challenge.

Covered elsewhere and not repeated here:

- ``tests/unit/oauth/test_access_tokens.py``: each claim check on its own
  (``test_verify_*``).
- ``tests/unit/oauth/test_keys.py``: ``alg`` ``none``, HS256 signed with the
  public key, an unknown ``kid``, a reused ``kid`` with another key.
- ``tests/e2e/test_gateway_errors.py::test_token_for_other_backend_gets_401``.
- ``test_oauth_flow.py::test_sign_in_full_flow_issues_bound_token``: the
  issued ``aud`` is the requested resource.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from _case_support import sign_in
from _transport_harness import MCP_HEADERS, initialize_body
from joserfc import jwt
from joserfc.jwk import ECKey

from gateway.demo.runner import DemoStack, run_demo
from gateway.oauth.keys import generate_key

pytestmark = pytest.mark.anyio

OTHER_RESOURCE = "https://other.example.test/mcp"


@pytest.fixture(scope="module")
async def demo(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DemoStack]:
    var_dir = tmp_path_factory.mktemp("demo")
    async with run_demo(ephemeral=True, var_dir=var_dir) as running:
        yield running


@pytest.fixture(scope="module")
async def issued(demo: DemoStack) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A token the gateway issued to alice for employees, with header and claims."""
    storage = await sign_in(demo, "employees", user="alice")
    assert storage.tokens is not None
    token = storage.tokens.access_token
    header, claims = demo.gateway.runtime.keys.verify(token, algorithms=["ES256"])
    return token, header, claims


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


async def initialize_with(demo: DemoStack, token: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10.0) as client:
        return await client.post(
            demo.mcp_url("employees"),
            content=msgspec.json.encode(initialize_body()),
            headers={**MCP_HEADERS, "authorization": f"Bearer {token}"},
        )


def assert_rejected(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    assert re.search(r'resource_metadata="[^"]+/employees/mcp"', challenge)


async def test_issued_token_audience_is_resource_accepted(
    demo: DemoStack, issued: tuple[str, dict[str, Any], dict[str, Any]]
) -> None:
    """T1: the token the gateway issued names the exact resource and works (C15)."""
    token, header, claims = issued
    response = await initialize_with(demo, token)
    assert response.status_code == 200
    assert claims["aud"] == demo.mcp_url("employees")
    assert claims["aud"] != claims["client_id"]
    assert header["typ"] == "at+jwt"


@pytest.mark.parametrize(
    "aud",
    [
        "account",
        OTHER_RESOURCE,
        "{resource}/",
        "{resource_upper}",
        ["{resource}", OTHER_RESOURCE],
        [OTHER_RESOURCE, "{resource}"],
        [],
        None,
    ],
    ids=[
        "T2-account",
        "T3-other",
        "T7-trailing-slash",
        "upper-case-scheme",
        "T4-ours-first",
        "T4-ours-last",
        "empty-array",
        "T5-missing",
    ],
)
async def test_wrong_audience_rejected_401(
    demo: DemoStack,
    issued: tuple[str, dict[str, Any], dict[str, Any]],
    aud: Any,
) -> None:
    """Tokens whose aud is not exactly this resource get 401 (C15)."""
    _token, _header, claims = issued
    resource = demo.mcp_url("employees")
    replacements = {
        "{resource}": resource,
        "{resource_upper}": resource.replace("http://", "HTTP://"),
    }

    def spelled(value: str) -> str:
        for placeholder, text in replacements.items():
            value = value.replace(placeholder, text)
        return value

    forged = dict(claims)
    if aud is None:
        del forged["aud"]
    elif isinstance(aud, list):
        forged["aud"] = [spelled(item) for item in aud]
    else:
        forged["aud"] = spelled(aud)
    token = demo.gateway.runtime.keys.sign(forged)
    assert_rejected(await initialize_with(demo, token))


async def test_single_element_audience_array_accepted(
    demo: DemoStack, issued: tuple[str, dict[str, Any], dict[str, Any]]
) -> None:
    """An aud array naming only this resource is the same as the string (C15)."""
    _token, _header, claims = issued
    token = demo.gateway.runtime.keys.sign(
        {**claims, "aud": [demo.mcp_url("employees")]}
    )
    assert (await initialize_with(demo, token)).status_code == 200


@pytest.mark.parametrize(
    "issuer_suffix", ["/tenants/other", "/", ":443"], ids=["T6-tenant", "slash", "port"]
)
async def test_other_issuer_same_keys_rejected_401(
    demo: DemoStack,
    issued: tuple[str, dict[str, Any], dict[str, Any]],
    issuer_suffix: str,
) -> None:
    """T6: the same keys under another issuer string get 401 (C15)."""
    _token, _header, claims = issued
    forged = {**claims, "iss": claims["iss"] + issuer_suffix}
    assert_rejected(await initialize_with(demo, demo.gateway.runtime.keys.sign(forged)))


@pytest.mark.parametrize("typ", ["JWT", "id+jwt", ""])
async def test_token_type_not_access_token_rejected(
    demo: DemoStack,
    issued: tuple[str, dict[str, Any], dict[str, Any]],
    typ: str,
) -> None:
    """A JWT whose typ is not at+jwt is not an access token: 401 (C15)."""
    _token, _header, claims = issued
    token = demo.gateway.runtime.keys.sign(claims, typ=typ)
    assert_rejected(await initialize_with(demo, token))


async def test_algorithm_confusion_rejected_401(
    demo: DemoStack, issued: tuple[str, dict[str, Any], dict[str, Any]]
) -> None:
    """T8: alg none and HS256 keyed with the public key get 401 (C15)."""
    _token, header, claims = issued
    none_token = unsigned({**header, "alg": "none"}, claims) + "."
    public = demo.gateway.runtime.keys.jwks()["keys"][0]
    forged_header = {**header, "alg": "HS256"}
    signing_input = unsigned(forged_header, claims)
    forgeries = [none_token]
    for secret in (
        json.dumps(public).encode(),
        ECKey.import_key(public).as_pem(private=False),
    ):
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        forgeries.append(f"{signing_input}.{b64(mac)}")
    for token in forgeries:
        assert_rejected(await initialize_with(demo, token))


async def test_foreign_key_with_our_kid_rejected_401(
    demo: DemoStack, issued: tuple[str, dict[str, Any], dict[str, Any]]
) -> None:
    """A token signed by another key that copies our kid gets 401 (C15)."""
    _token, header, claims = issued
    foreign = generate_key("ES256")
    token = jwt.encode(header, claims, foreign, algorithms=["ES256"])
    assert_rejected(await initialize_with(demo, token))
