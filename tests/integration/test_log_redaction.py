"""The log redaction removes real tokens and secrets wherever a log line has them.

The tokens come from a real demo run: the gateway's access and refresh tokens
and a client secret it issued by dynamic registration, the upstream ID and
refresh tokens from the gateway's grant store, an ID-JAG and a backend access
token from the dev IdP, an authorization code with its PKCE verifier, and the
client secrets and API key of the demo config. Each test logs every token in
one position through the production JSON set-up and searches the output.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import structlog
from mcp.shared.auth import OAuthClientInformationFull

from gateway.config import IdJagAuth, StaticKeyAuth
from gateway.demo.driver import REDIRECT_URI, MemoryTokenStorage, run_client
from gateway.demo.runner import run_demo
from gateway.events import GrantSelector
from gateway.logging_setup import configure_logging, unconfigure_logging

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"

log = structlog.get_logger("tests.redaction")


@pytest.fixture(scope="module")
async def tokens(
    anyio_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, str]]:
    """Every kind of token and secret of a demo run, by label."""
    found: dict[str, str] = {}
    var_dir = tmp_path_factory.mktemp("redaction")
    async with (
        run_demo(ephemeral=True, var_dir=var_dir) as stack,
        httpx.AsyncClient() as http,
    ):
        config = stack.config
        gateway, idp = stack.urls["gateway"], stack.urls["idp"]
        registered = await http.post(
            f"{gateway}/oauth2/register",
            json={
                "client_name": "cursor",
                "redirect_uris": [REDIRECT_URI],
                "grant_types": ["authorization_code", "refresh_token"],
                "token_endpoint_auth_method": "client_secret_post",
            },
        )
        storage = MemoryTokenStorage()
        storage.client_info = OAuthClientInformationFull.model_validate(
            registered.json()
        )
        await run_client(
            stack.mcp_url("employees"),
            client_name="cursor",
            calls=[("list_employees", {})],
            storage=storage,
        )
        assert storage.tokens is not None
        found["gateway_access_token"] = storage.tokens.access_token
        found["gateway_refresh_token"] = storage.tokens.refresh_token or ""
        found["gateway_client_secret"] = storage.client_info.client_secret or ""

        [grant] = await stack.gateway.runtime.grants.find(GrantSelector())
        found["upstream_id_token"] = grant.upstream_id_token
        found["upstream_refresh_token"] = grant.upstream_refresh_token or ""

        employees = config.backends["employees"].auth
        partners = config.backends["partners"].auth
        assert isinstance(employees, IdJagAuth)
        assert isinstance(partners, StaticKeyAuth)
        upstream = (config.upstream.client_id, config.upstream.client_secret)
        exchanged = await http.post(
            f"{idp}/oauth2/v1/token",
            auth=upstream,
            data={
                "grant_type": TOKEN_EXCHANGE,
                "requested_token_type": "urn:ietf:params:oauth:token-type:id-jag",
                "subject_token": grant.upstream_id_token,
                "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
                "audience": employees.issuer,
                "resource": employees.resource,
                "scope": "employees:read",
            },
        )
        found["id_jag"] = exchanged.json()["access_token"]
        redeemed = await http.post(
            employees.token_endpoint,
            auth=(employees.client_id, employees.client_secret),
            data={"grant_type": JWT_BEARER, "assertion": found["id_jag"]},
        )
        found["backend_access_token"] = redeemed.json()["access_token"]

        verifier = secrets.token_urlsafe(48)
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        authorized = await http.get(
            f"{idp}/oauth2/v1/authorize",
            params={
                "response_type": "code",
                "client_id": config.upstream.client_id,
                "redirect_uri": f"{gateway}/oauth2/callback",
                "scope": "openid",
                "state": "state-1",
                "nonce": "nonce-1",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "login_hint": "bob",
            },
        )
        location = authorized.headers["location"]
        found["authorization_code"] = parse_qs(urlsplit(location).query)["code"][0]
        found["pkce_verifier"] = verifier
        found["upstream_client_secret"] = config.upstream.client_secret
        found["backend_client_secret"] = employees.client_secret
        found["partners_api_key"] = partners.value
    assert all(found.values()), [label for label, value in found.items() if not value]
    yield found


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """The production JSON log set-up; returns a function reading its output."""
    configure_logging(json=True, level="DEBUG", cache_loggers=False)
    capsys.readouterr()
    try:
        yield lambda: capsys.readouterr().err
    finally:
        unconfigure_logging()


@dataclass
class Holder:
    """An object whose repr shows a token, as dataclasses and Structs do."""

    owner: str
    credential: str


def _raise_and_log(message: str, label: str) -> None:
    try:
        raise RuntimeError(message)
    except RuntimeError:
        log.exception("redaction.test", label=label)


POSITIONS: dict[str, Callable[[str, str], None]] = {
    "top_level_value": lambda label, token: log.info(
        "redaction.test", label=label, detail=token
    ),
    "sensitive_key": lambda label, token: log.info(
        "redaction.test", label=label, refresh_token=token
    ),
    "nested_value": lambda label, token: log.info(
        "redaction.test",
        label=label,
        response={"body": {"items": [{"value": token}], "status": 200}},
    ),
    "nested_header": lambda label, token: log.info(
        "redaction.test",
        label=label,
        request={"headers": {"Authorization": f"Bearer {token}", "Accept": "*/*"}},
    ),
    "inside_longer_string": lambda label, token: log.info(
        "redaction.test", label=label, detail=f"the IdP returned {token} for bob."
    ),
    "event_message": lambda label, token: log.info(f"received {token} from the IdP"),
    "exception_message": lambda label, token: _raise_and_log(
        f"token endpoint rejected {token}", label
    ),
    "exception_value": lambda label, token: log.warning(
        "redaction.test", label=label, error=ValueError(f"bad grant {token}")
    ),
    "url_query": lambda label, token: log.info(
        "redaction.test",
        label=label,
        url=f"https://idp.example/callback?code={token}&state=abc",
    ),
    "url_query_named_token": lambda label, token: log.info(
        "redaction.test",
        label=label,
        url=f"https://gw.example/cb?state=abc&access_token={token}",
    ),
    "form_body": lambda label, token: log.info(
        "redaction.test",
        label=label,
        body=f"grant_type=refresh_token&refresh_token={token}&scope=openid",
    ),
    "json_body": lambda label, token: log.info(
        "redaction.test",
        label=label,
        body=json.dumps({"token_type": "Bearer", "access_token": token}),
    ),
    "header_line": lambda label, token: log.info(
        "redaction.test", label=label, detail=f"Authorization: Bearer {token}"
    ),
    "object_repr": lambda label, token: log.info(
        "redaction.test", label=label, holder=Holder("bob", token)
    ),
    "bytes_value": lambda label, token: log.info(
        "redaction.test", label=label, raw=token.encode()
    ),
    "stdlib_logging": lambda label, token: logging.getLogger("tests.library").warning(
        "library saw %s for %s", token, label
    ),
}


@pytest.mark.parametrize("position", sorted(POSITIONS))
def test_redaction_real_tokens_absent(
    tokens: dict[str, str], json_logs: Callable[[], str], position: str
) -> None:
    """No token or secret survives in the JSON log output, whatever its position."""
    for label, token in tokens.items():
        POSITIONS[position](label, token)
    output = json_logs()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert len(lines) == len(tokens)
    leaked = [label for label, token in tokens.items() if token in output]
    assert leaked == []


def test_redaction_keeps_identifiers(
    tokens: dict[str, str], json_logs: Callable[[], str]
) -> None:
    """Ids, hashes, codes of warnings and token types stay readable."""
    kept = {
        "request_id": "0123456789abcdef0123456789abcdef",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "grant_id": "Xs25YQdGLrbhYqii1uhbNHLTxBfFbsij",
        "kid": "yKkDrKx0UsCOzPmJLmEOZOQKpQ18Ze0TZdAZ4FChblI",
        "token_id": "5EQcEJHWTLeXletA3WgeKg",
        "token_type": "refresh_token",
        "code": "okta_custom_server_for_id_jag",
        "status_code": 401,
        "token_endpoint": "http://127.0.0.1:9000/oauth2/v1/token",
    }
    log.info("redaction.kept", **kept)
    [line] = [json.loads(text) for text in json_logs().splitlines()]
    for key, value in kept.items():
        assert line[key] == value, key
