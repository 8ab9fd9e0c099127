"""Redirect URIs with dot segments, which URL normalisation would rewrite."""

from __future__ import annotations

import pytest

from gateway.oauth.client_metadata import ClientMetadataError, ClientMetadataResolver
from gateway.oauth.redirects import redirect_uri_matches, redirect_uri_problem
from gateway.store import MemoryStore

DOT_SEGMENTS = [
    "https://app.example/cb/../x",
    "https://app.example/cb/./x",
    "https://app.example/cb/..",
    "https://app.example/./cb",
    "https://app.example/cb/%2e%2e/x",
    "https://app.example/cb/%2E%2e/x",
    "https://app.example/cb/.%2E/x",
    "https://app.example/cb/%2e/x",
    "http://127.0.0.1:5555/cb/../other",
]


@pytest.mark.parametrize("uri", DOT_SEGMENTS)
def test_redirect_uri_dot_segment_rejected(uri: str) -> None:
    """A path with a '.' or '..' segment, also percent-encoded, is not registered."""
    problem = redirect_uri_problem(uri)
    assert problem is not None
    assert "'.' or '..'" in problem


@pytest.mark.parametrize(
    "uri",
    [
        "https://app.example/cb.v2/x",
        "https://app.example/..cb",
        "https://app.example/cb...",
        "https://app.example/cb?next=../x",
        "http://127.0.0.1:5555/callback",
    ],
)
def test_redirect_uri_dots_inside_segment_accepted(uri: str) -> None:
    """Dots inside a segment, or in the query, are ordinary characters."""
    assert redirect_uri_problem(uri) is None


def test_redirect_uri_dot_segment_never_matches() -> None:
    """A requested loopback URI with dot segments matches no registered one."""
    registered = ["http://127.0.0.1/cb"]
    assert not redirect_uri_matches(registered, "http://127.0.0.1:5555/cb/../cb")


@pytest.mark.parametrize(
    "url", ["https://app.example/a/../client.json", "https://app.example/a/%2E%2E/c"]
)
def test_client_id_document_url_dot_segment_rejected(url: str) -> None:
    """A Client ID Metadata Document URL with dot segments is never fetched."""
    resolver = ClientMetadataResolver(MemoryStore())
    with pytest.raises(ClientMetadataError) as info:
        resolver._check_url(url)
    assert info.value.reason == "invalid_url"
