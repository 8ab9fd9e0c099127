"""Case C11: resource metadata is path-aware and names the exact resource.

A client that follows the 401 challenge fetches the path-inserted RFC 9728
document, whose ``resource`` is byte for byte the URL it connected to. Its
authorization server publishes RFC 8414 metadata whose ``issuer`` equals the
URL it was fetched from before path insertion.

Covered elsewhere and not repeated here:

- ``test_oauth_endpoints.py``: ``test_resource_metadata_exact_document``,
  ``test_resource_metadata_trailing_slash_same_document``,
  ``test_resource_metadata_root_several_backends_not_found``,
  ``test_resource_metadata_root_single_backend_served``,
  ``test_resource_metadata_unknown_path_not_found``,
  ``test_authorization_server_metadata_exact_document`` and
  ``test_authorization_server_metadata_path_variant_not_found``.
- ``test_oauth_flow.py::test_token_resource_trailing_slash_canonical_audience``:
  the authorization server maps ``…/mcp/`` to the canonical audience.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest
from _transport_harness import MCP_HEADERS, initialize_body

from gateway.config import load_config_text
from gateway.demo.runner import DemoStack, demo_config_text, run_demo
from gateway.errors import ConfigError

pytestmark = pytest.mark.anyio

PRM = "/.well-known/oauth-protected-resource"


@pytest.fixture(scope="module")
async def demo(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DemoStack]:
    var_dir = tmp_path_factory.mktemp("demo")
    async with run_demo(ephemeral=True, var_dir=var_dir) as running:
        yield running


def metadata_url_of(challenge: str) -> str:
    match = re.search(r'resource_metadata="([^"]+)"', challenge)
    assert match is not None, challenge
    return match.group(1)


@pytest.mark.parametrize("backend", ["employees", "partners"])
@pytest.mark.parametrize("suffix", ["", "/"])
async def test_challenge_leads_to_exact_resource_and_issuer(
    demo: DemoStack, backend: str, suffix: str
) -> None:
    """The 401 names path-aware metadata with the exact resource (C11)."""
    mcp_url = demo.mcp_url(backend)
    base = demo.urls["gateway"]
    async with httpx.AsyncClient(timeout=10.0) as client:
        rejected = await client.post(
            mcp_url + suffix,
            content=msgspec.json.encode(initialize_body()),
            headers=MCP_HEADERS,
        )
        metadata_url = metadata_url_of(rejected.headers["www-authenticate"])
        document = await client.get(metadata_url)
        issuer = document.json()["authorization_servers"][0]
        server_metadata = await client.get(
            issuer + "/.well-known/oauth-authorization-server"
        )

    assert rejected.status_code == 401
    assert metadata_url == base + PRM + urlsplit(mcp_url).path
    assert document.status_code == 200
    assert document.headers["content-type"].startswith("application/json")
    assert "max-age" in document.headers["cache-control"]
    assert document.json()["resource"] == mcp_url
    assert document.json()["bearer_methods_supported"] == ["header"]
    assert server_metadata.status_code == 200
    assert server_metadata.json()["issuer"] == issuer
    assert "S256" in server_metadata.json()["code_challenge_methods_supported"]


async def test_each_backend_document_names_only_itself(demo: DemoStack) -> None:
    """Two backends never share one document or name each other (C11)."""
    base = demo.urls["gateway"]
    async with httpx.AsyncClient(timeout=10.0) as client:
        documents = {
            name: (await client.get(base + PRM + backend.path)).json()
            for name, backend in demo.config.backends.items()
        }
    resources = {name: doc["resource"] for name, doc in documents.items()}
    assert resources == {name: demo.mcp_url(name) for name in documents}


@pytest.mark.parametrize(
    "public_url",
    [
        "http://GW.Example.test",
        "HTTPS://gw.example.test",
        "https://gw.example.test:443",
        "http://gw.example.test:80",
        "https://gw.example.test/",
    ],
)
def test_non_canonical_public_url_rejected_at_startup(public_url: str) -> None:
    """A public URL that would make a non-canonical resource is refused (C11).

    The resource clients compare is ``public_url`` plus the backend path,
    byte for byte, so an upper-case scheme or host, a default port or a
    trailing slash would advertise a resource that no client derives.
    """
    text = demo_config_text().replace(
        "public_url: http://127.0.0.1:8000", f"public_url: {public_url}"
    )
    with pytest.raises(ConfigError) as raised:
        load_config_text(text, source="gateway.yaml")
    assert any("server.public_url" in problem for problem in raised.value.problems)
