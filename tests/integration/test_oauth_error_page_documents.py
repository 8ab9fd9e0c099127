"""Authorize errors for Client ID Metadata Document clients: page or redirect.

A document whose redirect URIs are https on its own host proves the client's
identity, so its errors redirect at once. A document with loopback redirect
URIs proves nothing, so its errors are shown on a page with a link. The
servers are those of the client metadata tests: a loopback https document
server, the dev IdP and the gateway, with uvicorn.
"""

from __future__ import annotations

import pytest
from tests.integration import test_oauth_client_metadata
from tests.integration._client_documents import DocumentServer, Reply
from tests.integration.test_oauth_client_metadata import document, publish
from tests.integration.test_oauth_flow import Gateway, error_link, query_of

pytestmark = pytest.mark.anyio

documents = test_oauth_client_metadata.documents
servers = test_oauth_client_metadata.servers
gateway = test_oauth_client_metadata.gateway


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def test_authorize_loopback_document_client_error_page(
    gateway: Gateway, documents: DocumentServer
) -> None:
    """A document with a loopback redirect URI gets its errors on a page."""
    path = "/loopback-errors.json"
    client_id = publish(documents, path, Reply(document(documents.url + path)))

    response, _, state = await gateway.authorize(
        {"client_id": client_id}, resource="https://elsewhere.example/mcp"
    )

    params = query_of(error_link(response))
    assert params["error"] == "invalid_target"
    assert params["state"] == state


async def test_authorize_verified_document_client_error_redirects(
    gateway: Gateway, documents: DocumentServer
) -> None:
    """A document with https redirect URIs on its own host redirects errors."""
    path = "/verified-errors.json"
    redirect_uri = "https://127.0.0.1/callback"
    client_id = publish(
        documents,
        path,
        Reply(document(documents.url + path, redirect_uris=[redirect_uri])),
    )

    response, _, _ = await gateway.authorize(
        {"client_id": client_id},
        redirect_uri=redirect_uri,
        resource="https://elsewhere.example/mcp",
    )

    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(redirect_uri)
    assert query_of(location)["error"] == "invalid_target"
