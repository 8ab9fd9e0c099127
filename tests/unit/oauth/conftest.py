"""Fixtures of the OAuth unit tests."""

from __future__ import annotations

import pathlib

import pytest

from gateway.oauth.keys import SigningKeys


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def keys(tmp_path: pathlib.Path) -> SigningKeys:
    """Fresh ES256 signing keys in a temporary key file."""
    return SigningKeys.load_or_create(tmp_path / "keys" / "signing.json")
