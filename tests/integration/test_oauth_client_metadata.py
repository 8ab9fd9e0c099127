"""Client ID Metadata Documents: a ``client_id`` that is an https URL.

The documents come from a loopback https server started by the test, with a
certificate from a test CA that only the gateway's resolver trusts. The
gateway runs with ``oauth.client_metadata.allow_loopback``, its development
setting, because the test server is on 127.0.0.1. Address checks for private
and metadata addresses use IP literals and fail before any connection.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import httpx2
import msgspec
import pytest
from litestar import Litestar
from litestar.datastructures import State
from mcp.client.auth import OAuthClientProvider
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata
from pydantic import AnyUrl
from tests.integration._client_documents import (
    DocumentServer,
    Reply,
    serve_documents,
)
from tests.integration.test_oauth_flow import (
    CLIENT_CALLBACK,
    Gateway,
    employees_endpoint,
    gateway_config,
    query_of,
)

from gateway.agents import AgentResolver
from gateway.config.model import ClientMetadataConfig, OAuthConfig
from gateway.demo.driver import MemoryTokenStorage
from gateway.demo.serve import bind_socket, run_app
from gateway.devidp import create_devidp_app, demo_settings
from gateway.events import ClientRegistered
from gateway.oauth.client_metadata import (
    MAX_CACHE_SECONDS,
    MIN_CACHE_SECONDS,
    STATE_KEY,
    ClientMetadataError,
    ClientMetadataResolver,
    cache_seconds,
)
from gateway.oauth.exception_handlers import oauth_exception_handlers
from gateway.oauth.grants import GrantStore
from gateway.oauth.keys import SigningKeys
from gateway.oauth.routes import create_oauth_handlers
from gateway.oauth.upstream import UpstreamClient
from gateway.runtime import Runtime
from gateway.store import MemoryStore
from pipeline import Event, EventBus

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def document(url: str, **fields: Any) -> bytes:
    body: dict[str, Any] = {
        "client_id": url,
        "client_name": "cursor",
        "redirect_uris": [CLIENT_CALLBACK],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "none",
    }
    body.update(fields)
    return msgspec.json.encode({k: v for k, v in body.items() if v is not None})


@pytest.fixture(scope="module")
async def documents(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[DocumentServer]:
    async with serve_documents(str(tmp_path_factory.mktemp("tls"))) as server:
        yield server


@pytest.fixture(scope="module")
async def servers(
    tmp_path_factory: pytest.TempPathFactory, documents: DocumentServer
) -> AsyncIterator[Gateway]:
    """The dev IdP and a gateway that trusts the document server's CA."""
    gateway_sock, idp_sock = bind_socket(), bind_socket()
    url = f"http://127.0.0.1:{gateway_sock.getsockname()[1]}"
    idp = f"http://127.0.0.1:{idp_sock.getsockname()[1]}"
    config = msgspec.structs.replace(
        gateway_config(url, idp),
        oauth=OAuthConfig(client_metadata=ClientMetadataConfig(allow_loopback=True)),
    )
    store = MemoryStore()
    bus = EventBus()
    events: list[Event] = []

    async def record(event: Event) -> None:
        events.append(event)

    bus.subscribe("test", record)
    key_file = tmp_path_factory.mktemp("keys") / "signing.json"
    async with httpx.AsyncClient() as http:
        upstream = UpstreamClient(
            config.upstream, redirect_uri=f"{url}/oauth2/callback", http=http
        )
        runtime = Runtime(
            config=config,
            store=store,
            bus=bus,
            keys=SigningKeys.load_or_create(key_file),
            grants=GrantStore(store, upstream),
            upstream=upstream,
            sessions=None,  # type: ignore[arg-type]
            credentials=None,  # type: ignore[arg-type]
            agents=AgentResolver(config),
        )
        resolver = ClientMetadataResolver(
            store, allow_loopback=True, verify=documents.client_context
        )
        app = Litestar(
            route_handlers=[*create_oauth_handlers(), employees_endpoint],
            exception_handlers=oauth_exception_handlers(),
            state=State({"runtime": runtime, STATE_KEY: resolver}),
            openapi_config=None,
        )
        idp_app = create_devidp_app(demo_settings(issuer=idp, gateway_url=url))
        async with (
            anyio.create_task_group() as tg,
            run_app(idp_app, sock=idp_sock),
            run_app(app, sock=gateway_sock),
        ):
            bus.start(tg)
            yield Gateway(url, idp, runtime, http, events)
            await bus.aclose()


@pytest.fixture
async def gateway(servers: Gateway) -> AsyncIterator[Gateway]:
    """The shared servers with a fresh browser and no earlier events."""
    await servers.settle()
    servers.events.clear()
    async with httpx.AsyncClient(base_url=servers.url) as browser:
        yield Gateway(
            servers.url, servers.idp, servers.runtime, browser, servers.events
        )


def publish(documents: DocumentServer, path: str, reply: Reply) -> str:
    documents.replies[path] = reply
    return documents.url + path


async def test_client_metadata_sdk_client_signs_in(
    gateway: Gateway, documents: DocumentServer
) -> None:
    """The official SDK client signs in with a Client ID Metadata Document URL."""
    path = "/sdk/client.json"
    client_id = publish(documents, path, Reply(document(documents.url + path)))
    storage = MemoryTokenStorage()
    redirect: dict[str, str] = {}

    async def open_browser(url: str) -> None:
        page = await gateway.browser.get(url + "&login_hint=bob")
        final = await gateway.follow_idp(await gateway.consent(page))
        redirect.update(query_of(final.headers["location"]))

    async def receive_callback() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(
            code=redirect["code"], state=redirect["state"], iss=redirect["iss"]
        )

    provider = OAuthClientProvider(
        server_url=gateway.resource("employees"),
        client_metadata=OAuthClientMetadata(
            client_name="cursor",
            redirect_uris=[AnyUrl(CLIENT_CALLBACK)],
            grant_types=["authorization_code", "refresh_token"],
        ),
        storage=storage,
        redirect_handler=open_browser,
        callback_handler=receive_callback,
        client_metadata_url=client_id,
    )
    async with httpx2.AsyncClient(auth=provider) as client:
        response = await client.post(
            gateway.resource("employees"),
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        )
    assert response.status_code == 200, response.text
    assert storage.client_info is not None
    assert storage.client_info.client_id == client_id
    assert storage.tokens is not None
    _, claims = gateway.runtime.keys.verify(
        storage.tokens.access_token, algorithms=["ES256"]
    )
    assert claims["client_id"] == client_id
    assert claims["sub"] == "00u_bob"
    # Loopback redirect URIs make the identity self-asserted, not verified.
    assert claims["agent"]["trust"] == "self-asserted"
    # authorize and token share one fetch through the cache.
    assert documents.hits.count(path) == 1
    await gateway.settle()
    assert gateway.events_of(ClientRegistered) == []


async def test_client_metadata_sdk_without_url_registers(
    gateway: Gateway,
) -> None:
    """Without a document URL the SDK client still registers dynamically."""
    storage = MemoryTokenStorage()
    redirect: dict[str, str] = {}

    async def open_browser(url: str) -> None:
        page = await gateway.browser.get(url)
        final = await gateway.follow_idp(await gateway.consent(page))
        redirect.update(query_of(final.headers["location"]))

    async def receive_callback() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(
            code=redirect["code"], state=redirect["state"], iss=redirect["iss"]
        )

    provider = OAuthClientProvider(
        server_url=gateway.resource("employees"),
        client_metadata=OAuthClientMetadata(
            client_name="cursor", redirect_uris=[AnyUrl(CLIENT_CALLBACK)]
        ),
        storage=storage,
        redirect_handler=open_browser,
        callback_handler=receive_callback,
    )
    async with httpx2.AsyncClient(auth=provider) as client:
        response = await client.post(
            gateway.resource("employees"),
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        )
    assert response.status_code == 200, response.text
    assert storage.client_info is not None
    assert not storage.client_info.client_id.startswith("https://")
    await gateway.settle()
    assert len(gateway.events_of(ClientRegistered)) == 1


async def test_client_metadata_document_other_client_id_error_page(
    gateway: Gateway, documents: DocumentServer
) -> None:
    """A document whose client_id differs from its URL is refused at authorize."""
    client_id = publish(
        documents, "/other.json", Reply(document("https://elsewhere.example/c"))
    )
    response, _, _ = await gateway.authorize({"client_id": client_id})
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "differs from its URL" in response.text


async def test_client_metadata_unregistered_redirect_uri_error_page(
    gateway: Gateway, documents: DocumentServer
) -> None:
    """redirect_uris come from the document; any other URI is refused."""
    path = "/narrow.json"
    client_id = publish(
        documents,
        path,
        Reply(document(documents.url + path, redirect_uris=["https://app.test/cb"])),
    )
    response, _, _ = await gateway.authorize({"client_id": client_id})
    assert response.status_code == 400
    assert "location" not in response.headers


async def test_client_metadata_token_without_document_invalid_client(
    gateway: Gateway, documents: DocumentServer
) -> None:
    """The token endpoint rejects a document URL that answers 404."""
    response = await gateway.token(
        {
            "grant_type": "authorization_code",
            "code": "x",
            "code_verifier": "y" * 43,
            "client_id": documents.url + "/missing.json",
        }
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


@pytest.fixture
def resolver(documents: DocumentServer) -> ClientMetadataResolver:
    return ClientMetadataResolver(
        MemoryStore(),
        allow_loopback=True,
        verify=documents.client_context,
        timeout=1.0,
    )


async def resolve_error(resolver: ClientMetadataResolver, url: str) -> str:
    with pytest.raises(ClientMetadataError) as caught:
        await resolver.resolve(url)
    return caught.value.reason


async def test_client_metadata_same_host_https_redirects_verified(
    resolver: ClientMetadataResolver, documents: DocumentServer
) -> None:
    """https redirect URIs on the document's host make the client verified."""
    path = "/verified.json"
    url = documents.url + path
    publish(
        documents,
        path,
        Reply(document(url, redirect_uris=["https://127.0.0.1/callback"])),
    )
    record = await resolver.resolve(url)
    assert record.metadata_document
    assert record.identity_proven
    assert record.is_public


async def test_client_metadata_redirect_not_followed(
    resolver: ClientMetadataResolver, documents: DocumentServer
) -> None:
    """A 302 from the document URL is a failure; the target is never fetched."""
    url = publish(
        documents,
        "/moved.json",
        Reply(b"", status=302, headers={"location": "/target.json"}),
    )
    assert await resolve_error(resolver, url) == "fetch_failed"
    assert "/target.json" not in documents.hits


async def test_client_metadata_oversized_document_rejected(
    resolver: ClientMetadataResolver, documents: DocumentServer
) -> None:
    """A document over 64 KiB is refused."""
    path = "/big.json"
    url = documents.url + path
    padding = "x" * (65 * 1024)
    publish(documents, path, Reply(document(url, client_name=None, pad=padding)))
    assert await resolve_error(resolver, url) == "document_too_large"


async def test_client_metadata_slow_server_times_out(
    resolver: ClientMetadataResolver, documents: DocumentServer
) -> None:
    """A server slower than the time limit fails the fetch."""
    path = "/slow.json"
    url = documents.url + path
    publish(documents, path, Reply(document(url), delay=3.0))
    with anyio.fail_after(2.5):
        assert await resolve_error(resolver, url) == "fetch_timeout"


async def test_client_metadata_untrusted_certificate_rejected(
    documents: DocumentServer,
) -> None:
    """The fetch verifies TLS; the system CAs do not trust the test server."""
    path = "/tls.json"
    url = publish(documents, path, Reply(document(documents.url + path)))
    resolver = ClientMetadataResolver(MemoryStore(), allow_loopback=True)
    assert await resolve_error(resolver, url) == "fetch_failed"


async def test_client_metadata_cached_until_max_age(
    resolver: ClientMetadataResolver, documents: DocumentServer
) -> None:
    """A resolved document is served from the cache on the next look-up."""
    path = "/cached.json"
    url = documents.url + path
    publish(
        documents,
        path,
        Reply(document(url), headers={"cache-control": "public, max-age=120"}),
    )
    await resolver.resolve(url)
    await resolver.resolve(url)
    assert documents.hits.count(path) == 1


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("max-age=120", 120),
        ("public, max-age=5", MIN_CACHE_SECONDS),
        ("max-age=99999999", MAX_CACHE_SECONDS),
        ("no-store", MIN_CACHE_SECONDS),
        ("", 600),
    ],
)
def test_client_metadata_cache_seconds_bounded(header: str, seconds: int) -> None:
    """Cache-Control sets the cache lifetime within fixed bounds."""
    assert cache_seconds(header) == seconds


async def test_client_metadata_loopback_refused_outside_dev_mode(
    documents: DocumentServer,
) -> None:
    """Without allow_loopback a loopback document is never fetched."""
    path = "/prod.json"
    url = publish(documents, path, Reply(document(documents.url + path)))
    resolver = ClientMetadataResolver(MemoryStore(), verify=documents.client_context)
    assert await resolve_error(resolver, url) == "forbidden_address"
    assert path not in documents.hits


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.1/client.json",
        "https://192.168.1.10/client.json",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/client.json",
        "https://[fe80::1]/client.json",
        "https://[fd00::1]/client.json",
        "https://[::ffff:10.0.0.1]/client.json",
        "https://0.0.0.0/client.json",
        "https://224.0.0.1/client.json",
    ],
)
async def test_client_metadata_private_address_refused(
    resolver: ClientMetadataResolver, url: str
) -> None:
    """Private, link-local, metadata and reserved addresses are never fetched."""
    assert await resolve_error(resolver, url) == "forbidden_address"


@pytest.mark.parametrize(
    "url",
    [
        "http://client.example/client.json",
        "https://client.example/",
        "https://client.example",
        "https://user@client.example/client.json",
        "https://client.example/a/../client.json",
        "https://client.example/./client.json",
        "https://client.example/client.json#x",
        "https://client.example:99999/client.json",
        "ftp://client.example/client.json",
    ],
)
async def test_client_metadata_invalid_url_refused(
    resolver: ClientMetadataResolver, url: str
) -> None:
    """Only https URLs with a clean path are fetched."""
    assert await resolve_error(resolver, url) == "invalid_url"


@pytest.mark.parametrize(
    "fields",
    [
        {"token_endpoint_auth_method": "client_secret_basic"},
        {"client_secret": "s3cret"},
        {"redirect_uris": ["http://client.example/cb"]},
        {"redirect_uris": []},
    ],
)
async def test_client_metadata_invalid_document_refused(
    resolver: ClientMetadataResolver, documents: DocumentServer, fields: Any
) -> None:
    """Secrets, secret-based methods and unsafe redirect URIs are refused."""
    path = f"/invalid-{len(documents.replies)}.json"
    url = documents.url + path
    publish(documents, path, Reply(document(url, **fields)))
    assert await resolve_error(resolver, url) == "invalid_document"


async def test_client_metadata_http_loopback_allowed_in_dev_mode(
    tmp_path: pathlib.Path,
) -> None:
    """In development a plain-http loopback document is accepted."""
    async with serve_documents(str(tmp_path), tls=False) as plain:
        path = "/plain.json"
        url = publish(plain, path, Reply(document(plain.url + path)))
        dev = ClientMetadataResolver(MemoryStore(), allow_loopback=True)
        record = await dev.resolve(url)
        production = ClientMetadataResolver(MemoryStore())
        reason = await resolve_error(production, url)
    assert record.client_id == url
    assert reason == "invalid_url"


async def test_client_metadata_host_name_resolved_and_pinned(
    resolver: ClientMetadataResolver, documents: DocumentServer
) -> None:
    """A host name is resolved, checked, and verified by TLS under its own name."""
    port = documents.url.rsplit(":", 1)[1]
    path = "/named.json"
    url = f"https://localhost:{port}{path}"
    publish(documents, path, Reply(document(url)))
    record = await resolver.resolve(url)
    assert record.client_id == url
