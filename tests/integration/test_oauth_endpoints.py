"""Discovery, registration and CORS of the OAuth front door over real HTTP.

The gateway runs with uvicorn on an ephemeral loopback port. No IdP runs: its
configured address is a closed loopback port, which is how the tests reach
the "IdP unreachable" path.
"""

from __future__ import annotations

import contextlib
import pathlib
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.datastructures import State

from gateway.agents import AgentResolver
from gateway.config import GatewayConfig
from gateway.demo.serve import bind_socket, run_app
from gateway.events import AuthorizationRejected, ClientRegistered
from gateway.oauth.exception_handlers import oauth_exception_handlers
from gateway.oauth.keys import SigningKeys
from gateway.oauth.routes import create_oauth_handlers
from gateway.oauth.upstream import UpstreamClient
from gateway.runtime import Runtime
from gateway.store import MemoryStore
from pipeline import Event, EventBus

pytestmark = pytest.mark.anyio

PRM = "/.well-known/oauth-protected-resource"
INSPECTOR = "http://localhost:6274"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def closed_port() -> int:
    """Return a loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_for(public_url: str, backends: list[str]) -> GatewayConfig:
    return msgspec.convert(
        {
            "server": {
                "public_url": public_url,
                "allowed_origins": ["https://inspector.example.com"],
            },
            "upstream": {
                "issuer": f"http://127.0.0.1:{closed_port()}",
                "client_id": "agent-proxy",
            },
            "backends": {
                name: {"path": f"/{name}/mcp", "url": "http://127.0.0.1:1/mcp"}
                for name in backends
            },
            "agents": {
                "cursor": {"match": {"client_name": "cursor"}, "backends": ["*"]}
            },
        },
        GatewayConfig,
    )


@dataclass
class Server:
    url: str
    runtime: Runtime
    http: httpx.AsyncClient
    events: list[Event]


@contextlib.asynccontextmanager
async def serve_gateway(
    key_dir: pathlib.Path, backends: list[str]
) -> AsyncIterator[Server]:
    sock = bind_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = config_for(url, backends)
    store = MemoryStore()
    bus = EventBus()
    events: list[Event] = []

    async def record(event: Event) -> None:
        events.append(event)

    bus.subscribe("test", record)
    async with httpx.AsyncClient() as upstream_http:
        runtime = Runtime(
            config=config,
            store=store,
            bus=bus,
            keys=SigningKeys.load_or_create(key_dir / "signing.json"),
            grants=None,  # type: ignore[arg-type]
            upstream=UpstreamClient(
                config.upstream,
                redirect_uri=f"{url}/oauth2/callback",
                http=upstream_http,
            ),
            sessions=None,  # type: ignore[arg-type]
            credentials=None,  # type: ignore[arg-type]
            agents=AgentResolver(config),
        )
        app = Litestar(
            route_handlers=create_oauth_handlers(),
            exception_handlers=oauth_exception_handlers(),
            state=State({"runtime": runtime}),
            openapi_config=None,
        )
        async with (
            anyio.create_task_group() as tg,
            run_app(app, sock=sock),
            httpx.AsyncClient(base_url=url) as http,
        ):
            bus.start(tg)
            yield Server(url, runtime, http, events)
            await bus.aclose()


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """A gateway with two backends, shared by this module's tests."""
    async with serve_gateway(
        tmp_path_factory.mktemp("keys"), ["employees", "partners"]
    ) as running:
        yield running


async def settled_events(server: Server) -> list[Event]:
    await anyio.sleep(0.02)
    return server.events


@pytest.mark.parametrize("backend", ["employees", "partners"])
async def test_resource_metadata_exact_document(server: Server, backend: str) -> None:
    """Each backend has its own RFC 9728 document naming its exact resource."""
    response = await server.http.get(f"{PRM}/{backend}/mcp")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "resource": f"{server.url}/{backend}/mcp",
        "authorization_servers": [server.url],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["mcp"],
        "resource_name": backend,
    }
    assert "max-age" in response.headers["cache-control"]


async def test_resource_metadata_trailing_slash_same_document(server: Server) -> None:
    """The trailing-slash variant of the well-known path serves the same document."""
    plain = await server.http.get(f"{PRM}/employees/mcp")
    slash = await server.http.get(f"{PRM}/employees/mcp/")
    assert slash.status_code == 200
    assert slash.json() == plain.json()


async def test_resource_metadata_root_several_backends_not_found(
    server: Server,
) -> None:
    """With several backends the root document is a JSON 404, never another resource."""
    response = await server.http.get(PRM)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert "resource" not in response.json()


async def test_resource_metadata_root_single_backend_served(
    tmp_path: pathlib.Path,
) -> None:
    """With one backend the root document describes that backend."""
    async with serve_gateway(tmp_path, ["employees"]) as single:
        response = await single.http.get(PRM)
    assert response.status_code == 200
    assert response.json()["resource"] == f"{single.url}/employees/mcp"


async def test_resource_metadata_unknown_path_not_found(server: Server) -> None:
    """An unknown MCP path has no metadata."""
    response = await server.http.get(f"{PRM}/nothing/mcp")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


ALGORITHMS = [
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
]
"""The client assertion algorithms of ``private_key_jwt``."""


async def test_authorization_server_metadata_exact_document(server: Server) -> None:
    """The RFC 8414 document names the gateway's endpoints and capabilities."""
    response = await server.http.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    assert response.json() == {
        "issuer": server.url,
        "authorization_endpoint": f"{server.url}/oauth2/authorize",
        "token_endpoint": f"{server.url}/oauth2/token",
        "registration_endpoint": f"{server.url}/oauth2/register",
        "revocation_endpoint": f"{server.url}/oauth2/revoke",
        "revocation_endpoint_auth_methods_supported": [
            "none",
            "client_secret_post",
            "client_secret_basic",
            "private_key_jwt",
        ],
        "revocation_endpoint_auth_signing_alg_values_supported": ALGORITHMS,
        "jwks_uri": f"{server.url}/oauth2/jwks",
        "scopes_supported": ["mcp"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": [
            "none",
            "client_secret_post",
            "client_secret_basic",
            "private_key_jwt",
        ],
        "token_endpoint_auth_signing_alg_values_supported": ALGORITHMS,
        "authorization_response_iss_parameter_supported": True,
        "client_id_metadata_document_supported": True,
    }


async def test_authorization_server_metadata_path_variant_not_found(
    server: Server,
) -> None:
    """An issuer without a path has no path-inserted metadata document."""
    response = await server.http.get("/.well-known/oauth-authorization-server/x")
    assert response.status_code == 404


async def test_jwks_publishes_signing_keys(server: Server) -> None:
    """The JWKS endpoint serves the public signing keys."""
    response = await server.http.get("/oauth2/jwks")
    assert response.status_code == 200
    assert response.json() == server.runtime.keys.jwks()


async def test_register_public_client_created(server: Server) -> None:
    """DCR returns 201 with the registered metadata and publishes ClientRegistered."""
    response = await server.http.post(
        "/oauth2/register",
        json={
            "client_name": "cursor",
            "redirect_uris": ["http://127.0.0.1:3000/callback"],
            "token_endpoint_auth_method": "none",
            "logo_uri": "https://example.com/logo.png",
        },
    )
    assert response.status_code == 201
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["client_name"] == "cursor"
    assert body["redirect_uris"] == ["http://127.0.0.1:3000/callback"]
    assert body["token_endpoint_auth_method"] == "none"
    assert body["grant_types"] == ["authorization_code", "refresh_token"]
    assert body["response_types"] == ["code"]
    assert isinstance(body["client_id_issued_at"], int)
    assert "client_secret" not in body
    assert "logo_uri" not in body
    registered = [
        e for e in await settled_events(server) if isinstance(e, ClientRegistered)
    ]
    assert registered[-1].client_id == body["client_id"]


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"not json", "invalid_client_metadata"),
        (b"[]", "invalid_client_metadata"),
        (b"{}", "invalid_redirect_uri"),
        (b'{"redirect_uris": ["http://example.com/cb"]}', "invalid_redirect_uri"),
        (b'{"redirect_uris": ["https://example.com/cb#x"]}', "invalid_redirect_uri"),
        (b'{"redirect_uris": [null]}', "invalid_redirect_uri"),
        (
            b'{"redirect_uris": ["https://example.com/cb"],'
            b' "token_endpoint_auth_method": "private_key_jwt"}',
            "invalid_client_metadata",
        ),
        (
            b'{"redirect_uris": ["https://e.com/cb"], "grant_types": ["implicit"]}',
            "invalid_client_metadata",
        ),
        (
            b'{"redirect_uris": ["https://example.com/cb"], "client_name": {}}',
            "invalid_client_metadata",
        ),
        (
            b'{"redirect_uris": ["https://e.com/cb"], "x": "' + b"a" * 20000 + b'"}',
            "invalid_client_metadata",
        ),
    ],
)
async def test_register_invalid_metadata_rejected(
    server: Server, content: bytes, error: str
) -> None:
    """Invalid registrations get 400 with the RFC 7591 error, never 500."""
    response = await server.http.post(
        "/oauth2/register",
        content=content,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert response.json()["error_description"]


async def test_register_form_body_rejected(server: Server) -> None:
    """Registration takes JSON only."""
    response = await server.http.post("/oauth2/register", data={"redirect_uris": "x"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client_metadata"


@pytest.mark.parametrize(
    "path",
    [
        f"{PRM}/employees/mcp",
        "/.well-known/oauth-authorization-server",
        "/oauth2/register",
        "/oauth2/token",
        "/oauth2/jwks",
    ],
)
async def test_preflight_allowed_origin_answered(server: Server, path: str) -> None:
    """Browser preflights from loopback origins get 204 with CORS headers."""
    response = await server.http.options(
        path,
        headers={
            "origin": INSPECTOR,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, mcp-protocol-version",
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == INSPECTOR
    assert "mcp-protocol-version" in response.headers["access-control-allow-headers"]
    assert "POST" in response.headers["access-control-allow-methods"]


async def test_preflight_foreign_origin_forbidden(server: Server) -> None:
    """A preflight from an origin that is not allowed gets 403 and no CORS headers."""
    response = await server.http.options(
        "/oauth2/token",
        headers={
            "origin": "https://evil.example",
            "access-control-request-method": "POST",
        },
    )
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (INSPECTOR, True),
        ("https://inspector.example.com", True),
        ("https://evil.example", False),
    ],
)
async def test_cors_actual_response_origin_echoed(
    server: Server, origin: str, allowed: bool
) -> None:
    """Real responses carry Access-Control-Allow-Origin for allowed origins only."""
    response = await server.http.get(f"{PRM}/employees/mcp", headers={"origin": origin})
    assert response.status_code == 200
    if allowed:
        assert response.headers["access-control-allow-origin"] == origin
        assert response.headers["vary"] == "Origin"
    else:
        assert "access-control-allow-origin" not in response.headers


async def test_cors_error_response_origin_echoed(server: Server) -> None:
    """Error responses carry CORS headers too, so browser clients can read them."""
    response = await server.http.post(
        "/oauth2/token", data={"grant_type": "x"}, headers={"origin": INSPECTOR}
    )
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == INSPECTOR


async def test_consent_idp_unreachable_temporarily_unavailable(server: Server) -> None:
    """Approving while the IdP is down sends temporarily_unavailable to the client."""
    registered = await server.http.post(
        "/oauth2/register",
        json={
            "client_name": "cursor",
            "redirect_uris": ["http://127.0.0.1:3000/callback"],
            "token_endpoint_auth_method": "none",
        },
    )
    client_id = registered.json()["client_id"]
    page = await server.http.get(
        "/oauth2/authorize",
        params={
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": "http://127.0.0.1:3000/callback",
            "state": "s1",
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256",
            "resource": f"{server.url}/employees/mcp",
        },
    )
    assert page.status_code == 200
    transaction = page.text.split('name="transaction" value="', 1)[1].split('"', 1)[0]
    response = await server.http.post(
        "/oauth2/consent", data={"transaction": transaction, "decision": "approve"}
    )
    assert response.status_code == 302
    params = {
        k: v[0]
        for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()
    }
    assert params["error"] == "temporarily_unavailable"
    assert params["state"] == "s1"
    rejected = [
        e for e in await settled_events(server) if isinstance(e, AuthorizationRejected)
    ]
    assert rejected[-1].reason == "idp_unavailable"
    assert rejected[-1].outcome == "error"


ERROR_DESCRIPTION = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]*")
"""The characters RFC 6749 section 5.2 allows in ``error_description``."""
FORM = "application/x-www-form-urlencoded"


async def register_cursor(server: Server) -> str:
    response = await server.http.post(
        "/oauth2/register",
        json={
            "client_name": "cursor",
            "redirect_uris": ["http://127.0.0.1:3000/callback"],
            "token_endpoint_auth_method": "none",
        },
    )
    assert response.status_code == 201, response.text
    client_id: str = response.json()["client_id"]
    return client_id


def assert_oauth_error(response: httpx.Response) -> None:
    """Check an OAuth endpoint's error: RFC 6749 JSON or an HTML page, never 5xx."""
    assert response.status_code < 500, response.text
    assert '"status_code"' not in response.text
    content_type = response.headers["content-type"]
    if content_type.startswith("text/html"):
        assert content_type == "text/html; charset=utf-8"
        return
    assert content_type == "application/json"
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert ERROR_DESCRIPTION.fullmatch(body["error_description"]), body


@pytest.mark.parametrize(
    "content",
    [b"[" * 3000, b"[" * 3000 + b"]" * 3000, b'{"a":' * 3000, b'{"a":' * 100],
    ids=["open-arrays", "closed-arrays", "open-objects", "truncated"],
)
async def test_register_deeply_nested_json_invalid_client_metadata(
    server: Server, content: bytes
) -> None:
    """JSON nested past the decoder's limit gets invalid_client_metadata, not 500."""
    response = await server.http.post(
        "/oauth2/register",
        content=content,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client_metadata"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://127.0.0.1/cb\r\nX: y", "'http://127.0.0.1/cb%0D%0AX:%20y'"),
        ("http://127.0.0.1/cb\u2028", "'http://127.0.0.1/cb%E2%80%A8'"),
        ("https://*.example.com/cb", "'https://*.example.com/cb'"),
        ('https://app.example.com/"x"', "'https://app.example.com/%22x%22'"),
    ],
    ids=["crlf", "line-separator", "wildcard-host", "quotes"],
)
async def test_register_unsafe_redirect_uri_rejected(
    server: Server, uri: str, shown: str
) -> None:
    """Redirect URIs with unsafe characters or wildcards get invalid_redirect_uri."""
    response = await server.http.post(
        "/oauth2/register",
        json={"client_name": "cursor", "redirect_uris": [uri]},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_redirect_uri"
    assert shown in response.json()["error_description"]
    assert_oauth_error(response)


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://127.0.0.1:3000/callback\r\n",
        "http://127.0.0.1:4000/call\tback",
        "http://127.0.0.1:3000/callback\r\nLocation: https://evil.example/",
    ],
    ids=["trailing-crlf", "tab", "header-injection"],
)
async def test_authorize_redirect_uri_control_characters_error_page(
    server: Server, redirect_uri: str
) -> None:
    """A requested redirect URI with characters URL parsing drops is never used."""
    client_id = await register_cursor(server)
    response = await server.http.get(
        "/oauth2/authorize",
        params={
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "state": "s1",
        },
    )
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.headers["content-type"] == "text/html; charset=utf-8"


MALFORMED_BODIES = {
    "nested-json": (b"[" * 3000, "application/json"),
    "not-json": (b"{not json", "application/json"),
    "wrong-content-type": (b"<client/>", "application/xml"),
    "no-content-type": (b"grant_type=x", None),
    "invalid-utf8": (b"grant_type=\xff\xfe", FORM),
    "invalid-utf8-escape": (b"grant_type=%ff&client_id=%fe", FORM),
    "huge-field": (b"client_id=" + b"a" * 60_000, FORM),
    "many-fields": ("&".join(f"f{i}=1" for i in range(2000)).encode(), FORM),
    "repeated-field": (b"client_id=a&client_id=b", FORM),
    "too-large": (b"a=" + b"x" * 70_000, FORM),
}


@pytest.mark.parametrize(
    "path", ["/oauth2/register", "/oauth2/token", "/oauth2/consent"]
)
@pytest.mark.parametrize("case", sorted(MALFORMED_BODIES))
async def test_post_endpoints_malformed_body_oauth_error(
    server: Server, path: str, case: str
) -> None:
    """Malformed bodies on every POST endpoint get an OAuth error, never a 5xx."""
    content, content_type = MALFORMED_BODIES[case]
    headers = {"content-type": content_type} if content_type else {}
    response = await server.http.post(path, content=content, headers=headers)
    assert 400 <= response.status_code < 500
    assert_oauth_error(response)


@pytest.mark.parametrize(
    "url",
    [
        "/oauth2/authorize?client_id=%ff%fe&redirect_uri=%c0",
        "/oauth2/authorize?client_id=" + "a" * 5000,
        "/oauth2/callback?state=%ff&code=%00",
        "/oauth2/callback?state=" + "s" * 5000,
        f"{PRM}/%ff%fe",
        f"{PRM}/employees/mcp%00",
        "/.well-known/oauth-authorization-server/%ff",
        "/oauth2/jwks?x=%ff",
    ],
    ids=[
        "authorize-invalid-utf8",
        "authorize-huge",
        "callback-invalid-utf8",
        "callback-huge",
        "resource-metadata-invalid-utf8",
        "resource-metadata-nul",
        "server-metadata-invalid-utf8",
        "jwks-invalid-utf8",
    ],
)
async def test_get_endpoints_malformed_query_oauth_error(
    server: Server, url: str
) -> None:
    """Malformed query strings and paths on GET endpoints never get a 5xx."""
    response = await server.http.get(url)
    assert response.status_code < 500
    if response.status_code >= 400:
        assert_oauth_error(response)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/oauth2/nothing", 404),
        ("GET", "/", 404),
        ("GET", "/oauth2/token", 405),
        ("DELETE", "/oauth2/register", 405),
        ("PUT", "/oauth2/jwks", 405),
    ],
)
async def test_unknown_path_or_method_json_error(
    server: Server, method: str, path: str, status: int
) -> None:
    """Unknown paths and methods get JSON errors, not Litestar's error body."""
    response = await server.http.request(method, path)
    assert response.status_code == status
    assert_oauth_error(response)
    expected = "not_found" if status == 404 else "invalid_request"
    assert response.json()["error"] == expected
    if status == 405:
        assert "OPTIONS" in response.headers["allow"]


async def test_token_body_over_limit_payload_too_large(server: Server) -> None:
    """A body over the OAuth limit gets 413 invalid_request naming the limit."""
    response = await server.http.post(
        "/oauth2/token",
        content=b"grant_type=" + b"x" * 70_000,
        headers={"content-type": FORM},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "invalid_request"
    assert "65536 bytes" in response.json()["error_description"]
